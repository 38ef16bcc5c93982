"""LoRA over a `seekforge quantize` model: QLoRA (Dettmers et al. 2023) on int8 / int4 weights, any device.

PEFT adapts only layer types it knows. ``LoraConfig._register_custom_module`` (PEFT's documented hook
for other layer types) maps :class:`~seekforge.compress.qlinear.QuantLinear` to
:class:`QuantLoraLinear`: PEFT's own LoRA ``Linear`` with the frozen quantized layer as its base,
``y = base(x) + B A x * scaling``. The base's codes are buffers, so only A and B train; the base's
backward dequantizes its weight and passes the gradient to the input (what LoRA needs).

The adapter that ``sft`` saves is an ordinary PEFT LoRA adapter (same module names as over the float
model). Over a quantized base it stays unmerged: adding ``B A`` to int8 / int4 codes would round the
update away, so :meth:`QuantLoraLinear.merge` refuses.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from seekforge.compress.qlinear import QuantLinear


class QuantLoraLinear(LoraLinear):
    """PEFT LoRA ``Linear`` whose base layer is a :class:`QuantLinear` (kept quantized and frozen)."""

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def merge(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("a LoRA adapter on a quantized (int8/int4) layer is not merged: the quantized "
                         "weights cannot hold the update; merge it into the float model instead")


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLinear) for m in model.modules())


def register_quant_lora(config: Any, model: nn.Module) -> Any:
    """Let ``config`` (a PEFT ``LoraConfig``) adapt ``model``'s QuantLinear layers; returns it.

    A saved seekforge adapter names the dense-MLP projections as parameters (``mlp.gate_proj.weight``,
    PEFT's parameter LoRA; see :mod:`seekforge.finetune.adapters`). A quantized layer has no weight
    parameter, so those targets become module targets here: same ``lora_A`` / ``lora_B`` keys, same
    update ``B A x * scaling``."""
    if not is_quantized(model):
        return config
    config._register_custom_module({QuantLinear: QuantLoraLinear})
    params = list(getattr(config, "target_parameters", None) or [])
    as_modules = {p.removesuffix(".weight") for p in params if p.endswith(".weight")
                  and isinstance(model.get_submodule(p.removesuffix(".weight")), QuantLinear)}
    if as_modules:
        modules = config.target_modules
        modules = {modules} if isinstance(modules, str) else set(modules or ())
        config.target_modules = modules | as_modules
        config.target_parameters = [p for p in params if p.removesuffix(".weight") not in as_modules] or None
    return config


__all__ = ["QuantLoraLinear", "is_quantized", "register_quant_lora"]
