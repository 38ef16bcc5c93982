"""Writing fine-tuning results, loading adapters for inference, merging LoRA into a model dir.

Layout of ``out_dir/final/`` after ``seekforge sft``:

* ``full`` / ``freeze``: a complete model directory (config.json, safetensors, tokenizer files).
* ``lora`` / ``qlora``: a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``,
  keys ``base_model.model.<HF module name>.lora_A.weight``), the tokenizer files (the chat
  template the adapter was trained with) and ``seekforge_adapter.json`` (method, base path).
* ``prefix``: HF bases - a PEFT prefix-tuning adapter; seekforge bases - the MLA prefix
  (``model.layers.N.self_attn.prefix_kv`` / ``prefix_pe``) with ``peft_type`` ``SEEKFORGE_MLA_PREFIX``.
  Prefixes add attention entries: they cannot be merged into weights, and only seekforge's own
  engine serves them (vLLM / llama.cpp / Ollama load LoRA only).

What a LoRA adapter of a DeepSeek-V3 base means must not depend on who loads it. PEFT
(>= 0.18 with transformers 5) rewrites the ``target_modules`` names ``gate_proj`` / ``up_proj`` /
``down_proj`` of a DeepSeek-V3 model to its stacked routed-expert parameters (its converter for
adapters trained on transformers 4's per-expert modules), which would drop the dense-MLP and
shared-expert LoRA and adapt experts that were never trained. So seekforge writes every target by
its full name, main layers only, in the form that converter leaves alone (:func:`portable_lora_config`):

* ``target_modules``: the attention projections (``model.layers.0.self_attn.q_a_proj`` ...);
* ``target_parameters``: the dense-MLP / shared-expert weights (``model.layers.0.mlp.gate_proj.weight``
  ...; PEFT's parameter LoRA, the same ``lora_A`` / ``lora_B`` keys and the same update B·A·alpha/r
  as a module LoRA) and, when trained, the routed experts' stacked ``mlp.experts.gate_up_proj`` /
  ``mlp.experts.down_proj`` (rank r per expert, the layout transformers 5 uses).

``PeftModel.from_pretrained`` on the transformers model, :func:`load_adapter` and ``seekforge merge``
then give the same logits. Adapters written by earlier seekforge versions (leaf names plus an
``exclude_modules`` pattern) are rewritten to this form when seekforge loads them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seekforge.finetune.methods import MLP_NAMES, HFCausalLM, base_kind, is_v4, unwrap
from seekforge.utils import atomic_dir, atomic_write_text

log = logging.getLogger("seekforge.finetune")

MARKER = "seekforge_adapter.json"


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    """The model writer's tokenizer copy (an HF tokenizer or a tokenizer directory), when one is given."""
    if tokenizer is not None:
        from seekforge.model.hf import write_tokenizer_files

        write_tokenizer_files(tokenizer, out)


def save_result(
    model: nn.Module,
    kind: str,
    method: str,
    out_dir: str | Path,
    *,
    tokenizer: Any = None,
    base_path: str | Path | None = None,
) -> Path:
    """Write the model (full/freeze) or the adapter (lora/qlora/prefix) to ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    base = unwrap(model)
    if method in ("full", "freeze"):
        if kind == "seekforge":
            from seekforge.model import save_model

            return save_model(base, out_dir, tokenizer=tokenizer)
        with atomic_dir(out_dir) as tmp:
            base.save_pretrained(str(tmp), safe_serialization=True)
            _save_tokenizer(tokenizer, tmp)
        return out_dir
    with atomic_dir(out_dir) as tmp:
        if method == "prefix" and kind == "seekforge":
            _save_mla_prefix(base, tmp, base_path)
        else:
            peft_model = model.inner if isinstance(model, HFCausalLM) else model
            peft_model.save_pretrained(str(tmp))
            _fix_adapter_config(tmp / "adapter_config.json", base_path, portable=kind == "seekforge",
                                modules=_adapted_linears(base) if kind == "seekforge" else None)
        _save_tokenizer(tokenizer, tmp)
        marker = {
            "format": "seekforge-adapter-v2",
            "method": method,
            "base_kind": kind,
            "base_model": str(Path(base_path).resolve()) if base_path else None,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _adapted_linears(base: nn.Module) -> list[str]:
    """Full names of the linear layers that carry a module LoRA (not the parameter LoRA of experts)."""
    from seekforge.finetune.methods import _is_linear

    return sorted(name for name, mod in base.named_modules()
                  if hasattr(mod, "lora_A") and _is_linear(mod.get_base_layer()))


def _fix_adapter_config(path: Path, base_path: str | Path | None, portable: bool,
                        modules: list[str] | None = None) -> None:
    """Make the PEFT config describe an ordinary causal-LM adapter of the base directory.

    ``modules``: the adapted linears by full name. PEFT saves 20 or more targets as the shortest
    suffixes that tell them apart (``down_proj``), which the portable form must not contain."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if modules is not None and cfg.get("peft_type") == "LORA":
        cfg["target_modules"] = modules
    cfg["task_type"] = cfg.get("task_type") or "CAUSAL_LM"
    cfg.pop("auto_mapping", None)  # points at seekforge's class; HF users load onto their own class
    if base_path is not None:
        cfg["base_model_name_or_path"] = str(Path(base_path).resolve())
    if portable:
        cfg = portable_lora_config(cfg)
    elif isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def portable_lora_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A seekforge LoRA config (full module names) in the form every loader reads alike (module doc).

    Dense-MLP / shared-expert projections move from ``target_modules`` to ``target_parameters``
    (their ``.weight``). PEFT's parameter LoRA has no dropout, so ``lora_dropout`` is written as 0
    then: dropout acts only while training and changes nothing an adapter computes at inference.
    """
    if cfg.get("peft_type") != "LORA":
        return cfg
    modules = list(cfg.get("target_modules") or [])
    # ``.mlp.``: DeepSeek-V4's KV-compressor ``gate_proj`` is an attention module PEFT never renames.
    mlp = sorted(m for m in modules if m.rsplit(".", 1)[-1] in MLP_NAMES and ".mlp." in f".{m}")
    params = sorted({*(cfg.get("target_parameters") or []), *(f"{m}.weight" for m in mlp)})
    cfg = dict(cfg)
    cfg["target_modules"] = sorted(set(modules) - set(mlp))  # [] (not None: PEFT would pick defaults)
    cfg["target_parameters"] = params or None
    if params:
        cfg["lora_dropout"] = 0.0
    return cfg


def _save_mla_prefix(base: nn.Module, out: Path, base_path: str | Path | None) -> None:
    from safetensors.torch import save_file

    from seekforge.finetune.prefix import PREFIX_TYPE, prefix_state_dict

    state = prefix_state_dict(base)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    P = next(iter(state.values())).shape[0]
    cfg = {
        "peft_type": PREFIX_TYPE,
        "num_virtual_tokens": P,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(Path(base_path).resolve()) if base_path else None,
        "kv_lora_rank": base.config.kv_lora_rank,
        "qk_rope_head_dim": base.config.qk_rope_head_dim,
        "num_layers": base.config.num_hidden_layers,
    }
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Loading


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{adapter_dir} is not an adapter directory: {path.name} is missing "
            "(full/freeze fine-tunes are whole models: load them as the base instead)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _legacy_full_names(cfg: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Rewrite a seekforge v1 adapter config (leaf names + ``exclude_modules`` regex) to full names.

    The names are those PEFT matched on the seekforge model when it was trained: a module whose
    name is, or ends with ``.`` + , a listed leaf, unless the exclude pattern matches its name.
    """
    leaves = cfg.get("target_modules")
    if not isinstance(leaves, list) or not any("." not in t for t in leaves):
        return cfg
    exclude = cfg.get("exclude_modules")
    exclude_re = re.compile(exclude) if isinstance(exclude, str) else None
    full = sorted(
        name
        for name, _ in unwrap(model).named_modules()
        if any(name == t or name.endswith("." + t) for t in leaves)
        and not (exclude_re and exclude_re.fullmatch(name))
    )
    return {**cfg, "target_modules": full, "exclude_modules": None}


def lora_config(adapter_dir: str | Path, model: nn.Module):
    """The adapter's PEFT config; seekforge LoRA adapters in the portable form (module docstring)."""
    from peft import PeftConfig

    adapter_dir = Path(adapter_dir)
    config = PeftConfig.from_pretrained(str(adapter_dir))
    cfg = read_adapter_config(adapter_dir)
    marker = adapter_dir / MARKER
    meta = json.loads(marker.read_text(encoding="utf-8")) if marker.exists() else {}
    if cfg.get("peft_type") == "LORA" and meta.get("base_kind") == "seekforge":
        cfg = portable_lora_config(_legacy_full_names(cfg, model))
        config.target_modules = set(cfg["target_modules"])
        config.target_parameters = cfg["target_parameters"]
        config.exclude_modules = None
        config.lora_dropout = cfg["lora_dropout"]
    return config


def peft_from_pretrained(model: nn.Module, adapter_dir: str | Path, **kwargs: Any):
    """``PeftModel.from_pretrained`` with the config of :func:`lora_config` (also old adapters)."""
    from peft import PeftModel

    config = lora_config(adapter_dir, model)
    return PeftModel.from_pretrained(model, str(adapter_dir), config=config, **kwargs)


def _lora_into_seekforge(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """Merge a LoRA adapter into a seekforge model's weights (returns the plain model). Over a
    quantized base (`seekforge quantize`) the LoRA layers stay unmerged in the returned model."""
    from peft import PeftModel

    from seekforge.compress.qlora import is_quantized, register_quant_lora

    config = lora_config(adapter_dir, model)
    config.task_type = None  # PeftModelForCausalLM expects HF generation hooks seekforge does not have
    register_quant_lora(config, model)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), config=config)
    if is_quantized(model):
        return peft_model.base_model.model
    return peft_model.merge_and_unload()


def load_adapter(model: nn.Module, adapter_dir: str | Path, merge: bool = True) -> nn.Module:
    """Put an adapter on a loaded base model for inference; returns the model to use.

    seekforge bases: LoRA is merged into the weights (no per-token cost, works with the MLA cache
    and weight absorption); a MLA prefix is attached. HF bases (a ``transformers`` model or
    :class:`HFCausalLM`): PEFT's model, LoRA merged when ``merge``.
    """
    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    peft_type = cfg.get("peft_type")
    hf_wrapped = isinstance(model, HFCausalLM)
    inner = model.inner if hf_wrapped else model
    is_seekforge = hasattr(inner, "forward_cached")
    from seekforge.finetune.prefix import PREFIX_TYPE

    if peft_type == PREFIX_TYPE:
        if not is_seekforge or is_v4(inner):
            raise ValueError(
                f"{adapter_dir} is a seekforge MLA prefix; it needs a seekforge DeepSeek-V3/V2 base "
                "(DeepSeek-V4 has no MLA latent)"
            )
        from safetensors.torch import load_file

        from seekforge.finetune.prefix import load_prefix

        load_prefix(inner, load_file(str(adapter_dir / "adapter_model.safetensors")))
        return model
    if is_seekforge:
        if peft_type != "LORA":
            raise ValueError(
                f"{adapter_dir}: a {peft_type} adapter cannot be used with a seekforge base "
                "(LoRA and seekforge MLA prefixes can)"
            )
        return _lora_into_seekforge(inner, adapter_dir)
    peft_model = peft_from_pretrained(inner, adapter_dir)
    if peft_type == "LORA" and merge:
        peft_model = peft_model.merge_and_unload()
    if hf_wrapped:
        model.inner = peft_model
        return model
    return peft_model


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model directory recorded in an adapter (or None)."""
    return read_adapter_config(adapter_dir).get("base_model_name_or_path")


def merge_lora(
    base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32
) -> Path:
    """``seekforge merge``: fold a LoRA adapter into the base weights and write a full model dir."""
    from seekforge.tokenizer import load_tokenizer

    cfg = read_adapter_config(adapter_dir)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(
            f"{adapter_dir} is a {cfg.get('peft_type')} adapter; only LoRA can be merged into "
            "weights (a prefix adds attention entries: serve it with --adapter instead)"
        )
    marker = Path(adapter_dir) / MARKER
    if marker.exists() and json.loads(marker.read_text(encoding="utf-8")).get("method") == "qlora":
        log.warning(
            "merging a QLoRA adapter into a full-precision base: the adapter was trained against "
            "4-bit weights, so outputs differ slightly from the QLoRA model"
        )
    tok_dir = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base_dir
    tokenizer = load_tokenizer(tok_dir)
    kind = base_kind(base_dir)
    device = torch.device("cpu")
    from seekforge.compress.quantize import is_seekforge_quantized

    if kind == "seekforge" and is_seekforge_quantized(base_dir):
        raise ValueError(
            f"{base_dir} is a quantized model (`seekforge quantize`): a LoRA adapter cannot be merged into "
            "int8/int4 weights; merge it into the float model, or serve the quantized base with --adapter"
        )
    if kind == "seekforge":
        from seekforge.model import load_model, save_model

        merged = load_adapter(load_model(str(base_dir), device=device, dtype=dtype), adapter_dir)
        return save_model(merged, out_dir, tokenizer=tokenizer)
    from transformers import AutoModelForCausalLM

    merged = load_adapter(AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype), adapter_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    atomic_write_text(
        Path(out_dir) / "merged_from.json",
        json.dumps({"base": str(base_dir), "adapter": str(adapter_dir)}, indent=2) + "\n",
    )
    return Path(out_dir)


def load_trained_weights(model: nn.Module, kind: str, method: str, path: str | Path) -> None:
    """Resume: copy the weights written by :func:`save_result` back into the prepared model."""
    from safetensors.torch import load_file

    path = Path(path)
    if method in ("full", "freeze"):
        base = unwrap(model)
        if kind == "seekforge" and is_v4(base):
            from seekforge.model.hf_v4 import from_disk, read_tensors

            state = from_disk(read_tensors(path))
        elif kind == "seekforge":
            from seekforge.model.hf import load_checkpoint

            _, state = load_checkpoint(path, base.config)
        else:
            from seekforge.model.hf import read_safetensors

            state = read_safetensors(path)
        missing, unexpected = base.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not match the model: missing {missing[:6]}, unexpected {unexpected[:6]}"
            )
        return
    state = load_file(str(path / "adapter_model.safetensors"))
    if method == "prefix" and kind == "seekforge":
        own = dict(unwrap(model).named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)
        return
    from peft import set_peft_model_state_dict

    peft_model = model.inner if isinstance(model, HFCausalLM) else model
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{path}: adapter weights do not match the model: unexpected {unexpected[:6]}")


def adapter_engine_args(adapter_dir: str | Path, tokenizer_dir: str | Path | None = None) -> dict[str, Any]:
    """Keyword arguments for ``Engine.from_pretrained(base, ...)`` that serve base + adapter.

    The adapter directory carries the tokenizer/chat template it was trained with, so that is
    the default tokenizer (a template mismatch is the classic "never stops talking" bug).
    """
    adapter_dir = Path(adapter_dir)
    read_adapter_config(adapter_dir)  # fail before the base loads
    has_tok = (adapter_dir / "tokenizer_config.json").exists()
    return {
        "transform": lambda model: load_adapter(model, adapter_dir),
        "tokenizer_dir": tokenizer_dir or (adapter_dir if has_tok else None),
    }
