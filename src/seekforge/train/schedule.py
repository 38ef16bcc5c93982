"""Learning-rate schedules: a multiplier of the peak learning rate as a pure function of the step.

Three shapes, each after a linear warmup from ``1/warmup`` to 1:

* ``cosine``  : cosine decay from 1 to ``min_lr_ratio`` at ``max_steps`` (nanoGPT, Chinchilla).
* ``wsd``     : warmup-stable-decay: hold 1, then decay linearly to ``min_lr_ratio`` over the last
  ``decay_fraction`` of the steps (MiniCPM; DeepSeek-V3 holds its peak LR for most of training
  too, arXiv:2412.19437 §4.2; nanochat's "warmdown"). A stable phase makes it cheap to extend a
  run later: resume from a checkpoint taken before the decay and change ``max_steps``.
* ``constant``: hold 1 after warmup (fine-tuning, debugging).

Why a function and not a ``torch.optim.lr_scheduler`` object: the multiplier then depends on the
step alone, so resuming needs no scheduler state beyond the step (saved anyway), and there is
no "called scheduler.step() before optimizer.step()" ordering footgun. The trainer sets
``group["lr"] = group["peak_lr"] * lr_multiplier(step)`` before every optimizer step.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant")


def lr_multiplier(step: int, *, schedule: str, max_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based: the first update is step 0)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        # (step + 1) so that the very first update is not a wasted zero-LR step.
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, max_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # wsd: the decay occupies the last `decay_fraction` of all steps (but never eats the warmup).
    decay_steps = max(1, round(decay_fraction * max_steps))
    decay_start = max(warmup_steps, max_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, max_steps - decay_start))
    return 1.0 - (1.0 - min_lr_ratio) * progress
