"""Post-training weight-only quantization of a seekforge model, and its on-disk format.

``quantize_model(model, QuantizeSettings(method="int8"|"int4"|"awq"))`` swaps modules from outside
the model (the model code is untouched): every ``nn.Linear`` of the decoder layers (main and MTP)
becomes a :class:`~seekforge.compress.qlinear.QuantLinear` and every stacked ``RoutedExperts``
becomes a :class:`~seekforge.compress.qlinear.QuantRoutedExperts` (each expert quantized on its
own). Kept in the model's precision: embeddings, norms, the MoE router and its bias, ``kv_b_proj``
(absorbed-MLA decode multiplies by that matrix directly) and any leaf name in ``keep``; ``lm_head``
by default (``lm_head="int8"`` quantizes it per output channel).

On disk (``save_quantized``): a directory with the model's ``config.json`` plus

    "quantization_config": {"quant_method": "seekforge", "format": "seekforge-wq-v1",
                            "method": "int8"|"int4"|"awq", "bits": 8|4, "group_size": 128|null,
                            "lm_head": "keep"|"int8", "keep": [...], "quantized_modules": [...]}

and ``model.safetensors`` holding the module state: for each quantized linear ``P.qweight``,
``P.scales`` (``P.mins`` for int4, ``P.input_scale`` for AWQ; layout in :mod:`.qlinear`), routed
experts as ``P.gate_up.{e}.*`` / ``P.down.{e}.*``, and the remaining tensors under their usual
names (no MTP copies of the embedding / head). It is seekforge's own format and no other runtime
reads it: transformers 5 skips the unknown ``quant_method`` with a warning and would initialise the
quantized matrices randomly (it reports them MISSING), so load these directories with
``seekforge.model.load_model(dir)`` (what the engine, ``chat``, ``serve`` and ``sft`` use).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from seekforge.compress.qlinear import QuantLinear, QuantRoutedExperts, check_group_size
from seekforge.config import ConfigError, closest
from seekforge.model.model import RoutedExperts

log = logging.getLogger("seekforge.compress")

METHODS = ("int8", "int4", "awq")
FORMAT = "seekforge-wq-v1"
ALWAYS_KEPT = ("kv_b_proj",)


@dataclass
class QuantizeSettings:
    method: str = "int8"
    group_size: int = 128  # int4/awq: input columns per scale
    lm_head: str = "keep"  # keep | int8
    keep: list[str] = field(default_factory=list)  # extra leaf names kept in high precision

    def validate(self) -> None:
        if self.method not in METHODS:
            near = closest(self.method, METHODS)
            hint = f" Did you mean {near!r}?" if near else ""
            raise ConfigError(f"unknown quantization method {self.method!r}.{hint} Choose one of: "
                              f"{', '.join(METHODS)}")
        if self.lm_head not in ("keep", "int8"):
            raise ConfigError(f"lm_head must be 'keep' or 'int8', got {self.lm_head!r}")
        if self.method != "int8" and (self.group_size < 32 or self.group_size % 32):
            raise ConfigError(f"group_size must be a positive multiple of 32, got {self.group_size}")

    @property
    def bits(self) -> int:
        return 8 if self.method == "int8" else 4


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def quantization_targets(model: nn.Module, settings: QuantizeSettings) -> tuple[list[str], list[str]]:
    """(linear module names, routed-experts module names) that ``settings`` quantizes."""
    kept = set(ALWAYS_KEPT) | set(settings.keep)
    linears, experts = [], []
    for name, mod in model.named_modules():
        if not name.startswith("model.layers."):
            continue
        if type(mod) is nn.Linear and name.rsplit(".", 1)[-1] not in kept:
            linears.append(name)
        elif isinstance(mod, RoutedExperts) and "experts" not in kept:  # GroupedExperts too
            experts.append(name)
    return linears, experts


def check_shapes(model: nn.Module, settings: QuantizeSettings) -> None:
    """Every int4 target's input dimension must be a multiple of the group size (named error)."""
    if settings.bits != 4:
        return
    linears, experts = quantization_targets(model, settings)
    for name in linears:
        check_group_size(model.get_submodule(name).in_features, settings.group_size, name)
    for name in experts:
        mod = model.get_submodule(name)
        check_group_size(mod.gate_up_proj.shape[-1], settings.group_size, f"{name}.gate_up_proj")
        check_group_size(mod.down_proj.shape[-1], settings.group_size, f"{name}.down_proj")


@torch.no_grad()
def quantize_model(model: nn.Module, settings: QuantizeSettings,
                   calibration: list[torch.Tensor] | None = None) -> nn.Module:
    """Quantize ``model`` in place (see the module docstring); ``calibration`` token rows for AWQ."""
    from seekforge.compress.awq import collect_stats, search_scale

    settings.validate()
    check_shapes(model, settings)
    linears, experts = quantization_targets(model, settings)
    stats: dict = {}
    if settings.method == "awq":
        if not calibration:
            raise ValueError("method awq needs calibration text (--calib PATH)")
        stats = collect_stats(model, calibration, linears, experts)
    bits, G = settings.bits, settings.group_size

    def make(weight: torch.Tensor, key: str) -> QuantLinear:
        scale = search_scale(weight, stats.get(key), G) if settings.method == "awq" else None
        return QuantLinear.from_weight(weight, bits, G, input_scale=scale)

    for name in linears:
        _set_module(model, name, make(model.get_submodule(name).weight, name))
    for name in experts:
        mod = model.get_submodule(name)
        E = mod.gate_up_proj.shape[0]
        gate_up = [make(mod.gate_up_proj[e], f"{name}.gate_up.{e}") for e in range(E)]
        down = [make(mod.down_proj[e], f"{name}.down.{e}") for e in range(E)]
        _set_module(model, name, QuantRoutedExperts(gate_up, down))
    quantized = linears + experts
    if settings.lm_head == "int8":
        model.lm_head = QuantLinear.from_weight(model.lm_head.weight, 8)
        quantized.append("lm_head")
    model.quantization = {**asdict(settings), "bits": bits, "quantized_modules": quantized}
    return model


def quantization_record(model: nn.Module) -> dict[str, Any]:
    record = getattr(model, "quantization", None)
    if not record:
        raise ValueError("this model is not quantized (run quantize_model first)")
    return record


def save_quantized(model: nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write the quantized model directory atomically (format in the module docstring)."""
    from seekforge.model.hf import TOKENIZER_FILES
    from seekforge.utils import atomic_dir

    record = quantization_record(model)
    cfg = model.config
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    float_dtype = model.model.embed_tokens.weight.dtype
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        hf = cfg.to_hf_dict()
        hf["torch_dtype"] = hf["dtype"] = str(float_dtype).replace("torch.", "")
        hf["quantization_config"] = {"quant_method": "seekforge", "format": FORMAT,
                                     "method": record["method"], "bits": record["bits"],
                                     "group_size": record["group_size"] if record["bits"] == 4 else None,
                                     "lm_head": record["lm_head"], "keep": record["keep"],
                                     "quantized_modules": record["quantized_modules"]}
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "seekforge": FORMAT})
        if isinstance(tokenizer, (str, Path)):
            for f in Path(tokenizer).iterdir():
                if f.name in TOKENIZER_FILES:
                    shutil.copy2(f, tmp / f.name)
        elif tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out_dir


def read_quantization_config(model_dir: str | Path) -> dict[str, Any] | None:
    """The seekforge ``quantization_config`` of a model directory, or None for a float model."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    qc = json.loads(path.read_text(encoding="utf-8")).get("quantization_config")
    if not qc:
        return None
    if qc.get("quant_method") != "seekforge" or qc.get("format") != FORMAT:
        raise ConfigError(f"{path}: quantization_config {qc.get('quant_method')!r} is not seekforge's "
                          f"({FORMAT}); seekforge loads only its own quantized directories")
    return qc


def is_seekforge_quantized(model_dir: str | Path) -> bool:
    """True for a `seekforge quantize` output directory (False for float, other-quantized, non-dirs)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return False
    qc = json.loads(path.read_text(encoding="utf-8")).get("quantization_config") or {}
    return qc.get("quant_method") == "seekforge"


def load_quantized(model_dir: str | Path, cfg: Any, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Build the model on the meta device, put the quantized modules in from the stored tensors, and
    assign the remaining (float) tensors; nothing is materialised in full precision first."""
    from seekforge.model.hf import read_safetensors
    from seekforge.model.model import DeepseekV3ForCausalLM

    qc = read_quantization_config(model_dir)
    tensors = read_safetensors(model_dir)
    bits, G = int(qc["bits"]), qc.get("group_size")
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(cfg)

    def linear(prefix: str, n_in: int, n_out: int) -> QuantLinear:
        parts = {k[len(prefix) + 1 :]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix + ".")
                 and "." not in k[len(prefix) + 1 :]}
        if "qweight" not in parts:
            raise ValueError(f"{model_dir}: quantized module {prefix} has no {prefix}.qweight")
        try:
            return QuantLinear.from_tensors(parts, n_in, n_out, bits if prefix != "lm_head" else 8, G, device)
        except ValueError as e:
            raise ValueError(f"{model_dir}: {prefix}: {e}") from None

    for name in qc["quantized_modules"]:
        mod = model.get_submodule(name)
        if isinstance(mod, nn.Linear):
            _set_module(model, name, linear(name, mod.in_features, mod.out_features))
        else:
            E, two_i, d = mod.gate_up_proj.shape
            gate_up = [linear(f"{name}.gate_up.{e}", d, two_i) for e in range(E)]
            down = [linear(f"{name}.down.{e}", two_i // 2, d) for e in range(E)]
            _set_module(model, name, QuantRoutedExperts(gate_up, down))
    state = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() and not
                 k.endswith("e_score_correction_bias") else v.to(device)) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not any(k.startswith(q + ".") for q in qc["quantized_modules"])]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: tensors do not match config.json: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    rope = model.model.rotary_emb
    rope.inv_freq = torch.empty(rope.inv_freq.shape, device=device)
    rope.reset_parameters()
    model.quantization = {"method": qc["method"], "bits": bits, "group_size": G,
                          "lm_head": qc.get("lm_head", "keep"), "keep": qc.get("keep", []),
                          "quantized_modules": list(qc["quantized_modules"])}
    return model


def directory_bytes(path: str | Path) -> int:
    """Size of the weight files of a model directory."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


__all__ = ["METHODS", "FORMAT", "QuantizeSettings", "quantize_model", "save_quantized", "load_quantized",
           "read_quantization_config", "is_seekforge_quantized", "quantization_targets", "directory_bytes"]
