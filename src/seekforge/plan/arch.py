"""Turn whatever model the user names into the generic :class:`~seekforge.model.accounting.Arch`.

Sources: a seekforge preset, a seekforge YAML (a model config, or a training config with a
``model:`` key), or any local Hugging Face model directory's ``config.json``:

* ``deepseek_v3`` / ``deepseek_v2``: read by :class:`ModelConfig` (MLA + DeepSeekMoE + MTP);
* ``llama`` / ``mistral`` / ``qwen2`` / ``qwen3``: dense SwiGLU with GQA (Qwen2 has q/k/v biases,
  Qwen3 per-head q/k RMSNorms and an explicit ``head_dim``);
* ``mixtral`` / ``qwen2_moe`` / ``qwen3_moe``: GQA + MoE (Qwen2-MoE adds a gated shared expert,
  and both Qwen MoEs may keep some layers dense via ``mlp_only_layers``/``decoder_sparse_step``);
* ``deepseek_v4``: read by :class:`V4Config` (sliding window + CSA / HCA attention, mHC, MoE).

Only the shapes matter here; nothing is downloaded or instantiated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seekforge.config import ConfigError, closest, parse_overrides, read_json, read_yaml
from seekforge.model.accounting import (
    Arch,
    Attention,
    FeedForward,
    Layer,
    arch_from_model_config,
    arch_from_v4_config,
)
from seekforge.model.config import PRESETS, ModelConfig, model_config_from, preset_config
from seekforge.model.v4_config import V4_PRESETS, V4Config, v4_preset

DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")
DEEPSEEK_TYPES = ("deepseek_v3", "deepseek_v2", "deepseek_v32")
SUPPORTED = DEEPSEEK_TYPES + ("deepseek_v4",) + DENSE_TYPES + MOE_TYPES


def _need(cfg: dict[str, Any], key: str, where: str) -> Any:
    if cfg.get(key) is None:
        raise ConfigError(f"{where}: missing {key!r}, which a {cfg.get('model_type')} config must have")
    return cfg[key]


def arch_from_hf_dict(cfg: dict[str, Any], where: str = "config.json") -> Arch:
    """An :class:`Arch` from an HF ``config.json`` dict of one of the :data:`SUPPORTED` families."""
    cfg = dict(cfg.get("text_config") or cfg)  # multimodal wrappers keep the LM under text_config
    kind = cfg.get("model_type")
    if kind in DEEPSEEK_TYPES or kind == "deepseek_v4":
        try:
            if kind == "deepseek_v4":
                return arch_from_v4_config(V4Config.from_hf_dict(cfg), name=kind)
            return arch_from_model_config(ModelConfig.from_hf_dict(cfg), name=kind)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    if kind not in DENSE_TYPES + MOE_TYPES:
        near = closest(str(kind), SUPPORTED)
        hint = f" (closest: {near[0]!r})" if near else ""
        raise ConfigError(f"{where}: model_type {kind!r} is not supported by seekforge plan{hint}. "
                          f"Supported: {', '.join(SUPPORTED)}")
    d = int(_need(cfg, "hidden_size", where))
    H = int(_need(cfg, "num_attention_heads", where))
    head_dim = int(cfg.get("head_dim") or d // H)
    attn = Attention(
        kind="gqa", num_heads=H, qk_head_dim=head_dim, v_head_dim=head_dim,
        num_kv_heads=int(cfg.get("num_key_value_heads") or H),
        qkv_bias=bool(cfg.get("attention_bias", kind in ("qwen2", "qwen2_moe"))),
        qk_norm=kind in ("qwen3", "qwen3_moe"),
    )
    L = int(_need(cfg, "num_hidden_layers", where))
    dense = FeedForward(intermediate_size=int(_need(cfg, "intermediate_size", where)))
    layers = []
    for i in range(L):
        ffn = dense
        if kind == "mixtral":
            ffn = FeedForward(num_experts=int(_need(cfg, "num_local_experts", where)),
                              experts_per_token=int(_need(cfg, "num_experts_per_tok", where)),
                              expert_intermediate_size=dense.intermediate_size)
        elif kind in ("qwen2_moe", "qwen3_moe"):
            step = int(cfg.get("decoder_sparse_step") or 1)
            sparse = i not in (cfg.get("mlp_only_layers") or []) and cfg.get("num_experts", 0) > 0 \
                and (i + 1) % step == 0
            if sparse:
                shared = int(cfg.get("shared_expert_intermediate_size") or 0)
                ffn = FeedForward(num_experts=int(cfg["num_experts"]),
                                  experts_per_token=int(_need(cfg, "num_experts_per_tok", where)),
                                  expert_intermediate_size=int(_need(cfg, "moe_intermediate_size", where)),
                                  shared_intermediate_size=shared, shared_expert_gate=shared > 0)
        layers.append(Layer(attn, ffn))
    return Arch(name=kind, vocab_size=int(_need(cfg, "vocab_size", where)), hidden_size=d,
                layers=tuple(layers), tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))


def arch_from_model_dir(directory: str | Path) -> Arch:
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise ConfigError(f"--model {directory}: not a directory (expected an HF model dir with config.json)")
    if not path.exists():
        raise ConfigError(f"--model {directory}: {path.name} is missing (expected an HF model directory)")
    return arch_from_hf_dict(read_json(path), where=str(path))


def arch_from_yaml(path: str | Path, overrides: list[str] | None = None) -> tuple[Arch, dict[str, Any]]:
    """A seekforge YAML: a training config (``model:`` key) or a model config (ModelConfig fields).

    Returns the architecture and the training keys the planner can use as defaults
    (``seq_len``, ``batch_tokens``, ``micro_batch_size``, ``max_steps``).
    """
    data = read_yaml(path)
    train: dict[str, Any] = {}
    if "model" in data:
        spec = data["model"]
        keys = ("seq_len", "batch_tokens", "micro_batch_size", "max_steps")
        train = {k: data[k] for k in keys if k in data}
        if isinstance(spec, str) and spec in V4_PRESETS:
            return v4_preset_arch(spec, overrides), train
        if isinstance(spec, str) and spec not in PRESETS and Path(spec).is_dir() and not \
                _is_deepseek_dir(spec):
            return arch_from_model_dir(spec), train
    else:
        spec = data
    if isinstance(spec, dict) and spec.get("model_type") == "deepseek_v4":
        try:
            return arch_from_v4_config(V4Config(**{**spec, **parse_overrides(overrides or [])})), train
        except TypeError as e:
            raise ConfigError(f"--config {path}: {e}") from None
    try:
        cfg = model_config_from(spec, overrides or None)
    except ConfigError as e:
        raise ConfigError(f"--config {path}: {e}") from None
    return arch_from_model_config(cfg), train


def v4_preset_arch(name: str, overrides: list[str] | None = None) -> Arch:
    """A DeepSeek-V4 preset (``tiny-v4`` ... ``v4-pro``) with ``key=value`` overrides."""
    fields = parse_overrides(overrides or [])
    try:
        return arch_from_v4_config(v4_preset(name, **fields), name=name)
    except TypeError as e:  # an unknown field: V4Config names them all
        import dataclasses

        valid = ", ".join(f.name for f in dataclasses.fields(V4Config))
        raise ConfigError(f"--set: {e}; valid DeepSeek-V4 keys: {valid}") from None


def _is_deepseek_dir(directory: str) -> bool:
    try:
        data = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("model_type") in DEEPSEEK_TYPES


def resolve_arch(preset: str | None = None, config: str | None = None, model_dir: str | None = None,
                 overrides: list[str] | None = None) -> tuple[Arch, dict[str, Any]]:
    """Exactly one of preset / config / model_dir -> (Arch, training defaults from a training YAML)."""
    given = [n for n, v in (("--preset", preset), ("--config", config), ("--model", model_dir)) if v]
    if len(given) != 1:
        raise ConfigError("name the model with exactly one of --preset NAME, --config FILE.yaml or "
                          "--model DIR" + (f" (got {', '.join(given)})" if given else ""))
    if preset in V4_PRESETS:
        return v4_preset_arch(preset, overrides), {}
    if preset and preset not in PRESETS:
        valid = [*PRESETS, *V4_PRESETS]
        near = closest(preset, valid)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown preset {preset!r}.{hint} Available presets: {', '.join(valid)}")
    if preset:
        return arch_from_model_config(preset_config(preset, overrides or None), name=preset), {}
    if config:
        return arch_from_yaml(config, overrides)
    if overrides:
        raise ConfigError("--set model overrides apply to --preset/--config, not to --model DIR")
    return arch_from_model_dir(model_dir), {}


# ------------------------------------------------------------------------------------------------
# Shapes for LoRA / QLoRA
# ------------------------------------------------------------------------------------------------
def lora_linear_shapes(arch: Arch) -> list[tuple[int, int]]:
    """(in, out) of every linear LoRA adapts: attention projections, dense MLPs and shared experts.

    Routers, routed experts (fused 3-D tensors in seekforge and transformers 5) and the LM head are left out,
    which is what ``target_modules="all-linear"`` reaches on these models.
    """
    d = arch.hidden_size
    shapes: list[tuple[int, int]] = []
    for layer in arch.layers:
        a = layer.attention
        H = a.num_heads
        if a.kind == "v4":
            # q_a, q_b, the key = value projection, o_b, and the compressor's kv and gate projections
            # (two series in CSA); the grouped o_a and the lightning indexer are never adapted
            shapes += [(d, a.q_lora_rank or 0), (a.q_lora_rank or 0, H * a.qk_head_dim), (d, a.qk_head_dim),
                       (a.o_groups * a.o_lora_rank, d)]
            if a.compress_rate:
                series = 2 if a.index_topk else 1
                shapes += [(d, series * a.qk_head_dim)] * 2
        elif a.kind == "mla":
            if a.q_lora_rank:
                shapes += [(d, a.q_lora_rank), (a.q_lora_rank, H * a.qk_head_dim)]
            else:
                shapes.append((d, H * a.qk_head_dim))
            d_n = a.qk_head_dim - a.rope_head_dim
            shapes += [(d, a.kv_lora_rank + a.rope_head_dim), (a.kv_lora_rank, H * (d_n + a.v_head_dim))]
        else:
            kv = a.num_kv_heads or H
            shapes += [(d, H * a.qk_head_dim), (d, kv * a.qk_head_dim), (d, kv * a.v_head_dim)]
        if a.kind != "v4":
            shapes.append((H * a.v_head_dim, d))
        f = layer.ffn
        width = f.shared_intermediate_size if f.is_moe else f.intermediate_size
        if width:
            shapes += [(d, width), (d, width), (width, d)]
    return shapes


def lora_params(arch: Arch, rank: int) -> int:
    """Adapter parameters: r·(in + out) per adapted linear (A is [r, in], B is [out, r])."""
    return sum(rank * (i + o) for i, o in lora_linear_shapes(arch))
