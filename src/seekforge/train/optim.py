"""Optimizers: AdamW, or Muon for hidden matrices + AdamW for everything else.

Parameter roles (by name, as in the state dict of transformers' ``DeepseekV3ForCausalLM``):

========================  ==========================================  =================  =====
role                      names                                       optimizer (muon)   decay
========================  ==========================================  =================  =====
embedding                 ``*embed_tokens*``                          AdamW              yes
head                      ``lm_head``, ``*shared_head.head*``         AdamW              yes
router                    ``*.mlp.gate.weight``                       AdamW              yes
vector (norms, biases)    any 1-D parameter                           AdamW              no
matrix                    every other 2-D / 3-D (stacked experts)     Muon               yes
========================  ==========================================  =================  =====

Stacked experts under Muon: each expert matrix is orthogonalised on its own, and the fused
``gate_up_proj`` as separate gate and up blocks (see :mod:`seekforge.train.muon`).

Why these roles: Muon's orthogonalised update assumes a linear map between hidden spaces. The
embedding is a lookup table (rows updated independently), the head maps to logits whose scale
matters, and the router's few rows are scores fed to a sigmoid/top-k, so Muon's "all singular
values to 1" update is the wrong geometry for them (Keller Jordan's and Moonshot's recipes both
keep them on AdamW). Weight decay only on tensors with >= 2 dims (nanoGPT convention): decaying
RMSNorm gains towards 0 would fight the normalisation.

AdamW defaults are DeepSeek-V3's (technical report, arXiv:2412.19437, §4.2): betas (0.9, 0.95),
weight decay 0.1; eps 1e-8 is PyTorch's default.
Each param group stores ``peak_lr``; the trainer multiplies it by the schedule every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from seekforge.train.muon import Muon

ROLES = ("embedding", "head", "router", "vector", "matrix")


def param_role(name: str, p: torch.Tensor) -> str:
    """The role of a parameter (see the module docstring) from its qualified name and shape."""
    if p.ndim < 2:
        return "vector"
    if "embed_tokens" in name:
        return "embedding"
    if name.endswith("lm_head.weight") or "shared_head.head" in name:
        return "head"
    if name.endswith("mlp.gate.weight"):  # the router; not gate_proj (an expert's SwiGLU gate)
        return "router"
    return "matrix"


@dataclass
class OptimizerSpec:
    kind: str = "adamw"  # adamw | muon
    lr: float = 3e-4  # AdamW LR (for every parameter with adamw; the non-matrix ones with muon)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


class MultiOptimizer:
    """Steps several optimizers as one (Muon + AdamW). Quacks like ``torch.optim.Optimizer`` for the
    parts the trainer uses: ``param_groups``, ``step``, ``zero_grad``, ``state_dict``."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        parts = state["optimizers"]
        if len(parts) != len(self.optimizers):
            raise ValueError(f"optimizer state has {len(parts)} parts, this optimizer {len(self.optimizers)} "
                             "(was the checkpoint written with a different `optimizer` setting?)")
        for opt, sd in zip(self.optimizers, parts):
            opt.load_state_dict(sd)


def group_parameters(named: Iterable[tuple[str, nn.Parameter]]) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split trainable parameters by role (frozen ones are dropped)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {r: [] for r in ROLES}
    for name, p in named:
        if p.requires_grad:
            groups[param_role(name, p)].append((name, p))
    return groups


def _adamw(groups: list[dict], spec: OptimizerSpec, device: torch.device) -> torch.optim.AdamW:
    # fused on CUDA (one kernel for all params); foreach elsewhere. Both are deterministic on CPU.
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, fused=fused,
                             foreach=None if fused else True)


def build_optimizer(named: Iterable[tuple[str, nn.Parameter]], spec: OptimizerSpec,
                    device: torch.device) -> torch.optim.Optimizer | MultiOptimizer:
    """AdamW over everything, or Muon over the ``matrix`` role + AdamW over the rest."""
    if spec.kind not in ("adamw", "muon"):
        raise ValueError(f"unknown optimizer {spec.kind!r}; expected 'adamw' or 'muon'")
    groups = group_parameters(named)
    adam_decay = [p for r in ("embedding", "head", "router") for _, p in groups[r]]
    adam_plain = [p for _, p in groups["vector"]]
    matrices = [p for _, p in groups["matrix"]]
    if spec.kind == "adamw":
        adam_decay += matrices
    adam_groups = [
        {"params": adam_decay, "weight_decay": spec.weight_decay, "peak_lr": spec.lr, "role": "adamw_decay"},
        {"params": adam_plain, "weight_decay": 0.0, "peak_lr": spec.lr, "role": "adamw_no_decay"},
    ]
    adam_groups = [g for g in adam_groups if g["params"]]
    if not adam_groups and not (spec.kind == "muon" and matrices):
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    adam = _adamw(adam_groups, spec, device) if adam_groups else None
    if spec.kind == "adamw":
        return adam
    # Fused SwiGLU expert weights [E, 2*I, d] are two maps per expert: orthogonalise gate and up apart.
    fused = [p for n, p in groups["matrix"] if n.endswith("experts.gate_up_proj")]
    plain = [p for n, p in groups["matrix"] if not n.endswith("experts.gate_up_proj")]
    muon_groups = [{"params": plain, "split": 1}, {"params": fused, "split": 2}]
    muon_groups = [dict(g, peak_lr=spec.muon_lr, role="muon") for g in muon_groups if g["params"]]
    muon = Muon(muon_groups, lr=spec.muon_lr, weight_decay=spec.weight_decay,
                momentum=spec.muon_momentum) if muon_groups else None
    parts = [o for o in (muon, adam) if o is not None]
    return parts[0] if len(parts) == 1 else MultiOptimizer(parts)


def set_lr(optimizer: torch.optim.Optimizer | MultiOptimizer, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * multiplier
