"""Model configuration: the DeepSeek-V3 hyper-parameters, named exactly as Hugging Face's
``DeepseekV3Config`` names them, plus the presets seekforge ships.

Because the field names are HF's, ``config.json`` of a seekforge model directory is a valid HF
config and an HF DeepSeek-V3/V2 ``config.json`` loads straight into :class:`ModelConfig`.
A few training-only fields (balance-loss weight, bias update speed, MTP loss weight) are also
stored in ``config.json``; ``transformers`` keeps unknown keys as attributes and ignores them.

Symbols used in comments (as in the DeepSeek-V3 report, arXiv:2412.19437): d = hidden_size,
H = num_attention_heads, d_c = kv_lora_rank, d_q = q_lora_rank, d_n/d_r/d_v = nope/rope/value
head dims, E = n_routed_experts, K = num_experts_per_tok, G = n_group.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seekforge.config import ConfigError, closest, deep_merge, from_dict, parse_overrides, read_json, to_dict


@dataclass
class ModelConfig:
    # --- sizes -----------------------------------------------------------------------------
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense SwiGLU width (layers < first_k_dense_replace)
    moe_intermediate_size: int = 2048  # width of each routed / shared expert
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int | None = None  # MLA: always equal to num_attention_heads
    # --- MLA -------------------------------------------------------------------------------
    q_lora_rank: int | None = 1536  # None -> a plain q_proj (V2-Lite)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # --- MoE -------------------------------------------------------------------------------
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    first_k_dense_replace: int = 3
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    scoring_func: str = "sigmoid"  # "sigmoid" (V3, aux-loss-free bias) or "softmax" (V2)
    topk_method: str = "noaux_tc"  # "noaux_tc" (V3), "group_limited_greedy" (V2), "greedy" (V2-Lite)
    # --- positions ---------------------------------------------------------------------------
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # legacy HF form, e.g. {"type": "yarn", "factor": 40, ...}
    rope_interleave: bool = True
    # --- misc --------------------------------------------------------------------------------
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.006  # DeepSeek-V3 report: N(0, 0.006^2) for every weight
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    # --- multi-token prediction --------------------------------------------------------------
    num_nextn_predict_layers: int = 1
    # --- DeepSeek Sparse Attention (V3.2; model_type deepseek_v32). index_topk None = dense V3 ---
    index_topk: int | None = None  # k: cached tokens each query attends to, chosen by the indexer
    index_n_heads: int = 64  # lightning-indexer heads H_I
    index_head_dim: int = 128  # their width d_I (the first d_r dims get RoPE)
    # --- training-only knobs (seekforge; stored in config.json, ignored by transformers) ------
    mtp_loss_weight: float = 0.3  # lambda in L = L_main + lambda/D * sum_k L_MTP^k
    aux_loss_alpha: float = 1e-4  # alpha of the sequence-wise balance loss (0 disables it)
    seq_aux: bool = True
    bias_update_speed: float = 1e-3  # gamma of the aux-loss-free bias update

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    # derived --------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_dsa(self) -> bool:
        """DeepSeek-V3.2: a lightning indexer picks ``index_topk`` tokens per query for MLA."""
        return self.index_topk is not None

    @property
    def hf_model_type(self) -> str:
        """``model_type`` of the HF config.json (not named ``model_type``: peft reads that attribute of
        a model's config to pick transformers-specific defaults, which do not apply here)."""
        if self.is_dsa:
            return "deepseek_v32"
        return "deepseek_v3" if self.scoring_func == "sigmoid" else "deepseek_v2"

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0 and self.first_k_dense_replace < self.num_hidden_layers

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace

    def validate(self) -> None:
        """Raise ConfigError naming the fields of an invalid combination."""
        positive = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.q_lora_rank is not None and self.q_lora_rank <= 0:
            raise ConfigError(f"q_lora_rank must be > 0 or null (got {self.q_lora_rank})")
        if self.num_key_value_heads not in (None, self.num_attention_heads):
            raise ConfigError("num_key_value_heads must equal num_attention_heads (MLA has no KV groups), "
                              f"got {self.num_key_value_heads} vs {self.num_attention_heads}")
        if self.qk_rope_head_dim % 2:
            raise ConfigError(f"qk_rope_head_dim must be even for RoPE pairs (got {self.qk_rope_head_dim})")
        if self.scoring_func not in ("sigmoid", "softmax"):
            raise ConfigError(f"scoring_func must be 'sigmoid' or 'softmax' (got {self.scoring_func!r})")
        if self.topk_method not in ("noaux_tc", "greedy", "group_limited_greedy"):
            raise ConfigError("topk_method must be one of 'noaux_tc', 'greedy', 'group_limited_greedy' "
                              f"(got {self.topk_method!r})")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ConfigError(f"first_k_dense_replace ({self.first_k_dense_replace}) must be between 0 and "
                              f"num_hidden_layers ({self.num_hidden_layers})")
        if self.num_nextn_predict_layers < 0:
            raise ConfigError("num_nextn_predict_layers must be >= 0")
        if self.n_routed_experts > 0:
            self._validate_moe()
        if self.is_dsa:
            self._validate_dsa()
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind not in ("yarn", "default", None):
                raise ConfigError(f"rope_scaling.type {kind!r} is not supported (use 'yarn' or null)")
            if kind == "yarn" and float(self.rope_scaling.get("factor", 1.0)) < 1.0:
                raise ConfigError("rope_scaling.factor must be >= 1 for YaRN")

    def _validate_moe(self) -> None:
        E, K, G, TG = self.n_routed_experts, self.num_experts_per_tok, self.n_group, self.topk_group
        if self.moe_intermediate_size <= 0:
            raise ConfigError(f"moe_intermediate_size must be > 0 (got {self.moe_intermediate_size})")
        if K < 1 or K > E:
            raise ConfigError(f"num_experts_per_tok ({K}) must be between 1 and n_routed_experts ({E})")
        if G < 1 or E % G:
            raise ConfigError(f"n_routed_experts ({E}) must be divisible by n_group ({G})")
        if not 1 <= TG <= G:
            raise ConfigError(f"topk_group ({TG}) must be between 1 and n_group ({G})")
        if K > TG * (E // G):
            raise ConfigError(f"num_experts_per_tok ({K}) exceeds the experts in the kept groups: "
                              f"topk_group ({TG}) x n_routed_experts/n_group ({E // G})")
        if self.scoring_func == "sigmoid" and G > 1 and E // G < 2:
            raise ConfigError(f"with n_group > 1 each group needs >= 2 experts (group score = top-2 sum): "
                              f"n_routed_experts ({E}) / n_group ({G}) < 2")

    def _validate_dsa(self) -> None:
        if not 1 <= self.index_topk <= self.max_position_embeddings:
            raise ConfigError(f"index_topk must be between 1 and max_position_embeddings "
                              f"({self.max_position_embeddings}), got {self.index_topk}")
        for name in ("index_n_heads", "index_head_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.index_head_dim < self.qk_rope_head_dim:
            raise ConfigError(f"index_head_dim ({self.index_head_dim}) must be >= qk_rope_head_dim "
                              f"({self.qk_rope_head_dim}): the indexer ropes its first d_r dims")
        if self.q_lora_rank is None:
            raise ConfigError("q_lora_rank must be set for DeepSeek Sparse Attention (index_topk): "
                              "the indexer's queries read the query latent")
        if self.scoring_func != "sigmoid":
            raise ConfigError("index_topk (DeepSeek-V3.2) needs scoring_func 'sigmoid' (the V3 router)")

    # HF interop ---------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` content (legacy rope_theta/rope_scaling form: transformers 4/5, llama.cpp)."""
        d = to_dict(self)
        d["num_key_value_heads"] = self.num_attention_heads
        if not self.is_dsa:  # a V3/V2 config.json carries no indexer keys
            for key in _DSA_KEYS:
                d.pop(key)
        arch = {"deepseek_v32": "DeepseekV32ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
                "deepseek_v2": "DeepseekV2ForCausalLM"}[self.hf_model_type]
        return {"architectures": [arch], "model_type": self.hf_model_type, **d}

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Read an HF ``config.json`` dict (DeepSeek-V3 or V2), ignoring HF-only bookkeeping keys."""
        if d.get("model_type") == "deepseek_v4":
            raise ConfigError("model_type: 'deepseek_v4' is a DeepSeek-V4 config, not V3/V2 (its attention, "
                              "residual and router fields differ); load it with seekforge.model.load_model, "
                              "which builds the V4 model")
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        _check_model_type(d)
        # transformers 5 may write rope_parameters instead of the legacy pair.
        rp = d.pop("rope_parameters", None)
        if isinstance(rp, dict):
            d.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
            if rp.get("rope_type", "default") != "default" and "rope_scaling" not in d:
                d["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        # MLA has no KV groups and transformers never uses this field for DeepSeek; HF's default (128)
        # is often left in custom configs (DeepseekV3Config(num_attention_heads=4) keeps 128).
        d.pop("num_key_value_heads", None)
        if "num_mtp_layers" in d and "num_nextn_predict_layers" not in d:
            d["num_nextn_predict_layers"] = d["num_mtp_layers"]
        if d.get("model_type") == "deepseek_v2":
            d.setdefault("scoring_func", "softmax")
            d.setdefault("topk_method", "greedy")
            d.setdefault("num_nextn_predict_layers", 0)
            d.setdefault("n_group", d.get("n_group") or 1)
            d.setdefault("topk_group", d.get("topk_group") or 1)
        for key in ("n_group", "topk_group"):  # V2 configs may carry null here
            if key in d and d[key] is None:
                d[key] = 1
        kept = {k: v for k, v in d.items() if k in names}
        if kept.get("rope_scaling") is not None and "type" not in kept["rope_scaling"]:
            kept["rope_scaling"] = {"type": kept["rope_scaling"].get("rope_type", "default"),
                                    **kept["rope_scaling"]}
        return from_dict(cls, kept)

    def save(self, directory: str | Path) -> None:
        from seekforge.utils import atomic_write_text

        atomic_write_text(Path(directory) / "config.json", json.dumps(self.to_hf_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ModelConfig:
        path = Path(directory) / "config.json"
        if not path.exists():
            raise ConfigError(f"{directory} is not a model directory: {path} is missing")
        data = read_json(path)
        try:
            return cls.from_hf_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


_DSA_KEYS = ("index_topk", "index_n_heads", "index_head_dim")


def _check_model_type(d: dict[str, Any]) -> None:
    """A V3.2 config must say so, and a V3/V2 one must not carry indexer keys: loading one as the
    other would silently drop (or invent) the indexer."""
    model_type = d.get("model_type")
    if model_type == "deepseek_v32":
        if d.get("index_topk") is None:
            raise ConfigError("model_type 'deepseek_v32' (DeepSeek-V3.2) needs index_topk, "
                              "the number of tokens the indexer keeps per query")
    elif model_type is not None:
        present = [k for k in _DSA_KEYS if d.get(k) is not None]
        if present:
            raise ConfigError(f"{', '.join(present)} given but model_type is {model_type!r}: DeepSeek "
                              "Sparse Attention configs need model_type 'deepseek_v32'")


# --------------------------------------------------------------------------------------------
# Presets. `tiny` is for tests, `small-moe` for the CPU demo; `v2-lite` and `v3` are the released
# shapes (build those on the meta device unless you have the memory).
# --------------------------------------------------------------------------------------------

_YARN_V3 = {"type": "yarn", "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=1.0,
        max_position_embeddings=512, num_nextn_predict_layers=1,
    ),
    "small-moe": dict(
        vocab_size=8192, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
        num_hidden_layers=6, num_attention_heads=8, q_lora_rank=128, kv_lora_rank=64,
        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=1.0,
        max_position_embeddings=1024, num_nextn_predict_layers=1,
    ),
    "100m-moe": dict(
        vocab_size=32000, hidden_size=512, intermediate_size=2048, moe_intermediate_size=192,
        num_hidden_layers=12, num_attention_heads=8, q_lora_rank=256, kv_lora_rank=128,
        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=16, n_shared_experts=2,
        num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=1.5,
        max_position_embeddings=2048, num_nextn_predict_layers=1,
    ),
    "1b-moe": dict(
        vocab_size=64000, hidden_size=1280, intermediate_size=4096, moe_intermediate_size=512,
        num_hidden_layers=16, num_attention_heads=16, q_lora_rank=512, kv_lora_rank=256,
        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=32, n_shared_experts=2,
        num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.0,
        max_position_embeddings=4096, num_nextn_predict_layers=1,
    ),
    "v2-lite": dict(
        vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64, n_shared_experts=2,
        num_experts_per_tok=6, n_group=1, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=1.0,
        norm_topk_prob=False, scoring_func="softmax", topk_method="greedy", max_position_embeddings=163840,
        rope_scaling={**_YARN_V3, "mscale": 0.707, "mscale_all_dim": 0.707}, num_nextn_predict_layers=0,
        bos_token_id=100000, eos_token_id=100001, aux_loss_alpha=1e-3,
    ),
    "v3": dict(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1,
        num_experts_per_tok=8, n_group=8, topk_group=4, first_k_dense_replace=3, routed_scaling_factor=2.5,
        max_position_embeddings=163840, rope_scaling=dict(_YARN_V3), num_nextn_predict_layers=1,
    ),
}
# DeepSeek-V3.2 (arXiv:2512.02556): V3 plus a lightning indexer in every layer (64 heads of 128,
# top-2048 tokens per query). The CPU variants keep tiny / small-moe widths with a small k, so short
# sequences already exercise the sparse path.
PRESETS["v3.2"] = {**PRESETS["v3"], "index_topk": 2048, "index_n_heads": 64, "index_head_dim": 128}
# 16 / 8 indexer heads: with fewer, I = 0 exactly (every head's ReLU at 0) is frequent at random init.
PRESETS["tiny-dsa"] = {**PRESETS["tiny"], "index_topk": 16, "index_n_heads": 16, "index_head_dim": 16}
PRESETS["small-moe-dsa"] = {**PRESETS["small-moe"], "index_topk": 64, "index_n_heads": 8,
                            "index_head_dim": 32}

# Presets too large to materialise casually: build them on the meta device.
LARGE_PRESETS = {"v2-lite", "v3", "v3.2"}


def preset_config(name: str, overrides: dict[str, Any] | list[str] | None = None) -> ModelConfig:
    """A preset as a validated :class:`ModelConfig`, with optional overrides (dict or ``k=v`` list)."""
    if name not in PRESETS:
        near = closest(name, PRESETS)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Available presets: {', '.join(PRESETS)}")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    return from_dict(ModelConfig, deep_merge(PRESETS[name], overrides or {}))


def model_config_from(spec: str | Path | dict[str, Any] | ModelConfig, overrides: Any = None) -> ModelConfig:
    """Resolve a preset name, a model directory, a dict of fields or a ModelConfig."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    overrides = overrides or {}
    if isinstance(spec, ModelConfig):
        return from_dict(ModelConfig, deep_merge(to_dict(spec), overrides))
    if isinstance(spec, dict):
        base = PRESETS.get(spec.get("preset", ""), {}) if "preset" in spec else {}
        fields_ = {k: v for k, v in spec.items() if k != "preset"}
        return from_dict(ModelConfig, deep_merge(deep_merge(base, fields_), overrides))
    spec_str = str(spec)
    if spec_str in PRESETS:
        return preset_config(spec_str, overrides)
    if Path(spec_str).is_dir():
        cfg = ModelConfig.load(spec_str)
        return from_dict(ModelConfig, deep_merge(to_dict(cfg), overrides)) if overrides else cfg
    near = closest(spec_str, PRESETS)
    hint = f" Did you mean preset {near[0]!r}?" if near else ""
    raise ConfigError(f"{spec_str!r} is neither a preset nor a model directory.{hint} "
                      f"Presets: {', '.join(PRESETS)}")


__all__ = ["ModelConfig", "PRESETS", "LARGE_PRESETS", "preset_config", "model_config_from"]
