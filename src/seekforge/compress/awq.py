"""AWQ: activation-aware per-input-channel scales for int4 weights (Lin et al. 2023, arXiv:2306.00978).

Weight-only quantization error hurts most on the input channels that carry large activations. AWQ
scales those weight columns up before rounding (finer steps relative to their values) and divides the
activations by the same factor: ``W x = (W diag(s)) (diag(s)^-1 x)``. Per layer the scale is
``s = mean|x|^alpha`` (normalised so max * min = 1), and alpha is searched on a grid in [0, 1) to
minimise ``|| X Q(W diag(s))^T diag(s)^-1 - X W^T ||^2`` on calibration activations; alpha = 0 is
plain round-to-nearest, so the layer error is never worse than RTN on the calibration rows.

The scale is kept as an explicit ``input_scale`` of the quantized layer rather than folded into the
preceding norm: in DeepSeekMoE the router, the shared experts and every routed expert read the same
normalised input, so no single fold fits them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekforge.compress.qlinear import dequantize_int4, quantize_int4


@dataclass
class ActivationStats:
    """Per input channel mean |x| and a sample of input rows, for one linear map."""

    abs_sum: Tensor | None = None
    count: int = 0
    sample: list[Tensor] = field(default_factory=list)
    sampled_rows: int = 0

    def add(self, x: Tensor, max_rows: int) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if x.shape[0] == 0:
            return
        s = x.abs().sum(dim=0)
        self.abs_sum = s if self.abs_sum is None else self.abs_sum + s
        self.count += x.shape[0]
        if self.sampled_rows < max_rows:
            take = x[: max_rows - self.sampled_rows]
            self.sample.append(take.cpu())
            self.sampled_rows += take.shape[0]

    def mean_abs(self) -> Tensor:
        return self.abs_sum / max(self.count, 1)

    def rows(self) -> Tensor:
        return torch.cat(self.sample)


def collect_stats(model: nn.Module, batches: list[Tensor], linear_names: list[str], expert_names: list[str],
                  max_rows: int = 512) -> dict[str, ActivationStats]:
    """Run the calibration batches; record inputs of the named linears and, for each routed-experts
    module, of every expert's ``gate_up`` (tokens routed to it) and ``down`` (its SwiGLU output).
    Keys: ``name`` for linears, ``name.gate_up.{e}`` / ``name.down.{e}`` for experts."""
    stats: dict[str, ActivationStats] = {}
    modules = dict(model.named_modules())
    handles = []

    def linear_hook(name: str):
        def hook(_mod: nn.Module, args: tuple) -> None:
            stats.setdefault(name, ActivationStats()).add(args[0], max_rows)
        return hook

    def experts_hook(name: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            x, idx = args[0], args[1]
            for e in range(mod.gate_up_proj.shape[0]):
                rows = (idx == e).any(dim=-1)
                if not rows.any():
                    continue
                xe = x[rows].float()
                gate, up = F.linear(xe, mod.gate_up_proj[e].float()).chunk(2, dim=-1)
                stats.setdefault(f"{name}.gate_up.{e}", ActivationStats()).add(xe, max_rows)
                stats.setdefault(f"{name}.down.{e}", ActivationStats()).add(F.silu(gate) * up, max_rows)
        return hook

    for name in linear_names:
        handles.append(modules[name].register_forward_pre_hook(linear_hook(name)))
    for name in expert_names:
        handles.append(modules[name].register_forward_pre_hook(experts_hook(name)))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in batches:
                model(ids[None].to(device))
    finally:
        for h in handles:
            h.remove()
    return stats


def search_scale(weight: Tensor, stats: ActivationStats | None, group_size: int,
                 grid: int = 20) -> Tensor | None:
    """The best per-input-channel scale for int4 quantization of ``weight`` [N, K], or None when plain
    round-to-nearest (alpha = 0) is best or there are no calibration rows for this layer."""
    if stats is None or stats.count == 0:
        return None
    w = weight.detach().float().cpu()
    x = stats.rows()
    ref = x @ w.T
    mean_abs = stats.mean_abs().cpu().clamp(min=1e-5)

    def error(scale: Tensor | None) -> float:
        ws = w if scale is None else w * scale
        q = dequantize_int4(*quantize_int4(ws, group_size))
        if scale is not None:
            q = q / scale
        return (x @ q.T - ref).pow(2).mean().item()

    best, best_err = None, error(None)
    for i in range(1, grid):
        s = mean_abs.pow(i / grid)
        s = s / (s.max() * s.min()).sqrt()
        err = error(s)
        if err < best_err:
            best, best_err = s, err
    return best


__all__ = ["ActivationStats", "collect_stats", "search_scale"]
