"""Score multiple-choice subjects and aggregate them like lm-evaluation-harness.

Each choice is the continuation ``" " + letter`` after the subject's prompt; the prediction is the
choice with the highest summed log-likelihood (ties go to the first, as ``numpy.argmax``). ``acc``
of a category or a task is the micro average over its questions (lm-eval's ``weight_by_size``
groups), not the mean of subject accuracies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from seekforge.eval.scoring import Scorer, Tokens
from seekforge.eval.tasks import LETTERS, Subject


@dataclass
class Sample:
    """One scored question (a line of ``samples/TASK.jsonl``)."""

    subject: str
    index: int
    gold: str
    pred: str
    loglikelihoods: list[float]
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "index": self.index,
            "gold": self.gold,
            "pred": self.pred,
            "loglikelihoods": self.loglikelihoods,
            "truncated": self.truncated,
        }


def argmax_first(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


CALL_BATCHES = 8  # batches per scorer call: room to group questions of similar length


def score_subjects(
    subjects: list[Subject],
    tokens: Tokens,
    scorer: Scorer,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[Sample]:
    """All questions of all subjects, subject by subject (so a batch shares its few-shot prefix).

    Each scorer call gets up to ``CALL_BATCHES`` batches' worth of questions, which it sorts by length
    into batches of at most ``batch_size`` rows; the progress bar moves once per call.
    """
    samples: list[Sample] = []
    per_call = batch_size * CALL_BATCHES
    for subject in subjects:
        qs = subject.questions
        for start in range(0, len(qs), per_call):
            chunk = qs[start : start + per_call]
            pairs, spans = [], []
            for q in chunk:
                context = subject.context(q)
                first = len(pairs)
                pairs += [
                    tokens.pair(context, " " + LETTERS[i], scorer.window) for i in range(len(q.choices))
                ]
                spans.append((first, len(pairs)))
            scores = scorer.score(pairs)
            for q, (a, b) in zip(chunk, spans):
                lls = [sum(s) for s in scores[a:b]]
                samples.append(
                    Sample(
                        subject.name,
                        q.index,
                        LETTERS[q.gold],
                        LETTERS[argmax_first(lls)],
                        lls,
                        any(p.truncated for p in pairs[a:b]),
                    )
                )
            if progress is not None:
                progress(len(chunk))
    return samples


def _acc(samples: list[Sample]) -> dict[str, Any]:
    n = len(samples)
    return {"acc": sum(s.pred == s.gold for s in samples) / n if n else 0.0, "n": n}


def aggregate(subjects: list[Subject], samples: list[Sample], shots: int) -> dict[str, Any]:
    """results.json's entry for one task: overall, per category and per subject (micro averages)."""
    by_subject: dict[str, list[Sample]] = {}
    for s in samples:
        by_subject.setdefault(s.subject, []).append(s)
    categories: dict[str, list[Sample]] = {}
    for subj in subjects:
        for cat in subj.categories:
            categories.setdefault(cat, []).extend(by_subject.get(subj.name, []))
    return {
        **_acc(samples),
        "shots": shots,
        "categories": {c: _acc(v) for c, v in sorted(categories.items())},
        "subjects": {s.name: _acc(by_subject.get(s.name, [])) for s in subjects},
        "truncated": sum(s.truncated for s in samples),
    }
