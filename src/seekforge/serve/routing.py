"""Model versions and routes of a multi-version server: the ``--model`` / ``--route`` / ``--shadow`` specs.

A *version* is one loaded checkpoint with its own engine (``NAME=DIR``, ``NAME=BASE+ADAPTER`` for a
PEFT/LoRA adapter from ``seekforge sft``, or a ``seekforge quantize`` output directory, which
``seekforge.model.load_model`` recognises by itself). A *route* is a name clients send in ``"model"``
that splits traffic between versions by weight. The split is sticky: the version is a pure function
of (route, user key), so a user keeps seeing one version as long as the weights do not change.

Stickiness uses a hash, not a table, so it survives restarts and needs no memory per user: the key's
SHA-256 gives a point in [0, 1) and the cumulative weights cut that interval into one piece per
version (the scheme of consistent weighted bucketing used by feature-flag systems). Moving weight
from one version to another only moves the users whose point lies in the moved piece.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} name '{name}': use letters, digits and . _ - (at most 128 characters)")
    return name


@dataclass(frozen=True)
class VersionSpec:
    """What to load for one version: a model directory and optionally a PEFT adapter on it."""

    name: str
    model_dir: str
    adapter: str | None = None

    @classmethod
    def parse(cls, text: str) -> VersionSpec:
        """``NAME=DIR`` or ``NAME=BASE+ADAPTER`` (the ``--model`` flag)."""
        name, sep, where = text.partition("=")
        if not sep or not name or not where:
            raise ValueError(f"--model '{text}': expected NAME=DIR or NAME=BASE_DIR+ADAPTER_DIR")
        base, plus, adapter = where.partition("+")
        spec = cls(check_name(name.strip(), "version"), base.strip(), adapter.strip() if plus else None)
        spec.check_paths()
        return spec

    def check_paths(self) -> None:
        if not Path(self.model_dir).is_dir():
            raise FileNotFoundError(f"model '{self.name}': {self.model_dir} is not a directory")
        if self.adapter is not None and not Path(self.adapter).is_dir():
            raise FileNotFoundError(f"model '{self.name}': adapter {self.adapter} is not a directory")

    def describe(self) -> str:
        return self.model_dir + (f"+{self.adapter}" if self.adapter else "")


def parse_weights(text: str, where: str) -> dict[str, float]:
    """``V1:90,V2:10`` -> {"V1": 90.0, "V2": 10.0}; a version without ``:W`` weighs 1."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        version, _, w = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "1")
        try:
            weight = float(w)
        except ValueError:
            raise ValueError(f"{where}: weight '{w}' of '{version}' is not a number") from None
        if not version or weight < 0:
            raise ValueError(f"{where}: expected VERSION:WEIGHT with a weight >= 0, got '{part}'")
        if version in weights:
            raise ValueError(f"{where}: version '{version}' is listed twice")
        weights[version] = weight
    if not weights or sum(weights.values()) <= 0:
        raise ValueError(f"{where}: the weights must add up to more than 0")
    return weights


def parse_route(text: str) -> tuple[str, dict[str, float]]:
    """``NAME=V1:90,V2:10`` (the ``--route`` flag)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"--route '{text}': expected NAME=VERSION:WEIGHT,VERSION:WEIGHT")
    return check_name(name.strip(), "route"), parse_weights(rest, f"--route {name.strip()}")


@dataclass(frozen=True)
class Shadow:
    """Mirror ``fraction`` of a route's requests to ``version``; its answer is only logged."""

    version: str
    fraction: float = 1.0

    @classmethod
    def parse(cls, text: str) -> tuple[str, Shadow]:
        """``ROUTE=VERSION[:FRACTION]`` (the ``--shadow`` flag)."""
        route, sep, rest = text.partition("=")
        version, colon, frac = rest.partition(":")
        if not sep or not route.strip() or not version.strip():
            raise ValueError(f"--shadow '{text}': expected ROUTE=VERSION[:FRACTION]")
        try:
            fraction = float(frac) if colon else 1.0
        except ValueError:
            raise ValueError(f"--shadow '{text}': fraction '{frac}' is not a number") from None
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"--shadow '{text}': the fraction must be in (0, 1]")
        return route.strip(), cls(version.strip(), fraction)


def unit_hash(*parts: str) -> float:
    """A stable point in [0, 1) for ``parts`` (same on every process and machine)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass
class Route:
    """A weighted, sticky split of one public name over versions (weights need not add to 100).

    ``stable`` is where a rollback sends all traffic: the heaviest version at creation unless set.
    ``canary`` is the version a :class:`seekforge.serve.canary.CanaryMonitor` watches, if any.
    """

    name: str
    weights: dict[str, float]
    stable: str = ""
    canary: str | None = None
    shadow: Shadow | None = None
    rolled_back: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stable:
            self.stable = max(self.weights, key=lambda v: self.weights[v])

    def pick(self, user_key: str) -> str:
        """The version serving ``user_key``: the piece of [0, 1) its hash falls in."""
        with self.lock:
            items = [(v, w) for v, w in self.weights.items() if w > 0]
        total = sum(w for _, w in items)
        point = unit_hash(self.name, user_key) * total
        for version, weight in items:
            if point < weight:
                return version
            point -= weight
        return items[-1][0]  # float rounding at the very top of the interval

    def set_weights(self, weights: dict[str, float]) -> None:
        with self.lock:
            self.weights = dict(weights)

    def to_dict(self) -> dict[str, object]:
        with self.lock:
            weights = dict(self.weights)
        return {"name": self.name, "weights": weights, "stable": self.stable, "canary": self.canary,
                "shadow": None if self.shadow is None else {"version": self.shadow.version,
                                                             "fraction": self.shadow.fraction},
                "rolled_back": self.rolled_back}
