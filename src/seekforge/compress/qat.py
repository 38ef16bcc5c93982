"""Quantization-aware training: train through fake-quantized weights (straight-through estimator).

``apply_qat(model, bits, group_size)`` makes every weight that ``seekforge quantize`` would quantize
(the decoder layers' linears except ``kv_b_proj``, and each routed expert) read as
``w + (Q(w) - w).detach()`` in the forward pass, where Q is the same round-to-nearest int8 / int4
quantize-dequantize as post-training quantization. The forward sees the quantized weights; the
gradient passes straight through to the float weights (Bengio et al. 2013, arXiv:1308.3432; Jacob
et al. 2018, arXiv:1712.05877). The float weights keep training, so the saved model is an ordinary
float checkpoint whose weights sit where rounding costs little: quantize it afterwards with
``seekforge quantize --method int4`` (same group size) to get the deployable model.

How: the module's class is swapped for a subclass whose attribute lookup returns the fake-quantized
tensor for the targeted parameter names. Parameters stay registered under their own names, so
``state_dict``, optimizers, checkpoints and ``save_model`` see the plain float weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seekforge.compress.qlinear import fake_quantize
from seekforge.compress.quantize import QuantizeSettings, check_shapes, quantization_targets

QAT_CHOICES = ("int8", "int4")


def fake_quantize_ste(w: Tensor, bits: int, group_size: int) -> Tensor:
    """Forward: Q(w); backward: identity (straight-through)."""
    with torch.no_grad():
        q = fake_quantize(w, bits, group_size)
    return w + (q - w).detach()


class _FakeQuantWeights:
    """Mixin: reading one of ``_qat_names`` returns its fake-quantized value (see module docstring)."""

    _qat_names: tuple[str, ...] = ()
    _qat_bits: int = 8
    _qat_group_size: int = 128

    def __getattr__(self, name: str):
        value = super().__getattr__(name)
        if name in self._qat_names and isinstance(value, Tensor):
            if value.dim() == 3:  # stacked experts [E, out, in]: each expert row-wise, like PTQ
                return fake_quantize_ste(value.reshape(-1, value.shape[-1]), self._qat_bits,
                                         self._qat_group_size).view_as(value)
            return fake_quantize_ste(value, self._qat_bits, self._qat_group_size)
        return value


_CLASSES: dict[type, type] = {}


def _fake_quant_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"FakeQuant{cls.__name__}", (_FakeQuantWeights, cls), {})
    return _CLASSES[cls]


def apply_qat(model: nn.Module, bits: int, group_size: int = 128) -> list[str]:
    """Fake-quantize the PTQ targets of ``model`` in place; returns the module names affected."""
    settings = QuantizeSettings(method="int8" if bits == 8 else "int4", group_size=group_size)
    settings.validate()
    check_shapes(model, settings)
    linears, experts = quantization_targets(model, settings)
    for name in linears + experts:
        mod = model.get_submodule(name)
        mod.__class__ = _fake_quant_class(type(mod))
        mod._qat_names = ("weight",) if name in linears else ("gate_up_proj", "down_proj")
        mod._qat_bits, mod._qat_group_size = bits, group_size
    return linears + experts


def remove_qat(model: nn.Module) -> None:
    """Undo :func:`apply_qat` (the float weights are untouched)."""
    for mod in model.modules():
        if isinstance(mod, _FakeQuantWeights):
            mod.__class__ = type(mod).__mro__[2]


def parse_qat(value: str | None) -> int | None:
    """``qat`` config value -> bits (None = off)."""
    if value in (None, "", "none", "off"):
        return None
    if value not in QAT_CHOICES:
        from seekforge.config import ConfigError

        raise ConfigError(f"qat: expected one of {', '.join(QAT_CHOICES)} (or null), got {value!r}")
    return 8 if value == "int8" else 4


__all__ = ["apply_qat", "remove_qat", "fake_quantize_ste", "parse_qat", "QAT_CHOICES"]
