"""Preference losses on (chosen, rejected) pairs: DPO, IPO, SimPO, ORPO.

Every loss is a function of per-sequence log-probabilities of the two responses (summed over the
response tokens, with the token counts to average them), so it is independent of models and data.
With ``h`` a chosen-minus-rejected score and ``β = beta``:

* ``dpo``   (Rafailov et al. 2023, arXiv:2305.18290) ``h = (log π_c − log ref_c) − (log π_r − log ref_r)``
            on summed log-probs; ``L = −(1−ε)·log σ(βh) − ε·log σ(−βh)`` with label smoothing ``ε``
            (conservative DPO: the label is flipped with probability ε).
* ``ipo``   (Azar et al. 2023, arXiv:2310.12036, eq. 17) ``L = (h − 1/(2β))²`` with each log-ratio
            averaged over its response's tokens (the IPO authors' normalisation, as TRL does).
* ``simpo`` (Meng et al. 2024, arXiv:2405.14734) reference-free: ``h = mean log π_c − mean log π_r − γ/β``
            on per-token *averaged* log-probs, ``L`` as for DPO (with ε) — γ is the target margin.
* ``orpo``  (Hong et al. 2024, arXiv:2403.07691) reference-free: ``L = NLL(chosen) − β·log σ(log odds)``
            with ``log odds = log(p_c/(1−p_c)) − log(p_r/(1−p_r))`` and ``p`` the per-token average
            probability ``exp(mean log π)`` of the answer; the NLL is the mean over every token of the
            chosen rows, prompt included (as the authors' code and TRL compute it).

Rewards (logged as ``rewards_chosen`` / ``rewards_rejected``): ``β·(log π − log ref)`` on summed
log-probs for dpo/ipo, ``β·mean log π`` for simpo/orpo — the definitions TRL logs, so the numbers
compare with TRL runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100
LOSSES = ("dpo", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")


@dataclass
class SequenceLogps:
    """Per-sequence sums of the response tokens' log-probabilities, and how many tokens there were."""

    total: Tensor  # [N] float32, differentiable
    tokens: Tensor  # [N] float32

    @property
    def mean(self) -> Tensor:
        return self.total / self.tokens.clamp(min=1.0)


def sequence_logps(logits: Tensor, labels: Tensor) -> SequenceLogps:
    """Log-probability of each row's labelled tokens (HF shift: logits[t] predicts labels[t+1])."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return SequenceLogps((picked * mask).sum(-1), mask.sum(-1).float())


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, switching formulas at −ln 2 to avoid cancellation (Mächler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@dataclass
class PreferenceSettings:
    loss: str = "dpo"  # dpo | ipo | simpo | orpo
    beta: float = 0.1
    label_smoothing: float = 0.0  # dpo/simpo: probability that a pair's label is flipped
    simpo_gamma: float = 0.5  # simpo: target reward margin γ (the logit is shifted by γ/β)


@dataclass
class PreferenceOutput:
    loss: Tensor  # scalar: mean over pairs (+ ORPO's NLL term)
    chosen_rewards: Tensor  # [B], detached
    rejected_rewards: Tensor  # [B], detached
    nll: Tensor | None = None  # ORPO's SFT term, detached


def _smoothed_sigmoid_loss(logits: Tensor, beta: float, eps: float) -> Tensor:
    return -(1.0 - eps) * F.logsigmoid(beta * logits) - eps * F.logsigmoid(-beta * logits)


def preference_loss(
    s: PreferenceSettings,
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    chosen_rows: SequenceLogps | None = None,
) -> PreferenceOutput:
    """The pair loss ``s.loss`` for a batch of pairs (see the module docstring for the formulas).

    ``ref_*`` are the reference model's summed log-probs of the same responses (dpo/ipo only);
    ``chosen_rows`` the log-probs of the chosen rows' every token, prompt included (orpo's NLL).
    """
    beta = s.beta
    if s.loss in ("dpo", "ipo"):
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"loss {s.loss!r} needs the reference log-probs")
        chosen_ratio = chosen.total - ref_chosen
        rejected_ratio = rejected.total - ref_rejected
        if s.loss == "dpo":
            losses = _smoothed_sigmoid_loss(chosen_ratio - rejected_ratio, beta, s.label_smoothing)
        else:
            h = chosen_ratio / chosen.tokens.clamp(min=1.0) - rejected_ratio / rejected.tokens.clamp(min=1.0)
            losses = (h - 1.0 / (2.0 * beta)) ** 2
        return PreferenceOutput(losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
    avg_c, avg_r = chosen.mean, rejected.mean
    rewards = (beta * avg_c.detach(), beta * avg_r.detach())
    if s.loss == "simpo":
        losses = _smoothed_sigmoid_loss(avg_c - avg_r - s.simpo_gamma / beta, beta, s.label_smoothing)
        return PreferenceOutput(losses.mean(), *rewards)
    if s.loss == "orpo":
        log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
        if chosen_rows is None:
            raise ValueError("loss 'orpo' needs the chosen rows' log-probs (its NLL term)")
        nll = -chosen_rows.total.sum() / chosen_rows.tokens.sum().clamp(min=1.0)
        loss = nll - beta * F.logsigmoid(log_odds).mean()
        return PreferenceOutput(loss, *rewards, nll=nll.detach())
    raise ValueError(f"loss: {s.loss!r} is not one of {', '.join(LOSSES)}")


def reward_metrics(out: PreferenceOutput) -> dict[str, Tensor]:
    """Batch means of the rewards, their margin and how often chosen out-scores rejected."""
    margin = out.chosen_rewards - out.rejected_rewards
    return {
        "rewards_chosen": out.chosen_rewards.mean(),
        "rewards_rejected": out.rejected_rewards.mean(),
        "rewards_margin": margin.mean(),
        "rewards_accuracy": (margin > 0).float().mean(),
    }
