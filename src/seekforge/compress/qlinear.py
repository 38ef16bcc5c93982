"""Weight-only quantized layers: round-to-nearest quantizers and the modules that run on them.

Formats (``bits`` = 8 or 4), for a weight ``W [N out, K in]``:

* int8: symmetric per output channel. ``qweight`` int8 ``[N, K]``, ``scales`` fp32 ``[N]``;
  ``W ~= qweight * scales[:, None]``.
* int4: asymmetric per group of ``group_size`` input columns. ``qweight`` uint8 ``[N, K/2]`` (two
  4-bit codes per byte, the even column in the low nibble), ``scales`` and ``mins`` fp32
  ``[N, K/G]``; ``W[n, k] ~= mins[n, g] + code[n, k] * scales[n, g]`` with g = k // G.
* optional ``input_scale`` fp32 ``[K]`` (AWQ): the stored codes quantize ``W * input_scale`` and the
  layer divides its input by ``input_scale`` first, so the product is unchanged in exact arithmetic
  while the input channels that carry large activations get finer weight steps.

Kernels. On the CPU, small batches (decode: at most ``KERNEL_MAX_ROWS`` rows) run torch's packed
weight-only kernels, ``torch._weight_int8pack_mm`` and ``aten._weight_int4pack_mm_for_cpu``, with
bfloat16 activations (both kernels are vectorised for bf16; with fp32 inputs the int8 one is ~5x
slower than an fp32 matmul on an AVX2 CPU). Larger batches (prefill, evaluation, training) and other
devices dequantize the weight to the activation dtype and call ``F.linear``, which is differentiable
with respect to the input (what LoRA on a quantized base needs). The int4 CPU kernel wants its own
tiled copy of the codes, built when the layer lands on the CPU (before any compiled graph reads
it), next to the on-disk layout: on the CPU an int4 layer holds
1 byte per weight in memory (0.5 on disk), an int8 layer 1 byte in both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KERNEL_MAX_ROWS = 16  # rows up to which the packed CPU kernels beat dequantize + fp32 GEMM
_KERNEL_DTYPE = torch.bfloat16


# =============================================================================================
# Round-to-nearest quantizers (pure functions; also used by QAT's fake quantization)
# =============================================================================================


def check_group_size(in_features: int, group_size: int, where: str = "") -> None:
    """int4 groups must tile the input dimension (and the CPU kernel wants groups of >= 32)."""
    if group_size < 32 or group_size % 32:
        raise ValueError(f"group_size must be a positive multiple of 32, got {group_size}")
    if in_features % group_size:
        raise ValueError(f"{where + ': ' if where else ''}group_size {group_size} does not divide the input "
                         f"dimension {in_features}; choose a group size that divides it (e.g. "
                         f"{math.gcd(in_features, 128) if math.gcd(in_features, 128) >= 32 else 32})")


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (codes int8 [N, K], scales fp32 [N]) with max |w| -> 127."""
    w = w.float()
    scales = (w.abs().amax(dim=-1) / 127).clamp(min=1e-12)
    codes = torch.round(w / scales[..., None]).clamp(-127, 127).to(torch.int8)
    return codes, scales


def dequantize_int8(codes: Tensor, scales: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return (codes.to(torch.float32) * scales[..., None].float()).to(dtype)


def quantize_int4(w: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int4 per group: (codes int32 0..15 [N, K], scales [N, K/G], mins [N, K/G], fp32).

    min/max round-to-nearest: the group's range [min, max] is split into 15 equal steps.
    """
    N, K = w.shape[-2:]
    g = w.float().reshape(*w.shape[:-1], K // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scales = ((hi - lo) / 15).clamp(min=1e-12)
    codes = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32)
    return codes.reshape(w.shape), scales, lo


def dequantize_int4(codes: Tensor, scales: Tensor, mins: Tensor,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    K = codes.shape[-1]
    G = K // scales.shape[-1]
    g = codes.reshape(*codes.shape[:-1], K // G, G).float()
    return (g * scales[..., None].float() + mins[..., None].float()).reshape(codes.shape).to(dtype)


def fake_quantize(w: Tensor, bits: int, group_size: int = 128) -> Tensor:
    """Quantize-dequantize ``w`` (same shape and dtype): what the int8/int4 formats would store."""
    if bits == 8:
        return dequantize_int8(*quantize_int8(w), dtype=w.dtype)
    return dequantize_int4(*quantize_int4(w, group_size), dtype=w.dtype)


def pack_nibbles(codes: Tensor) -> Tensor:
    """int 0..15 [..., K] -> uint8 [..., K/2], even column in the low nibble (the on-disk layout)."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: Tensor) -> Tensor:
    """uint8 [..., K/2] -> int32 [..., K] (inverse of :func:`pack_nibbles`)."""
    lo, hi = packed & 15, packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], -1).to(torch.int32)


def packed_matmul(x: Tensor, kernel: list[Tensor], bits: int, group_size: int) -> Tensor:
    """``x [..., K] @ W^T`` on torch's packed CPU kernels (``kernel`` from
    :meth:`QuantLinear.kernel_tensors`); computed in bfloat16, returned in ``x.dtype``."""
    packed, scales, inv_input_scale = kernel
    x2 = x.reshape(-1, x.shape[-1]).to(_KERNEL_DTYPE)
    if inv_input_scale.numel():
        x2 = x2 * inv_input_scale
    if bits == 8:
        y = torch._weight_int8pack_mm(x2, packed, scales)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, group_size, scales)
    return y.to(x.dtype).view(*x.shape[:-1], y.shape[-1])


# =============================================================================================
# The quantized linear layer
# =============================================================================================


class QuantLinear(nn.Module):
    """``y = x W^T`` with W stored as int8 or int4 codes (see the module docstring for the format).

    Build it with :meth:`from_weight` (quantize) or :meth:`from_tensors` (load). ``weight`` is a
    read-only dequantized copy, for code that inspects shapes or needs the matrix itself.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size if bits == 4 else None
        self.input_scale: Tensor | None = None
        self._kernel_cache: list[Tensor] = []

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_weight(cls, weight: Tensor, bits: int, group_size: int = 128,
                    input_scale: Tensor | None = None) -> QuantLinear:
        """Round-to-nearest quantization of ``weight`` [N, K] (times ``input_scale`` [K] for AWQ)."""
        N, K = weight.shape
        w = weight.detach().float()
        if input_scale is not None:
            w = w * input_scale.float()
        if bits == 8:
            codes, scales = quantize_int8(w)
            tensors = {"qweight": codes, "scales": scales}
        else:
            check_group_size(K, group_size)
            codes, scales, mins = quantize_int4(w, group_size)
            tensors = {"qweight": pack_nibbles(codes), "scales": scales, "mins": mins}
        if input_scale is not None:
            tensors["input_scale"] = input_scale.float()
        return cls.from_tensors(tensors, K, N, bits, group_size, weight.device)

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], in_features: int, out_features: int, bits: int,
                     group_size: int | None, device: torch.device | str | None = None) -> QuantLinear:
        """Build from the on-disk tensors (``qweight``, ``scales`` [, ``mins``] [, ``input_scale``])."""
        layer = cls(in_features, out_features, bits, group_size)
        device = torch.device(device or tensors["qweight"].device)
        groups = in_features // (group_size or 1)
        expect = {"qweight": (out_features, in_features if bits == 8 else in_features // 2),
                  "scales": (out_features,) if bits == 8 else (out_features, groups)}
        for name, shape in expect.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                got = tuple(tensors[name].shape) if name in tensors else "missing"
                raise ValueError(f"quantized weight {name}: expected shape {shape}, got {got}")
        layer.register_buffer("qweight", tensors["qweight"].to(device))
        layer.register_buffer("scales", tensors["scales"].float().to(device))
        if bits == 4:
            if tuple(tensors.get("mins", torch.empty(0)).shape) != tuple(tensors["scales"].shape):
                raise ValueError("quantized int4 weight: 'mins' missing or not shaped like 'scales'")
            layer.register_buffer("mins", tensors["mins"].float().to(device))
        if "input_scale" in tensors:
            del layer.input_scale
            layer.register_buffer("input_scale", tensors["input_scale"].float().to(device))
        if device.type == "cpu" and layer.kernel_fits:
            layer._kernel_cache = layer._build_kernel_tensors()
        return layer

    def to_tensors(self) -> dict[str, Tensor]:
        """The on-disk tensors (CPU, layout-independent)."""
        out = {"qweight": self.qweight.cpu(), "scales": self.scales.cpu()}
        if self.bits == 4:
            out["mins"] = self.mins.cpu()
        if self.input_scale is not None:
            out["input_scale"] = self.input_scale.cpu()
        return {k: v.contiguous() for k, v in out.items()}

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        self._kernel_cache = []
        if self.qweight.device.type == "cpu" and self.kernel_fits:  # built now, not in a compiled graph
            self._kernel_cache = self._build_kernel_tensors()
        return out

    # --- math --------------------------------------------------------------------------------------
    def codes(self) -> Tensor:
        return self.qweight if self.bits == 8 else unpack_nibbles(self.qweight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight the layer computes with, [N, K] (AWQ's input scale divided back out)."""
        if self.bits == 8:
            w = dequantize_int8(self.qweight, self.scales)
        else:
            w = dequantize_int4(self.codes(), self.scales, self.mins)
        if self.input_scale is not None:
            w = w / self.input_scale
        return w.to(dtype)

    @property
    def weight(self) -> Tensor:
        return self.dequantize(self.scales.dtype if self.scales.is_floating_point() else torch.float32)

    def kernel_tensors(self) -> list[Tensor]:
        """[packed weight, kernel scales, 1 / input_scale (empty without AWQ)] for :func:`packed_matmul`,
        built once per device (the engine's compiled decode graph reads them, so they exist before
        the first call: see :meth:`_apply`)."""
        if not self._kernel_cache:
            self._kernel_cache = self._build_kernel_tensors()
        return self._kernel_cache

    def _build_kernel_tensors(self) -> list[Tensor]:
        if self.bits == 8:
            packed, scales = self.qweight, self.scales.to(_KERNEL_DTYPE)
        else:  # the kernel computes (code - 8) * scale + zero per group, tables [K/G, N, 2]
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                unpack_nibbles(self.qweight).contiguous(), 1)
            zero = self.mins + 8 * self.scales
            scales = torch.stack([self.scales, zero], dim=-1).transpose(0, 1).contiguous().to(_KERNEL_DTYPE)
        inv = (1.0 / self.input_scale).to(_KERNEL_DTYPE) if self.input_scale is not None else \
            self.scales.new_empty(0, dtype=_KERNEL_DTYPE)
        return [packed, scales, inv]

    @property
    def kernel_fits(self) -> bool:
        """The int4 CPU kernel tiles 16 output rows at a time; other shapes take the dequantize path."""
        return self.bits == 8 or self.out_features % 16 == 0

    def uses_kernel(self, x: Tensor) -> bool:
        """Packed CPU kernel for this call? Small batches without autograd, shapes it tiles."""
        rows = x.numel() // self.in_features
        return (x.device.type == "cpu" and rows <= KERNEL_MAX_ROWS and self.kernel_fits
                and not (torch.is_grad_enabled() and x.requires_grad))

    def forward(self, x: Tensor) -> Tensor:
        if self.uses_kernel(x):
            return packed_matmul(x, self.kernel_tensors(), self.bits, self.group_size or 0)
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        w = (dequantize_int8(self.qweight, self.scales, x.dtype) if self.bits == 8 else
             dequantize_int4(self.codes(), self.scales, self.mins, x.dtype))
        return F.linear(x, w)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        awq = ", awq" if self.input_scale is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{g}{awq}"


# =============================================================================================
# Routed experts with per-expert quantized weights
# =============================================================================================


@torch.library.custom_op("seekforge::quant_expert_pairs", mutates_args=())
def _quant_expert_pairs(x: Tensor, flat: Tensor, weights: Tensor, bits: int, group_size: int,
                        gate_up: list[Tensor], down: list[Tensor]) -> Tensor:
    """Output of each (token, choice) pair, [N*K, d], on the packed kernels: ``flat`` [N*K] expert
    ids, ``weights`` [N*K] gate values, ``gate_up`` / ``down`` three kernel tensors per expert
    (:meth:`QuantLinear.kernel_tensors`). Pairs are grouped by expert (one kernel call per chosen
    expert and projection)."""
    K = flat.numel() // x.shape[0]
    out = x.new_empty(flat.numel(), x.shape[-1])
    for e in flat.unique().tolist():
        pairs = (flat == e).nonzero().squeeze(1)
        h = packed_matmul(x[pairs // K], gate_up[3 * e : 3 * e + 3], bits, group_size)
        gate, up = h.chunk(2, dim=-1)
        out[pairs] = packed_matmul(F.silu(gate) * up * weights[pairs, None], down[3 * e : 3 * e + 3], bits,
                                   group_size)
    return out


@_quant_expert_pairs.register_fake
def _(x: Tensor, flat: Tensor, weights: Tensor, bits: int, group_size: int,
      gate_up: list[Tensor], down: list[Tensor]) -> Tensor:
    return x.new_empty(flat.shape[0], x.shape[-1])


class QuantRoutedExperts(nn.Module):
    """Drop-in for the model's stacked ``RoutedExperts``: one :class:`QuantLinear` per expert and
    projection (``gate_up[e]`` [2I, d], ``down[e]`` [d, I]), same ``forward(x, idx, weights) ->
    (y, tokens per expert)``. Tokens are grouped by expert on the host (one sync per layer; the
    CPU path of the float model syncs for its decode loop too) and each expert's rows run through
    its own layers, so decode (one or two rows per expert) uses the packed kernels."""

    def __init__(self, gate_up: list[QuantLinear], down: list[QuantLinear]) -> None:
        super().__init__()
        self.gate_up = nn.ModuleList(gate_up)
        self.down = nn.ModuleList(down)

    @property
    def num_experts(self) -> int:
        return len(self.gate_up)

    def forward(self, x: Tensor, idx: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        N, K = idx.shape
        E = self.num_experts
        flat = idx.reshape(-1)
        counts = torch.zeros(E, dtype=torch.int32, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        if (torch.compiler.is_compiling() and x.device.type == "cpu" and self.gate_up[0].kernel_fits
                and self.down[0].kernel_fits):
            # The engine's compiled decode graph: the loop over chosen experts reads indices on the
            # host, so it runs inside one opaque op that the graph calls (CPU packed kernels only).
            bits, G = self.gate_up[0].bits, self.gate_up[0].group_size or 0
            y = torch.ops.seekforge.quant_expert_pairs(
                x, flat, weights.reshape(-1).to(x.dtype), bits, G,
                [t for layer in self.gate_up for t in layer.kernel_tensors()],
                [t for layer in self.down for t in layer.kernel_tensors()])
            return y.view(N, K, -1).sum(dim=1), counts
        if N * K <= 4 and not torch.is_grad_enabled():
            # Decode: one or two (token, choice) pairs; the sort and scatter below cost more than the
            # math, so each pair goes straight through its expert (as the float model's decode path).
            w = weights.reshape(-1).to(x.dtype)
            ys = []
            for j, e in enumerate(flat.tolist()):
                gate, up = self.gate_up[e](x[j // K]).chunk(2, dim=-1)
                ys.append(self.down[e](F.silu(gate) * up * w[j]))
            return torch.stack(ys).view(N, K, -1).sum(dim=1), counts
        order = flat.argsort(stable=True)
        token = order // K
        gate_w = weights.reshape(-1)[order].to(x.dtype)
        out = torch.zeros(N * K, x.shape[-1], dtype=x.dtype, device=x.device)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            rows = slice(start, start + n)
            gate, up = self.gate_up[e](x[token[rows]]).chunk(2, dim=-1)
            out[order[rows]] = self.down[e](F.silu(gate) * up * gate_w[rows, None])
            start += n
        return out.view(N, K, -1).sum(dim=1), counts


__all__ = ["QuantLinear", "QuantRoutedExperts", "quantize_int8", "quantize_int4", "dequantize_int8",
           "dequantize_int4", "fake_quantize", "pack_nibbles", "unpack_nibbles", "check_group_size",
           "KERNEL_MAX_ROWS"]
