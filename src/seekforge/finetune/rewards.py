"""Reward functions for ``seekforge grpo``: built-ins and user callables named in the config.

A reward function is a plain Python callable, called once per rollout round with keyword
arguments and returning one float per completion (the calling convention of TRL's GRPOTrainer,
so functions written for it work here):

    def my_reward(prompts, completions, completion_ids, **columns) -> list[float]

``prompts``/``completions`` are texts, ``completion_ids`` token-id lists, and every column of the
task item (``answer``, ``numbers``, ``target`` ...) arrives as a list under its own name, plus
``max_completion_tokens``. Name it in the config as ``package.module:function`` (or
``path/to/file.py:function``) or by a built-in name:

=================  ==========================================================================
``answer_match``   1 if the number in the answer equals the ``answer`` column, else 0. The
                   answer is the text inside ``<answer>…</answer>`` when present, else the
                   whole completion; its last number is taken (``1,234``, ``-5``, ``2.50``,
                   ``3/4`` and GSM8K's ``#### 42`` all parse).
``think_format``   1 if the completion is ``<think>…</think>`` then ``<answer>…</answer>``
                   and nothing else (whitespace aside), else 0 (DeepSeek-R1's format reward).
``length_penalty`` DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13):
                   0 up to ``max_completion_tokens - window`` tokens, then linearly down to
                   -1 at ``max_completion_tokens``; ``window`` = ``length_penalty_window``.
``countdown``      1 if the answer is an expression that uses the ``numbers`` column exactly
                   once each and equals ``target`` (checked by an AST walk, never ``eval``).
=================  ==========================================================================
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RewardFn = Callable[..., Sequence[float]]

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
# A number: optional sign, digits with optional thousands separators, optional decimals, or a fraction.
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?")


def answer_text(completion: str) -> str:
    """The text of the last ``<answer>…</answer>``, or the whole completion when there is none."""
    found = _ANSWER.findall(completion)
    return found[-1] if found else completion


def extract_number(text: str) -> float | None:
    """The last number written in ``text`` (separators removed, fractions divided), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    s = found[-1].replace(",", "").replace(" ", "")
    if "/" in s:
        num, den = s.split("/")
        return float(num) / float(den) if float(den) != 0 else None
    return float(s)


def numbers_equal(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def answer_match(completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list[float]:
    out = []
    for text, truth in zip(completions, answer, strict=True):
        want = truth if isinstance(truth, (int, float)) else extract_number(str(truth))
        out.append(1.0 if numbers_equal(extract_number(answer_text(text)), want) else 0.0)
    return out


def think_format(completions: Sequence[str], **_: Any) -> list[float]:
    return [1.0 if _FORMAT.fullmatch(text) else 0.0 for text in completions]


def length_penalty(completion_ids: Sequence[Sequence[int]], max_completion_tokens: int,
                   length_penalty_window: int | None = None, **_: Any) -> list[float]:
    limit = max_completion_tokens
    window = length_penalty_window if length_penalty_window else max(1, limit // 4)
    free = limit - window
    return [0.0 if len(ids) <= free else max(-1.0, (free - len(ids)) / window) for ids in completion_ids]


def countdown(completions: Sequence[str], numbers: Sequence[Sequence[int]], target: Sequence[int],
              **_: Any) -> list[float]:
    from seekforge.finetune.rl_tasks import check_countdown

    return [1.0 if check_countdown(answer_text(text), list(nums), int(t)) else 0.0
            for text, nums, t in zip(completions, numbers, target, strict=True)]


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "answer_match": answer_match,
    "think_format": think_format,
    "length_penalty": length_penalty,
    "countdown": countdown,
}


@dataclass
class NamedReward:
    name: str  # as written in the config (metrics are logged under it)
    fn: RewardFn
    weight: float = 1.0


def resolve_reward(spec: str) -> RewardFn:
    """A built-in name, ``module:function`` or ``file.py:function`` -> the callable."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if ":" not in spec:
        raise ValueError(f"rewards: {spec!r} is not a built-in reward ({', '.join(BUILTIN_REWARDS)}) nor "
                         "'module:function' / 'file.py:function'")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"rewards: {spec!r}: {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"seekforge_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"rewards: {spec!r}: cannot import {where} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"rewards: {spec!r}: {where} has no function {name!r}")
    return fn


def resolve_rewards(specs: Sequence[str], weights: Sequence[float] | None) -> list[NamedReward]:
    if not specs:
        raise ValueError(f"rewards: at least one reward function is needed (built-ins: "
                         f"{', '.join(BUILTIN_REWARDS)})")
    if weights and len(weights) != len(specs):
        raise ValueError(f"reward_weights: {len(weights)} weights for {len(specs)} rewards")
    w = list(weights) if weights else [1.0] * len(specs)
    return [NamedReward(s, resolve_reward(s), float(x)) for s, x in zip(specs, w)]


class RewardError(RuntimeError):
    """A reward function raised, returned the wrong count, or a non-finite value."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"reward function {name}: {message}")
        self.name = name


def call_reward(reward: NamedReward, kwargs: dict[str, Any], n: int) -> list[float]:
    """Call one reward function; every way it can fail becomes a :class:`RewardError` naming it."""
    try:
        values = reward.fn(**kwargs)
    except Exception as e:
        raise RewardError(reward.name, f"raised {type(e).__name__}: {e}") from e
    try:
        values = [float("nan") if v is None else float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise RewardError(reward.name, f"must return a list of numbers ({e})") from None
    if len(values) != n:
        raise RewardError(reward.name, f"returned {len(values)} rewards for {n} completions")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise RewardError(reward.name, f"returned a non-finite reward ({values[bad[0]]}) for completion "
                          f"{bad[0]} (and {len(bad) - 1} more)")
    return values


__all__ = ["BUILTIN_REWARDS", "NamedReward", "RewardError", "answer_match", "think_format", "length_penalty",
           "countdown", "extract_number", "answer_text", "resolve_reward", "resolve_rewards", "call_reward"]
