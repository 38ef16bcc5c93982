"""The ONE adapter between seekforge's in-memory model and Hugging Face model directories.

On disk we write exactly what DeepSeek releases and transformers reads (``modeling_deepseek_v3.py``):

* ``config.json`` from ``ModelConfig.to_hf_dict()`` (+ ``torch_dtype``/``dtype`` of the weights),
  ``generation_config.json`` with bos/eos;
* ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``
  above ``max_shard_bytes``;
* routed experts as per-expert keys ``mlp.experts.{j}.gate_proj/up_proj/down_proj.weight`` (read by
  transformers 4 and 5, vLLM and llama.cpp's converter), ``e_score_correction_bias`` in fp32;
* MTP module k at ``model.layers.{L+k-1}`` with its own copies of ``embed_tokens`` and
  ``shared_head.head`` (the shared embedding / lm_head), as in the V3 release;
* tokenizer files next to the weights when a tokenizer is attached.

Reading accepts our directories and ones written by transformers, which may store the experts fused
(``mlp.experts.gate_up_proj [E, 2*I, d]`` / ``mlp.experts.down_proj [E, d, I]``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from seekforge.config import ConfigError
from seekforge.model.config import ModelConfig
from seekforge.utils import atomic_dir

log = logging.getLogger("seekforge.model")

SAFE_INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 4 * 2**30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")
_EXPERTS = r"^(model\.layers\.\d+\.mlp\.experts)"
_EXPERT_STACKED = re.compile(_EXPERTS + r"\.(gate_up_proj|down_proj)$")
_EXPERT_SINGLE = re.compile(_EXPERTS + r"\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# =============================================================================================
# seekforge state dict -> HF tensors
# =============================================================================================


def to_hf_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """HF on-disk tensors from our module (per-expert keys, MTP copies); router bias stays fp32."""
    cfg: ModelConfig = model.config
    L = cfg.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if t.is_meta:
            raise ValueError(f"cannot save a model on the meta device ({name}); build it with device=...")
        t = t.detach()
        if name.endswith("e_score_correction_bias"):
            if cfg.scoring_func == "sigmoid":  # V2 (softmax) checkpoints have no bias
                out[name] = t.float().cpu().contiguous()
            continue
        t = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        m = _EXPERT_STACKED.match(name)
        if m:
            prefix, kind = m.groups()
            for j in range(t.shape[0]):
                if kind == "gate_up_proj":
                    gate, up = t[j].chunk(2, dim=0)
                    out[f"{prefix}.{j}.gate_proj.weight"] = gate.cpu().contiguous()
                    out[f"{prefix}.{j}.up_proj.weight"] = up.cpu().contiguous()
                else:
                    out[f"{prefix}.{j}.down_proj.weight"] = t[j].cpu().contiguous()
            continue
        out[name] = t.cpu().contiguous()
    for k in range(cfg.num_nextn_predict_layers):  # the release stores copies of the shared tensors
        out[f"model.layers.{L + k}.embed_tokens.weight"] = out["model.embed_tokens.weight"].clone()
        out[f"model.layers.{L + k}.shared_head.head.weight"] = out["lm_head.weight"].clone()
    return out


def from_hf_state_dict(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from HF tensors: stack per-expert keys, keep fused ones, drop MTP copies."""
    L = cfg.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, t in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        m = re.match(r"^model\.layers\.(\d+)\.(embed_tokens|shared_head\.head)\.weight$", name)
        if m and int(m.group(1)) >= L:
            continue  # MTP copies of the shared embedding / head
        m = _EXPERT_SINGLE.match(name)
        if m:
            prefix, j, kind = m.groups()
            experts.setdefault(prefix, {}).setdefault(kind, {})[int(j)] = t
            continue
        out[name] = t
    for prefix, parts in experts.items():
        n = cfg.n_routed_experts
        for kind in ("gate_proj", "up_proj", "down_proj"):
            got = parts.get(kind, {})
            if sorted(got) != list(range(n)):
                missing = sorted(set(range(n)) - set(got))[:5]
                raise ConfigError(f"{prefix}: expected {n} experts with {kind} weights, "
                                  f"missing e.g. {missing}")
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([parts["gate_proj"][j], parts["up_proj"][j]], dim=0) for j in range(n)])
        out[f"{prefix}.down_proj"] = torch.stack([parts["down_proj"][j] for j in range(n)])
    if "lm_head.weight" not in out and cfg.tie_word_embeddings and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


# =============================================================================================
# Saving
# =============================================================================================


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def write_tokenizer_files(tokenizer: Any, out: Path) -> None:
    if isinstance(tokenizer, (str, Path)):
        src = Path(tokenizer)
        if not src.is_dir():
            raise FileNotFoundError(f"tokenizer directory {src} does not exist")
        copied = [f for f in src.iterdir() if f.name in TOKENIZER_FILES]
        if not copied:
            raise ValueError(f"{src} holds no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
        for f in copied:
            shutil.copy2(f, out / f.name)
    elif hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
    else:
        raise TypeError(f"tokenizer must be a directory or an HF tokenizer, got {type(tokenizer).__name__}")


def save_model(model: torch.nn.Module, out_dir: str | Path, tokenizer: Any = None, *,
               dtype: torch.dtype | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write an HF model directory atomically (a crash never leaves a half-written ``out_dir``).

    ``dtype``: cast weights (e.g. ``torch.bfloat16`` for release); default keeps the model's dtype.
    """
    cfg: ModelConfig = model.config
    tensors = to_hf_state_dict(model, dtype)
    weight_dtype = dtype or next(model.parameters()).dtype
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        hf = cfg.to_hf_dict()
        dtype_name = _DTYPE_NAMES.get(weight_dtype, str(weight_dtype).replace("torch.", ""))
        hf["torch_dtype"] = hf["dtype"] = dtype_name
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
        if cfg.pad_token_id is not None:
            gen["pad_token_id"] = cfg.pad_token_id
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        shards = _shards(tensors, max_shard_bytes)
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata=meta)
                weight_map.update(dict.fromkeys(shard, fname))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            write_tokenizer_files(tokenizer, tmp)
    return out_dir


# =============================================================================================
# Loading
# =============================================================================================


def read_safetensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory (single file or index + shards)."""
    directory = Path(directory)
    index = directory / SAFE_INDEX
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ConfigError(f"{index}: not a valid safetensors index ({e})") from None
    elif (directory / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors or {SAFE_INDEX} "
                                "(only safetensors checkpoints are supported)")
    tensors: dict[str, torch.Tensor] = {}
    for fname in files:
        path = directory / fname
        if not path.exists():
            raise FileNotFoundError(f"{path} is listed in {SAFE_INDEX} but missing")
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[key] = f.get_tensor(key)
    return tensors


def load_checkpoint(directory: str | Path, cfg: ModelConfig) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, our state dict) of an HF directory. A checkpoint without MTP weights (e.g. one saved
    by transformers, which drops them) yields a config with ``num_nextn_predict_layers = 0``."""
    state = from_hf_state_dict(read_safetensors(directory), cfg)
    L, D = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
    if D and not any(k.startswith(f"model.layers.{L}.") for k in state):
        log.info("%s: no MTP weights at model.layers.%d; loading without MTP modules", directory, L)
        cfg = dataclasses.replace(cfg, num_nextn_predict_layers=0)
    return cfg, state


def load_state_dict(directory: str | Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return load_checkpoint(directory, cfg)[1]


__all__ = ["save_model", "load_checkpoint", "load_state_dict", "to_hf_state_dict", "from_hf_state_dict",
           "read_safetensors"]
