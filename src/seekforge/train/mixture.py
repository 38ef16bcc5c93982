"""Data mixtures: several token-shard sources with weights, fixed or changing during training.

``data.train`` may name several shard folders (whole corpora, or the domains of one corpus), each
with a weight::

    data:
      train:
        wiki:  {path: shards/wiki,  weight: 0.7}
        poems: {path: shards/poems, weight: 0.3}
      schedule: {kind: loss, step_size: 10, floor: 0.1}

The weights are the share of training *rows* (so of tokens: every row is ``seq_len`` tokens) each
source gets: a small source with a large weight is repeated (more epochs), a large one with a small
weight is read partially. This module holds the parts that do not touch tensors:

* :func:`parse_sources` / :func:`parse_schedule`: the config blocks -> named records, with errors
  that name the key and the valid values;
* weight schedules: :class:`FixedWeights`, :class:`PiecewiseWeights` (by training progress, as a
  step function or linearly interpolated: e.g. uniform early, then the target mix) and
  :class:`LossDrivenWeights` (online DoReMi-style re-weighting from per-source validation loss);
* :func:`allocate_rows`: a step's weights -> whole rows per source, carrying the rounding
  remainder to the next step so that the realised mixture follows the weights to within one row
  per source over any span of steps (a per-row random draw would only match them on average).

Everything here is a pure function of its inputs and a small state (carried remainders, the
loss-driven weights, the reference losses) that is saved in checkpoints, so resuming is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from seekforge.config import ConfigError

SOURCE_KEYS = ("path", "weight", "val")
SCHEDULE_KINDS = ("fixed", "piecewise", "loss")


class Source(NamedTuple):
    """One entry of a ``data.train`` mixture."""

    name: str
    path: str  # token-shard folder (its `train` split is sampled)
    weight: float  # target share, before normalisation
    val: str | None  # shard folder for this source's validation; None = the `val` split of `path`


def is_mixture(train: Any) -> bool:
    """Whether ``data.train`` is a mapping of named sources (not a path or a list of raw files)."""
    return isinstance(train, dict)


def parse_sources(train: dict[str, Any]) -> list[Source]:
    """``data.train`` as a mixture -> sources, checking names, keys and weights."""
    if not train:
        raise ConfigError("data.train: an empty mapping; give at least one source, e.g. "
                          "data.train.wiki.path=shards/wiki")
    sources = []
    for name, spec in train.items():
        key = f"data.train.{name}"
        if not isinstance(name, str) or not name or any(c in name for c in "/. =,"):
            raise ConfigError(f"data.train: source name {name!r} must be a non-empty word without '/', '.', "
                              "'=', ',' or spaces (it names metrics such as val_bpb/NAME)")
        if isinstance(spec, str):  # shorthand: `name: path` (weight 1)
            spec = {"path": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}: expected a mapping with keys {', '.join(SOURCE_KEYS)} (e.g. "
                              f"{{path: shards/{name}, weight: 0.5}}), got {spec!r}")
        unknown = sorted(set(spec) - set(SOURCE_KEYS))
        if unknown:
            raise ConfigError(f"{key}: unknown key {unknown[0]!r}; valid keys: {', '.join(SOURCE_KEYS)}")
        path = spec.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{key}.path: required, a token-shard folder from `seekforge data tokenize` "
                              f"(got {path!r})")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"{key}.weight: expected a finite number >= 0, got {weight!r}")
        if weight < 0:
            raise ConfigError(f"{key}.weight: must be >= 0 (got {weight}); weights are relative shares "
                              "of the training rows")
        val = spec.get("val")
        if val is not None and not isinstance(val, str):
            raise ConfigError(f"{key}.val: expected a token-shard folder or null, got {val!r}")
        sources.append(Source(name, path, float(weight), val))
    if sum(s.weight for s in sources) <= 0:
        raise ConfigError("data.train: the source weights sum to 0 ("
                          + ", ".join(f"{s.name}: {s.weight:g}" for s in sources)
                          + "); give at least one source a weight > 0")
    return sources


def normalise(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


# ---------------------------------------------------------------------------------------------
# schedules


class Point(NamedTuple):
    """A piecewise schedule's weights from training progress ``at`` (fraction of max_steps) on."""

    at: float
    weights: np.ndarray  # normalised, in source order


@dataclass
class ScheduleSpec:
    """The validated ``data.schedule`` block."""

    kind: str  # fixed | piecewise | loss
    points: list[Point]
    interpolate: bool
    step_size: float
    floor: float


def _point_weights(raw: Any, key: str, names: list[str], target: np.ndarray) -> np.ndarray:
    if raw is None or raw == "target":
        return target
    if raw == "uniform":
        return np.full(len(names), 1.0 / len(names))
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping of source weights, 'uniform' or 'target', got {raw!r}")
    out = np.zeros(len(names))
    for name, w in raw.items():
        if name not in names:
            raise ConfigError(f"{key}: unknown source {name!r}; the sources in data.train are: "
                              f"{', '.join(names)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{key}.{name}: expected a finite number >= 0, got {w!r}")
        out[names.index(name)] = float(w)
    if out.sum() <= 0:
        raise ConfigError(f"{key}: the weights sum to 0; give at least one source a weight > 0")
    return normalise(out)


def parse_schedule(schedule: Any, sources: list[Source] | None) -> ScheduleSpec:
    """``data.schedule`` (a ScheduleConfig) checked against the sources of ``data.train``."""
    kind = schedule.kind
    if kind != "fixed" and sources is None:
        raise ConfigError(f"data.schedule.kind: {kind!r} needs a mixture in data.train (named sources with "
                          "weights, e.g. data.train.wiki.path=...); with a single source use 'fixed'")
    if kind != "piecewise" and schedule.points:
        raise ConfigError(f"data.schedule.points: only used with kind 'piecewise' (kind is {kind!r})")
    if schedule.step_size < 0 or not math.isfinite(schedule.step_size):
        raise ConfigError(f"data.schedule.step_size: must be a finite number >= 0 (got {schedule.step_size})")
    if not 0.0 <= schedule.floor < 1.0:
        raise ConfigError(f"data.schedule.floor: must be in [0, 1) (got {schedule.floor}): the fraction "
                          "of the uniform share 1/k every source keeps")
    points: list[Point] = []
    if kind == "piecewise":
        assert sources is not None
        names = [s.name for s in sources]
        target = normalise(np.array([s.weight for s in sources]))
        if not schedule.points:
            raise ConfigError("data.schedule.points: kind 'piecewise' needs points, e.g. "
                              "[{at: 0, weights: uniform}, {at: 0.3, weights: target}]")
        for i, raw in enumerate(schedule.points):
            key = f"data.schedule.points[{i}]"
            if not isinstance(raw, dict):
                raise ConfigError(f"{key}: expected a mapping {{at: PROGRESS, weights: ...}}, got {raw!r}")
            unknown = sorted(set(raw) - {"at", "weights"})
            if unknown:
                raise ConfigError(f"{key}: unknown key {unknown[0]!r}; valid keys: at, weights")
            at = raw.get("at")
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0.0 <= at <= 1.0:
                raise ConfigError(f"{key}.at: expected the training progress in [0, 1] (fraction of "
                                  f"max_steps), got {at!r}")
            if points and at <= points[-1].at:
                raise ConfigError(f"{key}.at: {at} must be larger than the previous point's {points[-1].at}")
            weights = _point_weights(raw.get("weights"), f"{key}.weights", names, target)
            points.append(Point(float(at), weights))
    return ScheduleSpec(kind, points, schedule.interpolate, float(schedule.step_size), float(schedule.floor))


class FixedWeights:
    """The ``data.train`` weights throughout."""

    uses_eval = False  # whether observe() needs the per-source validation bits/byte

    def __init__(self, target: np.ndarray) -> None:
        self.target = normalise(np.asarray(target, dtype=np.float64))

    def weights(self, progress: float) -> np.ndarray:
        return self.target

    def observe(self, val_bpb: np.ndarray) -> None:
        pass

    @property
    def needs_reference(self) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PiecewiseWeights(FixedWeights):
    """Weights by training progress: each point's from its ``at`` on (or linear between points)."""

    def __init__(self, points: list[Point], interpolate: bool) -> None:
        super().__init__(points[0].weights)
        self.points, self.interpolate = points, interpolate

    def weights(self, progress: float) -> np.ndarray:
        pts = self.points
        i = max(0, int(np.searchsorted([p.at for p in pts], progress, side="right")) - 1)
        if not self.interpolate or i + 1 >= len(pts) or progress < pts[0].at:
            return pts[i].weights
        a, b = pts[i], pts[i + 1]
        t = (progress - a.at) / (b.at - a.at)
        return normalise((1 - t) * a.weights + t * b.weights)


class LossDrivenWeights(FixedWeights):
    """Online DoReMi-style weights (Xie et al. 2023, arXiv:2305.10429, Alg. 1, without a proxy model).

    At every evaluation each source's signal is the fraction of its reference validation bits/byte
    still left, ``r_i = bpb_i / bpb_i(reference)`` (the reference: the untrained model, measured
    before the first step): the source that improved least has the largest ``r_i``. Exponentiated
    gradient ascent on it, ``alpha_i <- alpha_i · exp(step_size · r_i)`` then normalised, starting
    from the ``data.train`` weights; the weights used are DoReMi's smoothing
    ``(1 - floor) · alpha + floor / k``, so every source keeps at least ``floor / k``.
    """

    uses_eval = True

    def __init__(self, target: np.ndarray, step_size: float, floor: float) -> None:
        super().__init__(target)
        self.step_size, self.floor = step_size, floor
        self.alpha = self.target.copy()
        self.reference: np.ndarray | None = None

    def weights(self, progress: float) -> np.ndarray:
        k = len(self.alpha)
        return (1 - self.floor) * self.alpha + self.floor / k

    @property
    def needs_reference(self) -> bool:
        return self.reference is None

    def observe(self, val_bpb: np.ndarray) -> None:
        val_bpb = np.asarray(val_bpb, dtype=np.float64)
        if self.reference is None:
            self.reference = val_bpb.copy()
            return
        remaining = val_bpb / self.reference
        # Subtracting the max changes nothing after normalisation and keeps exp() from overflowing.
        self.alpha = normalise(self.alpha * np.exp(self.step_size * (remaining - remaining.max())))

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha.tolist(),
                "reference": None if self.reference is None else self.reference.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha = np.array(state["alpha"], dtype=np.float64)
        ref = state.get("reference")
        self.reference = None if ref is None else np.array(ref, dtype=np.float64)


def build_schedule(spec: ScheduleSpec, sources: list[Source]) -> FixedWeights:
    target = np.array([s.weight for s in sources], dtype=np.float64)
    if spec.kind == "piecewise":
        return PiecewiseWeights(spec.points, spec.interpolate)
    if spec.kind == "loss":
        return LossDrivenWeights(target, spec.step_size, spec.floor)
    return FixedWeights(target)


# ---------------------------------------------------------------------------------------------
# rows per source


def allocate_rows(weights: np.ndarray, rows: int, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` among the sources by ``weights``; returns (rows per source, new carry).

    Each source is owed ``carry + weight · rows``; it gets the whole part, and the rows left over go
    to the largest remainders (ties: the earlier source). What was owed but not given is carried,
    so over many steps every source's total stays within one row of its weights' sum.
    """
    owed = carry + weights * rows
    counts = np.maximum(np.floor(owed), 0).astype(np.int64)
    while counts.sum() > rows:  # rounding after negative carries: take from the most over-served
        i = int(np.argmin(np.where(counts > 0, owed - counts, np.inf)))
        counts[i] -= 1
    left = rows - int(counts.sum())
    if left:  # a source whose weight is now 0 gets nothing more, whatever it is still owed
        order = np.argsort(-np.where(weights > 0, owed - counts, -np.inf), kind="stable")
        counts[order[:left]] += 1
    return counts, owed - counts


__all__ = ["Source", "ScheduleSpec", "Point", "SOURCE_KEYS", "SCHEDULE_KINDS", "is_mixture", "parse_sources",
           "parse_schedule", "FixedWeights", "PiecewiseWeights", "LossDrivenWeights", "build_schedule",
           "allocate_rows"]
