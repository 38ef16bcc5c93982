"""Distillation losses and teacher-student agreement, independent of models and data loading.

Logit distillation (Hinton et al.), per trained token position:

    L = alpha * CE(student, label) + (1 - alpha) * T^2 * KL(p_T || q_T)
    p_T = softmax(teacher_logits / T),   q_T = softmax(student_logits / T)

T^2 keeps the gradient scale of the soft term independent of T. With a top-k teacher (cached
to disk) p_T is renormalised over the teacher's k best tokens ("forward KL on the teacher's
support"); the student's log-probabilities stay normalised over the full vocabulary, so mass the
student puts elsewhere is still penalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def shift_mask(labels: Tensor, segment_ids: Tensor | None = None) -> Tensor:
    """[B, T] bool: positions t whose next-token target labels[t+1] counts (HF shift convention)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    if segment_ids is not None:
        keep[:, :-1] &= segment_ids[:, 1:] == segment_ids[:, :-1]
    return keep


def kl_full(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(p_T || q_T) per row, [N]; both [N, V] (fp32 inside)."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(dim=-1)


def kl_topk(student_logits: Tensor, topk_ids: Tensor, topk_logits: Tensor, temperature: float) -> Tensor:
    """KL over the teacher's top-k tokens, [N]; ``topk_*`` [N, k] (raw teacher logits)."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, topk_ids.long())
    t = F.log_softmax(topk_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(dim=-1)


def distill_loss(ce: Tensor, kl: Tensor, alpha: float, temperature: float) -> Tensor:
    """alpha * CE + (1 - alpha) * T^2 * mean KL."""
    return alpha * ce + (1.0 - alpha) * temperature**2 * kl.mean()


def agreement_stats(student_logits: Tensor, teacher_logits: Tensor) -> tuple[int, float, int]:
    """(top-1 matches, summed KL(teacher || student) at T=1, positions) over [N, V] rows."""
    match = int((student_logits.argmax(-1) == teacher_logits.argmax(-1)).sum())
    kl = float(kl_full(student_logits, teacher_logits, 1.0).sum())
    return match, kl, student_logits.shape[0]
