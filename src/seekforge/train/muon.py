"""Muon for 2-D *and* stacked 3-D (per-expert) weight matrices.

Muon (Keller Jordan, 2024; "Muon is Scalable for LLM Training", Moonshot 2025) replaces the
update of a hidden weight matrix by the orthogonalised momentum: ``W -= lr * NS(momentum)``, where
``NS`` runs a few Newton-Schulz iterations that push every singular value towards 1.

PyTorch ships ``torch.optim.Muon`` (2.9+). We follow its algorithm *exactly* (same momentum
``lerp``, Nesterov blend, quintic coefficients, ``addmm`` formulation, decoupled weight decay
``W *= 1 - lr*wd`` and the "original" ``sqrt(max(1, rows/cols))`` LR adjustment) — the test suite
checks bit-equality on 2-D weights — but it has two constraints that do not fit seekforge:

1. **2-D only.** DeepSeekMoE experts may be stored stacked as one ``[E, out, in]`` parameter.
   Flattening that to ``[E*out, in]`` would orthogonalise the *concatenation* of the experts, a
   different (and wrong) update: each expert is an independent linear map. We therefore treat the
   leading dimension as a batch and orthogonalise every expert matrix on its own (``baddbmm``):
   identical to giving each expert its own 2-D Muon parameter, in one batched call. A param group
   may also set ``split=k`` to cut each matrix into k row blocks first: seekforge's fused expert
   ``gate_up_proj`` ``[E, 2*I, d]`` holds two independent maps (SwiGLU gate and up), so it is
   orthogonalised as ``[2E, I, d]`` — like the separate ``gate_proj``/``up_proj`` of a dense MLP.
2. **Newton-Schulz always in bfloat16.** Right on GPUs (tensor cores), but on most CPUs bf16
   matmuls are emulated and several times slower than fp32. ``ns_dtype=None`` picks bf16 on CUDA
   and fp32 elsewhere.

Muon is for hidden matrices only; embeddings, the output head, norms and the router stay with
AdamW (see :func:`seekforge.train.optim.build_optimizer`). Under DDP every rank runs the same
Newton-Schulz redundantly (cheap at the scales seekforge targets; ZeRO-style sharded Muon as in
nanochat is future work). Under FSDP2 parameters are sharded DTensors and NS needs whole
matrices, so the trainer refuses ``optimizer=muon`` with FSDP.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Quintic Newton-Schulz coefficients (Keller Jordan's Muon post; the torch.optim.Muon defaults).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def zeropower_newton_schulz(g: Tensor, steps: int = 5,
                            coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                            eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Approximately orthogonalise the last two dims of ``g`` (``[m, n]`` or ``[batch, m, n]``)."""
    if g.ndim not in (2, 3):
        raise ValueError(f"Newton-Schulz needs a 2-D or 3-D tensor, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    if g.ndim == 2:
        x = x.div(x.norm().clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
        for _ in range(steps):
            gram = x @ x.T
            update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, update, x, beta=a)
    else:
        x = x.div(x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps))
        for _ in range(steps):
            gram = x @ x.mT
            update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.baddbmm(x, update, x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr: float, shape: torch.Size) -> float:
    """Keller's scale ``sqrt(max(1, rows/cols))`` so tall and wide matrices get similar update RMS."""
    rows, cols = shape[-2], shape[-1]
    return lr * math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Muon with decoupled weight decay for 2-D and 3-D (batched per leading index) parameters."""

    def __init__(self, params, lr: float = 0.02, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, eps: float = 1e-7,
                 ns_dtype: torch.dtype | None = None) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr, momentum and weight_decay must be >= 0 (got {lr}, {momentum}, "
                             f"{weight_decay})")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, eps=eps, split=1)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError("Muon only takes 2-D or stacked 3-D matrices, got shape "
                                     f"{tuple(p.shape)}")
                if p.shape[-2] % group["split"]:
                    raise ValueError(f"Muon: split={group['split']} does not divide the {p.shape[-2]} rows "
                                     f"of a parameter of shape {tuple(p.shape)}")

    def _ns_dtype(self, p: Tensor) -> torch.dtype:
        if self.ns_dtype is not None:
            return self.ns_dtype
        return torch.bfloat16 if p.device.type == "cuda" else torch.float32

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                update = p.grad.lerp(buf, mom) if group["nesterov"] else buf
                k = group["split"]
                if k > 1:  # [..., k*R, C] -> [batch*k, R, C]: each row block is its own matrix
                    update = update.reshape(-1, p.shape[-2] // k, p.shape[-1])
                ortho = zeropower_newton_schulz(update, group["ns_steps"], eps=group["eps"],
                                                dtype=self._ns_dtype(p))
                p.mul_(1 - lr * wd)
                p.add_(ortho.reshape(p.shape).to(p.dtype), alpha=-adjusted_lr(lr, update.shape))
        return loss
