"""What the model's forward passes return."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """``logits`` [B, T, V]; ``loss`` = main CE + mtp_loss_weight * mean MTP CE + balance loss;
    ``losses`` detached parts; ``expert_loads`` [n_moe_layers, E] tokens per expert (main MoE layers,
    then MTP layers; zero rows for MTP layers that did not run); ``hidden`` [B, T, d] from
    ``forward_cached`` (after the final norm; input of MTP depth 1)."""

    logits: Tensor
    loss: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)
    expert_loads: Tensor | None = None
    hidden: Tensor | None = None
