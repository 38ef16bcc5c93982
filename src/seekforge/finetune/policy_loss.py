"""GRPO's clipped policy-ratio loss on sampled completions (the loop around it is :mod:`.grpo`).

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, eq. 3), as DeepSeek-R1 trains with it: for
completion token t of sequence i with advantage A_i (its reward normalised within its prompt's group),

    ratio = exp(log π(t) − log π_old(t))
    L(t)  = −min(ratio·A_i, clip(ratio, 1 − ε_low, 1 + ε_high)·A_i) + β·KL(t)
    KL(t) = exp(log ref(t) − log π(t)) − (log ref(t) − log π(t)) − 1

(the KL is Schulman's unbiased, always-positive "k3" estimator of KL(π ‖ ref); with ``kl_times_ratio``
it is weighted by ``ratio``, correcting for the tokens having been sampled from π_old). ``ε_high > ε_low`` is
DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476). How the per-token losses are averaged
(``aggregation``):

* ``grpo``  mean over each sequence's tokens, then over sequences (DeepSeekMath);
* ``bnpo``  mean over every completion token of the batch;
* ``dapo``  sum over the tokens divided by ``num_items`` — the completion tokens of the whole
            generation batch, so long completions weigh as much per token as short ones (DAPO's
            token-level loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

AGGREGATIONS = ("grpo", "bnpo", "dapo")


@dataclass
class PolicyLossSettings:
    aggregation: str = "grpo"  # grpo | bnpo | dapo (see the module docstring)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2  # > epsilon_low: DAPO's clip-higher
    beta: float = 0.0  # KL(π ‖ ref) coefficient; 0 = no reference model
    kl_times_ratio: bool = False  # weight each token's KL by its ratio (samples came from π_old, not π)


@dataclass
class PolicyLossOutput:
    loss: Tensor  # scalar, differentiable
    kl: Tensor | None  # mean per-token KL over the completion tokens (detached), when beta > 0
    clipped: Tensor  # share of completion tokens whose ratio was clipped (detached)


def completion_logps(logits: Tensor, completion_ids: Tensor) -> Tensor:
    """[B, C] log-probs of the completion tokens, from logits [B, P + C, V] over prompt + completion."""
    C = completion_ids.shape[1]
    logp = torch.log_softmax(logits[:, -C - 1 : -1].float(), dim=-1)
    return logp.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def policy_loss(
    s: PolicyLossSettings,
    logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    num_items: Tensor | float | None = None,
) -> PolicyLossOutput:
    """The clipped policy-ratio loss; all per-token tensors are [B, C], ``advantages`` [B].

    ``old_logps`` default to ``logps`` detached (one update per rollout: the ratio is 1 but its
    gradient is the policy gradient); ``ref_logps`` are needed when ``s.beta > 0``; ``num_items``
    (dapo) defaults to this batch's completion tokens.
    """
    if s.aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: {s.aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages.unsqueeze(1)
    clipped_ratio = torch.clamp(ratio, 1.0 - s.epsilon_low, 1.0 + s.epsilon_high)
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)
    kl = None
    if s.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs (ref_logps)")
        diff = ref_logps - logps
        per_token_kl = torch.exp(diff) - diff - 1.0
        if s.kl_times_ratio:  # importance-sampling correction of the estimator (TRL's use_bias_correction_kl)
            per_token_kl = per_token_kl * ratio
        per_token = per_token + s.beta * per_token_kl
        kl = ((per_token_kl * mask).sum() / mask.sum().clamp(min=1.0)).detach()
    if s.aggregation == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif s.aggregation == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        total = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=logps.dtype)
        loss = (per_token * mask).sum() / total.clamp(min=1.0)
    was_clipped = ((ratio < 1.0 - s.epsilon_low) & (adv < 0)) | ((ratio > 1.0 + s.epsilon_high) & (adv > 0))
    clipped = ((was_clipped.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1.0)).detach()
    return PolicyLossOutput(loss, kl, clipped)
