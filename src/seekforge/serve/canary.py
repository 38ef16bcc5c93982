"""Canary releases with automatic rollback: thresholds over a sliding window of the canary's requests.

``--canary ROUTE=VERSION[,key=value ...]`` marks ``VERSION`` of ``ROUTE`` as the canary. Every
finished request of the canary on that route is an observation (ok?, latency, time to first token);
when the window holds at least ``min_requests`` observations and the error rate, the p95 latency or
the p95 TTFT crosses its threshold — or the periodic quality probe scores below ``min_probe_score`` —
the route is rolled back: all weight goes to the stable version, an event is logged and the
``seekforge_rollbacks_total`` metric counts it.

The quality probe is a small ``seekforge eval --gen`` file (``{"prompt"|"messages", "reference"}``
lines) generated greedily by the version's own engine every ``probe_every_s`` seconds and scored
with the eval stage's metrics (BLEU, ROUGE, exact match; ``probe_metric`` picks one).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

from seekforge.serve.routing import check_name


@dataclass
class CanaryPolicy:
    route: str
    version: str
    window_s: float = 60.0  # observations older than this leave the window
    min_requests: int = 20  # no verdict on fewer observations
    max_error_rate: float = 0.05  # failed requests (5xx, generation errors) / all
    max_p95_latency_s: float | None = None
    max_p95_ttft_s: float | None = None
    probe: str | None = None  # a `seekforge eval --gen` jsonl file
    probe_every_s: float = 300.0
    probe_metric: str = "rougeL"
    probe_max_tokens: int = 64
    min_probe_score: float | None = None

    @classmethod
    def parse(cls, text: str) -> CanaryPolicy:
        """``ROUTE=VERSION[,key=value,...]``, keys as the fields of this class."""
        head, _, rest = text.partition(",")
        route, sep, version = head.partition("=")
        if not sep or not route.strip() or not version.strip():
            raise ValueError(f"--canary '{text}': expected ROUTE=VERSION[,key=value,...]")
        kinds = {f.name: f.type for f in fields(cls) if f.name not in ("route", "version")}
        values: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, raw = item.partition("=")
            if not eq or key not in kinds:
                raise ValueError(f"--canary {route}: unknown setting '{item}'; known: {', '.join(kinds)}")
            kind = kinds[key]
            try:
                values[key] = raw if "str" in kind else int(raw) if kind == "int" else float(raw)
            except ValueError:
                raise ValueError(f"--canary {route}: '{key}' must be a number, got '{raw}'") from None
        policy = cls(check_name(route.strip(), "route"), version.strip(), **values)
        if policy.min_requests < 1 or policy.window_s <= 0 or not 0 <= policy.max_error_rate <= 1:
            raise ValueError(f"--canary {route}: need min_requests >= 1, window_s > 0 and "
                             "0 <= max_error_rate <= 1")
        if policy.min_probe_score is not None and not policy.probe:
            raise ValueError(f"--canary {route}: min_probe_score needs probe=FILE")
        return policy


class Observation(collections.namedtuple("Observation", "time ok latency ttft")):
    """One finished request of the canary: when, whether it succeeded, its latency and TTFT (s)."""


@dataclass
class Breach:
    """Why a canary was rolled back: which measure, its value and the threshold it crossed."""

    measure: str
    value: float
    threshold: float
    window_requests: int

    def describe(self) -> str:
        return (f"{self.measure} {self.value:.4g} crossed {self.threshold:.4g} over the last "
                f"{self.window_requests} requests")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method: an observed value, no interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def p95(values: list[float]) -> float:
    return percentile(values, 95.0)


class CanaryMonitor:
    """The sliding window of one canary and the verdict over it (thread-safe)."""

    def __init__(self, policy: CanaryPolicy) -> None:
        self.policy = policy
        self.window: collections.deque[Observation] = collections.deque()
        self.lock = threading.Lock()
        self.probe_scores: list[float] = []

    def observe(self, ok: bool, latency: float, ttft: float | None,
                now: float | None = None) -> Breach | None:
        """Add one request; the breach it causes, if any."""
        now = time.monotonic() if now is None else now
        with self.lock:
            self.window.append(Observation(now, ok, latency, ttft))
            while self.window and now - self.window[0].time > self.policy.window_s:
                self.window.popleft()
            seen = list(self.window)
        return self.verdict(seen)

    def verdict(self, seen: list[Observation]) -> Breach | None:
        pol = self.policy
        if len(seen) < pol.min_requests:
            return None
        errors = sum(not o.ok for o in seen) / len(seen)
        if errors > pol.max_error_rate:
            return Breach("error_rate", errors, pol.max_error_rate, len(seen))
        ok = [o for o in seen if o.ok]
        if pol.max_p95_latency_s is not None and ok:
            lat = p95([o.latency for o in ok])
            if lat > pol.max_p95_latency_s:
                return Breach("p95_latency_s", lat, pol.max_p95_latency_s, len(seen))
        ttfts = [o.ttft for o in ok if o.ttft is not None]
        if pol.max_p95_ttft_s is not None and ttfts:
            ttft = p95(ttfts)
            if ttft > pol.max_p95_ttft_s:
                return Breach("p95_ttft_s", ttft, pol.max_p95_ttft_s, len(seen))
        return None

    def probe_verdict(self, score: float) -> Breach | None:
        self.probe_scores.append(score)
        floor = self.policy.min_probe_score
        if floor is not None and score < floor:
            return Breach(f"probe_{self.policy.probe_metric}", score, floor, 0)
        return None


def run_probe(engine: Any, path: str, metric: str, max_tokens: int) -> float:
    """Greedy generations of the probe file on ``engine``, scored by ``seekforge eval``'s metrics."""
    from seekforge.eval.generation import metrics, read_gen_file
    from seekforge.eval.models import _is_chat_tokenizer, _prompt_ids
    from seekforge.infer import SamplingParams

    items = read_gen_file(path)
    use_chat = _is_chat_tokenizer(engine.tokenizer)
    prompts = [_prompt_ids(engine.tokenizer, it.request, use_chat) for it in items]
    done = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    scores = metrics([c.text for c in done], [it.reference for it in items])
    if metric not in scores:
        raise ValueError(f"probe_metric '{metric}': expected one of {', '.join(scores)}")
    return float(scores[metric])
