"""The adapter between seekforge's DeepSeek-V4 module and Hugging Face model directories.

On disk we write what transformers 5's ``save_pretrained`` writes for ``DeepseekV4ForCausalLM``:
DeepSeek's release names inside each layer (``attn.wq_a``, ``attn.compressor.wkv``, ``attn.indexer.wq_b``,
``ffn.experts.{j}.w1/w2/w3``, ``hc_attn_fn`` ...) under ``model.layers.{i}.``, with ``head.weight``
for the LM head. transformers renames these to its module names when it loads them; reading here
accepts both spellings (and the fused ``experts.gate_up_proj / down_proj`` tensors).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from seekforge.config import ConfigError
from seekforge.model.v4_config import V4Config
from seekforge.utils import atomic_dir

# Module name inside a layer -> release name (the order matters: longer, more specific first).
_LAYER_NAMES = [
    ("self_attn.compressor.indexer.scorer.weights_proj.weight", "attn.indexer.weights_proj.weight"),
    ("self_attn.compressor.indexer.q_b_proj.weight", "attn.indexer.wq_b.weight"),
    ("self_attn.compressor.indexer.kv_proj.weight", "attn.indexer.compressor.wkv.weight"),
    ("self_attn.compressor.indexer.gate_proj.weight", "attn.indexer.compressor.wgate.weight"),
    ("self_attn.compressor.indexer.position_bias", "attn.indexer.compressor.ape"),
    ("self_attn.compressor.indexer.kv_norm.weight", "attn.indexer.compressor.norm.weight"),
    ("self_attn.compressor.kv_proj.weight", "attn.compressor.wkv.weight"),
    ("self_attn.compressor.gate_proj.weight", "attn.compressor.wgate.weight"),
    ("self_attn.compressor.position_bias", "attn.compressor.ape"),
    ("self_attn.compressor.kv_norm.weight", "attn.compressor.norm.weight"),
    ("self_attn.q_a_proj.weight", "attn.wq_a.weight"),
    ("self_attn.q_b_proj.weight", "attn.wq_b.weight"),
    ("self_attn.q_a_norm.weight", "attn.q_norm.weight"),
    ("self_attn.kv_proj.weight", "attn.wkv.weight"),
    ("self_attn.kv_norm.weight", "attn.norm.weight"),
    ("self_attn.o_a_proj.weight", "attn.wo_a.weight"),
    ("self_attn.o_b_proj.weight", "attn.wo_b.weight"),
    ("self_attn.sinks", "attn.attn_sink"),
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("attn_hc.fn", "hc_attn_fn"), ("attn_hc.base", "hc_attn_base"), ("attn_hc.scale", "hc_attn_scale"),
    ("ffn_hc.fn", "hc_ffn_fn"), ("ffn_hc.base", "hc_ffn_base"), ("ffn_hc.scale", "hc_ffn_scale"),
    ("mlp.gate.weight", "ffn.gate.weight"),
    ("mlp.gate.e_score_correction_bias", "ffn.gate.bias"),
    ("mlp.gate.tid2eid", "ffn.gate.tid2eid"),
    ("mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight"),
    ("mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight"),
    ("mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight"),
]
_TO_DISK = dict(_LAYER_NAMES)
_FROM_DISK = {disk: ours for ours, disk in _LAYER_NAMES}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_DISK_EXPERT = re.compile(r"^ffn\.experts\.(\d+)\.(w1|w2|w3)\.weight$")


def to_disk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module state dict -> release-named tensors (experts split per expert)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if name == "lm_head.weight":
            out["head.weight"] = t
            continue
        m = _LAYER.match(name)
        if not m:
            out[name] = t
            continue
        prefix, rest = f"model.layers.{m.group(1)}.", m.group(2)
        if rest == "mlp.experts.gate_up_proj":
            gate, up = t.chunk(2, dim=1)  # [E, I, d] each: w1 is the gate, w3 the up projection
            for j in range(t.shape[0]):
                out[f"{prefix}ffn.experts.{j}.w1.weight"] = gate[j].contiguous()
                out[f"{prefix}ffn.experts.{j}.w3.weight"] = up[j].contiguous()
        elif rest == "mlp.experts.down_proj":
            for j in range(t.shape[0]):
                out[f"{prefix}ffn.experts.{j}.w2.weight"] = t[j].contiguous()
        else:
            out[prefix + _TO_DISK.get(rest, rest)] = t
    return out


def from_disk(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Release-named (ours or transformers') or module-named tensors -> module state dict."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, t in tensors.items():
        if name == "head.weight":
            out["lm_head.weight"] = t
            continue
        m = _LAYER.match(name)
        if not m:
            out[name] = t
            continue
        prefix, rest = f"model.layers.{m.group(1)}.", m.group(2)
        e = _DISK_EXPERT.match(rest)
        if e:
            experts.setdefault(prefix, {}).setdefault(e.group(2), {})[int(e.group(1))] = t
        else:
            out[prefix + _FROM_DISK.get(rest, rest)] = t
    for prefix, kinds in experts.items():
        w1, w2, w3 = (_stack_experts(prefix, kind, kinds.get(kind, {})) for kind in ("w1", "w2", "w3"))
        out[f"{prefix}mlp.experts.gate_up_proj"] = torch.cat([w1, w3], dim=1)
        out[f"{prefix}mlp.experts.down_proj"] = w2
    return out


def _stack_experts(prefix: str, kind: str, per_expert: dict[int, torch.Tensor]) -> torch.Tensor:
    if not per_expert or sorted(per_expert) != list(range(len(per_expert))):
        raise ValueError(f"{prefix}ffn.experts: expected {kind} for experts 0..E-1, "
                         f"found {sorted(per_expert)}")
    return torch.stack([per_expert[j] for j in range(len(per_expert))])


def is_v4_dir(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "deepseek_v4"
    except (json.JSONDecodeError, AttributeError):
        return False


def read_config(path: str | Path) -> V4Config:
    raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    try:
        return V4Config.from_hf_dict(raw)
    except TypeError as e:
        raise ConfigError(f"{path}/config.json: not a DeepSeek-V4 config ({e})") from None


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[key] = handle.get_tensor(key)
    return tensors


def check_hash_tables(cfg: V4Config, state: dict[str, torch.Tensor], where: str) -> None:
    """A hash layer's table must map every token of the vocabulary to K experts that exist."""
    for name, t in state.items():
        if not name.endswith("mlp.gate.tid2eid"):
            continue
        want = (cfg.vocab_size, cfg.num_experts_per_tok)
        if tuple(t.shape) != want:
            raise ValueError(f"{where}: {name} has shape {list(t.shape)}, expected [vocab_size, "
                             f"num_experts_per_tok] = {list(want)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= cfg.n_routed_experts):
            raise ValueError(f"{where}: {name} holds expert ids outside 0..{cfg.n_routed_experts - 1}")


def save_v4(model: torch.nn.Module, out_dir: str | Path, tokenizer: Any = None,
            dtype: torch.dtype | None = None) -> Path:
    """config.json + model.safetensors (+ tokenizer files: a directory or an HF tokenizer), atomically."""
    cfg: V4Config = model.config
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() and not k.endswith("correction_bias") else v
                 for k, v in state.items()}
    tensors = to_disk(state)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        weights_dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
        hf = cfg.to_hf_dict() | {"dtype": str(weights_dtype).removeprefix("torch.")}
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            from seekforge.model.hf import write_tokenizer_files

            write_tokenizer_files(tokenizer, tmp)
    return out_dir


def load_v4(path: str | Path, device: torch.device | str = "cpu",
            dtype: torch.dtype | None = None) -> torch.nn.Module:
    from seekforge.model.v4 import build_v4

    cfg = read_config(path)
    state = from_disk(read_tensors(path))
    check_hash_tables(cfg, state, str(path))
    model = build_v4(cfg, device, dtype, init=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match config.json: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    return model
