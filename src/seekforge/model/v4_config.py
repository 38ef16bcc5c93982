"""DeepSeek-V4 hyper-parameters, named as Hugging Face's ``DeepseekV4Config`` names them, and presets.

V4 shares little of V3's configuration: attention is a single shared key/value head per layer
(no MLA latent), each layer has an attention *type* (sliding window only, compressed sparse, or
heavily compressed), the residual stream is widened into ``hc_mult`` parallel streams (mHC), and
every feed-forward layer is a MoE whose first layers route by a frozen token -> expert table.
So it gets its own dataclass instead of thirty optional fields on :class:`ModelConfig`.

Symbols in comments: d hidden_size, H heads, c head_dim, n hc_mult, m / m' the CSA / HCA compression
rates, n_win the sliding window, g o_groups, E routed experts, K experts per token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from seekforge.config import ConfigError, closest

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
LAYER_TYPES = (SLIDING, CSA, HCA)
MLP_LAYER_TYPES = ("hash_moe", "moe")
# The full-sequence forward runs queries in blocks of max(this, sliding_window) (memory, not maths).
V4_QUERY_BLOCK = 256
# Legacy checkpoints name each layer by its compression ratio instead of its type.
_RATIO_TO_TYPE = {0: SLIDING, 4: CSA, 128: HCA}


@dataclass
class V4Config:
    # --- sizes -------------------------------------------------------------------------------
    vocab_size: int = 129280
    hidden_size: int = 4096
    moe_intermediate_size: int = 2048  # each routed expert and the one shared expert
    num_hidden_layers: int = 43
    num_attention_heads: int = 64
    head_dim: int = 512  # one shared key = value head of this width
    qk_rope_head_dim: int = 64  # the trailing slice of each head that gets RoPE
    q_lora_rank: int = 1024
    o_groups: int = 8  # grouped output projection: g groups of heads ...
    o_lora_rank: int = 1024  # ... each projected to this width before the final mix
    # --- attention schedule ----------------------------------------------------------------
    layer_types: list[str] = field(default_factory=list)  # empty -> 2 x HCA, then CSA / HCA alternating
    sliding_window: int = 128
    compress_rates: dict[str, int] = field(default_factory=lambda: {CSA: 4, HCA: 128})
    index_n_heads: int = 64  # lightning indexer of the CSA layers
    index_head_dim: int = 128
    index_topk: int = 512
    # --- manifold-constrained hyper-connections ------------------------------------------------
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    # --- MoE -----------------------------------------------------------------------------------
    mlp_layer_types: list[str] = field(default_factory=list)  # empty -> 3 x hash_moe, then moe
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 6
    scoring_func: str = "sqrtsoftplus"
    routed_scaling_factor: float = 1.5
    swiglu_limit: float = 10.0
    # --- positions -----------------------------------------------------------------------------
    max_position_embeddings: int = 1048576
    rope_theta: float = 10000.0  # sliding-window layers
    compress_rope_theta: float = 160000.0  # CSA / HCA layers and their compressors
    rope_scaling: dict[str, Any] | None = None  # YaRN for the compressed layers only, HF's legacy form
    # --- misc ----------------------------------------------------------------------------------
    num_nextn_predict_layers: int = 1  # kept for the record: transformers 5 builds no MTP module for V4
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    # --- training only (ignored by transformers) -----------------------------------------------
    bias_update_speed: float = 0.001  # aux-loss-free balancing of the learned-router layers
    model_type: str = "deepseek_v4"

    def __post_init__(self) -> None:
        n = self.num_hidden_layers
        if not self.layer_types:
            self.layer_types = [HCA] * min(n, 2) + [CSA if i % 2 else HCA for i in range(max(n - 2, 0))]
        if not self.mlp_layer_types:
            self.mlp_layer_types = ["hash_moe"] * min(n, 3) + ["moe"] * max(n - 3, 0)
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"model config (deepseek_v4): {key}: {msg}")

        if self.model_type != "deepseek_v4":
            raise bad("model_type", f"expected 'deepseek_v4', got {self.model_type!r}")
        for key, types, allowed in (("layer_types", self.layer_types, LAYER_TYPES),
                                    ("mlp_layer_types", self.mlp_layer_types, MLP_LAYER_TYPES)):
            if len(types) != self.num_hidden_layers:
                raise bad(key, f"has {len(types)} entries, num_hidden_layers is {self.num_hidden_layers}")
            for i, t in enumerate(types):
                if t not in allowed:
                    hint = closest(str(t), allowed, n=1)
                    raise bad(f"{key}[{i}]", f"unknown type {t!r}; valid: {', '.join(allowed)}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        for kind in (CSA, HCA):
            rate = self.compress_rates.get(kind)
            if not isinstance(rate, int) or rate < 1:
                raise bad(f"compress_rates.{kind}", f"must be a positive integer, got {rate!r}")
            if self.sliding_window % rate and kind in self.layer_types:
                raise bad(f"compress_rates.{kind}", f"{rate} does not divide sliding_window "
                          f"{self.sliding_window}: compressed blocks must tile the window")
        if self.hc_mult < 1:
            raise bad("hc_mult", f"the number of residual streams must be >= 1, got {self.hc_mult}")
        if self.hc_sinkhorn_iters < 1:
            raise bad("hc_sinkhorn_iters", f"must be >= 1, got {self.hc_sinkhorn_iters}")
        if self.num_attention_heads * self.head_dim % self.o_groups:
            raise bad("o_groups", f"{self.o_groups} does not divide num_attention_heads * head_dim "
                      f"= {self.num_attention_heads * self.head_dim}")
        if not 0 < self.qk_rope_head_dim <= self.head_dim or self.qk_rope_head_dim % 2:
            raise bad("qk_rope_head_dim", f"must be even and in 1..head_dim ({self.head_dim}), "
                      f"got {self.qk_rope_head_dim}")
        if self.index_topk < 1:
            raise bad("index_topk", f"must be >= 1, got {self.index_topk}")
        if self.scoring_func not in ("sqrtsoftplus", "softmax", "sigmoid"):
            raise bad("scoring_func", f"valid: sqrtsoftplus, softmax, sigmoid; got {self.scoring_func!r}")
        if self.n_shared_experts != 1:
            raise bad("n_shared_experts", f"DeepSeek-V4 has exactly one shared expert, "
                      f"got {self.n_shared_experts}")
        if not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
            raise bad("num_experts_per_tok", f"must be in 1..n_routed_experts ({self.n_routed_experts})")

    # --- HF config.json ---------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("qk_rope_head_dim")
        d["partial_rotary_factor"] = self.qk_rope_head_dim / self.head_dim
        compress = {"rope_type": "default", **(self.rope_scaling or {})}
        compress.update(rope_theta=self.compress_rope_theta, partial_rotary_factor=d["partial_rotary_factor"])
        if compress.get("rope_type", compress.get("type")) == "yarn":
            compress["rope_type"] = "yarn"
            compress.setdefault("attention_factor", 1.0)  # V4 does not scale cos/sin by YaRN's mscale
        d["rope_parameters"] = {
            "main": {"rope_type": "default", "rope_theta": self.rope_theta,
                     "partial_rotary_factor": d["partial_rotary_factor"]},
            "compress": compress,
        }
        d.pop("rope_scaling")
        d.update(architectures=["DeepseekV4ForCausalLM"], num_key_value_heads=1, hidden_act="silu",
                 tie_word_embeddings=False, norm_topk_prob=True)
        return d

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> V4Config:
        """Our config.json or one written by transformers (also the legacy per-layer
        ``compress_ratios`` / ``num_hash_layers`` / ``compress_rate_*`` forms)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in raw.items() if k in names}
        head_dim = raw.get("head_dim", cls.head_dim)
        if "partial_rotary_factor" in raw and raw["partial_rotary_factor"] is not None:
            kw["qk_rope_head_dim"] = round(raw["partial_rotary_factor"] * head_dim)
        rp = raw.get("rope_parameters") or {}
        if isinstance(rp.get("main"), dict):
            kw["rope_theta"] = rp["main"].get("rope_theta", kw.get("rope_theta", cls.rope_theta))
        if isinstance(rp.get("compress"), dict):
            comp = rp["compress"]
            kw["compress_rope_theta"] = comp.get("rope_theta", kw.get("compress_rope_theta"))
            if comp.get("rope_type", "default") != "default":
                kw["rope_scaling"] = {k: v for k, v in comp.items()
                                      if k not in ("rope_theta", "partial_rotary_factor")}
        if not kw.get("layer_types") and raw.get("compress_ratios"):
            try:
                kw["layer_types"] = [_RATIO_TO_TYPE[r] for r in raw["compress_ratios"]]
            except KeyError as e:
                raise ConfigError(f"model config (deepseek_v4): compress_ratios: unknown ratio {e.args[0]}; "
                                  f"valid: {sorted(_RATIO_TO_TYPE)}") from None
        rates = dict(kw.get("compress_rates") or {CSA: 4, HCA: 128})
        for legacy, kind in (("compress_rate_csa", CSA), ("compress_rate_hca", HCA)):
            if raw.get(legacy) is not None:
                rates[kind] = raw[legacy]
        kw["compress_rates"] = rates
        n = kw.get("num_hidden_layers", cls.num_hidden_layers)
        if not kw.get("mlp_layer_types") and raw.get("num_hash_layers") is not None:
            h = raw["num_hash_layers"]
            kw["mlp_layer_types"] = ["hash_moe"] * min(n, h) + ["moe"] * max(n - h, 0)
        if isinstance(kw.get("eos_token_id"), list):
            kw["eos_token_id"] = kw["eos_token_id"][0]
        return cls(**kw)

    # --- derived sizes -------------------------------------------------------------------------
    def compress_rate(self, layer_type: str) -> int:
        return self.compress_rates[layer_type]


V4_PRESETS: dict[str, dict[str, Any]] = {
    # transformers 5's DeepseekV4Config defaults, documented there as DeepSeek-V4-Flash-Base.
    "v4-flash": {},
    # DeepSeek-V4-Pro as published with its weights (config.json, model card): d 7168, 61 layers
    # (2 x HCA, then CSA / HCA alternating; 3 hash-routed MoE layers), 128 heads of 512 with q rank
    # 1536, 16 output groups of rank 1024, 384 routed experts of 3072 (top-6), routed scale 2.5,
    # CSA top-1024. The indexer's head count is not among the published figures; Flash's 64 x 128
    # is kept, which gives 1.57T total / 49.76B active, matching the announced 1.6T / 49B.
    "v4-pro": dict(hidden_size=7168, moe_intermediate_size=3072, num_hidden_layers=61,
                   num_attention_heads=128, q_lora_rank=1536, o_groups=16, o_lora_rank=1024,
                   index_topk=1024, n_routed_experts=384, routed_scaling_factor=2.5),
    # Every layer type, hash and learned-router MoE layers and mHC, at CPU size. The window (16) and
    # the compression rates (4 and 16) are small so short test sequences cross all of them.
    "tiny-v4": dict(vocab_size=512, hidden_size=64, moe_intermediate_size=64, num_hidden_layers=4,
                    num_attention_heads=4, head_dim=32, qk_rope_head_dim=8, q_lora_rank=32, o_groups=2,
                    o_lora_rank=16, layer_types=[SLIDING, CSA, HCA, CSA], sliding_window=16,
                    compress_rates={CSA: 4, HCA: 16}, index_n_heads=8, index_head_dim=16, index_topk=4,
                    hc_mult=2, hc_sinkhorn_iters=5, mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
                    n_routed_experts=8, num_experts_per_tok=2, max_position_embeddings=4096),
    # The widths of V3's small-moe (d 256, 6 layers, 16 experts of 128, top-2) for comparisons.
    "small-v4": dict(vocab_size=8192, hidden_size=256, moe_intermediate_size=128, num_hidden_layers=6,
                     num_attention_heads=8, head_dim=64, qk_rope_head_dim=16, q_lora_rank=128, o_groups=2,
                     o_lora_rank=128, layer_types=[SLIDING, HCA, CSA, HCA, CSA, HCA], sliding_window=64,
                     compress_rates={CSA: 4, HCA: 64}, index_n_heads=4, index_head_dim=32, index_topk=64,
                     hc_mult=4, hc_sinkhorn_iters=10, mlp_layer_types=["hash_moe"] + ["moe"] * 5,
                     n_routed_experts=16, num_experts_per_tok=2, max_position_embeddings=65536),
}
V4_LARGE_PRESETS = {"v4-flash", "v4-pro"}


def v4_preset(name: str, **overrides: Any) -> V4Config:
    if name not in V4_PRESETS:
        raise ConfigError(f"unknown V4 preset {name!r}; valid: {', '.join(V4_PRESETS)}")
    return V4Config(**{**V4_PRESETS[name], **overrides})
