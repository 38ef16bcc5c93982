"""Prometheus metrics per model version and route (prometheus-client), appended to ``GET /metrics``.

Counters and histograms are updated when a request finishes; the engine gauges (tokens/s, queue
depth, cache slots in use) are read from each version's engine at scrape time by a collector, so a
version loaded or swapped through the admin API shows up without re-registering anything. Each app
has its own ``CollectorRegistry`` (two servers in one process, as in the tests, do not share counts).

Names (all ``seekforge_`` prefixed): ``requests_total{version,route,status}``,
``request_latency_seconds`` and ``request_ttft_seconds`` histograms ``{version,route}``,
``generation_tokens_total{version,route}``, ``version_generation_tokens_per_second{version}``,
``version_queue_depth{version}``, ``version_cache_slots_in_use{version}``,
``version_cache_slots{version}``, ``version_inflight_requests{version}``, ``route_weight{route,version}``,
``rollbacks_total{route,reason}``, ``feedback_total{version,route,rating}`` and
``blocked_requests_total{version,route,stage}`` (incremented by
:meth:`OpsMetrics.blocked`, the hook for content moderation). With a remote safety classifier
(:meth:`OpsMetrics.watch_classifier`): ``safety_classifier_requests_total`` (HTTP requests sent,
retries included), ``safety_classifier_failures_total`` (checks given up on) and
``safety_classifier_retries_total``, read from its client's usage at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


Snapshot = Callable[[], tuple[dict[str, tuple[Any, int]], dict[str, dict[str, float]]]]


class _EngineGauges:
    """Scrape-time gauges over the live versions; ``snapshot()`` returns {version: (engine, inflight)}
    and {route: {version: weight}}."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        versions, routes = self.snapshot()
        fams = {
            "tps": GaugeMetricFamily("seekforge_version_generation_tokens_per_second",
                                     "Generated tokens per second over the last 10 s.", labels=["version"]),
            "queue": GaugeMetricFamily("seekforge_version_queue_depth", "Requests waiting for a cache slot.",
                                       labels=["version"]),
            "used": GaugeMetricFamily("seekforge_version_cache_slots_in_use", "Cache slots with a request.",
                                      labels=["version"]),
            "slots": GaugeMetricFamily("seekforge_version_cache_slots", "Cache slots of the engine.",
                                       labels=["version"]),
            "inflight": GaugeMetricFamily("seekforge_version_inflight_requests",
                                          "HTTP requests being answered by the version.", labels=["version"]),
        }
        for name, (engine, inflight) in versions.items():
            slots = engine.config.max_batch
            fams["tps"].add_metric([name], engine.stats.tokens_per_second())
            fams["queue"].add_metric([name], engine.num_waiting())
            fams["used"].add_metric([name], slots - engine.free_slots())
            fams["slots"].add_metric([name], slots)
            fams["inflight"].add_metric([name], inflight)
        weight = GaugeMetricFamily("seekforge_route_weight", "Share of a route's traffic sent to a version.",
                                   labels=["route", "version"])
        for route, weights in routes.items():
            total = sum(weights.values()) or 1.0
            for version, w in weights.items():
                weight.add_metric([route, version], w / total)
        yield from fams.values()
        yield weight


class _ClassifierUsage:
    """Scrape-time counters over a remote classifier's ``LLMClient.usage`` (the client counts under
    its own lock; the counters here are only read, so nothing is counted twice)."""

    def __init__(self, usage: Callable[[], Any]) -> None:
        self.usage = usage

    def collect(self) -> Iterator[CounterMetricFamily]:
        u = self.usage()
        # prometheus-client appends "_total" to a counter family's name.
        yield CounterMetricFamily("seekforge_safety_classifier_requests",
                                  "HTTP requests sent to the remote safety classifier (retries included).",
                                  value=u.requests)
        yield CounterMetricFamily("seekforge_safety_classifier_failures",
                                  "Safety checks given up on: the classifier did not answer after retries.",
                                  value=u.failed)
        yield CounterMetricFamily("seekforge_safety_classifier_retries",
                                  "Requests to the remote safety classifier sent again after a failure.",
                                  value=u.retries)


class OpsMetrics:
    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry()
        labels = ["version", "route"]
        self.requests = Counter("seekforge_requests", "Generation requests by version, route, HTTP status.",
                                labels + ["status"], registry=self.registry)
        self.latency = Histogram("seekforge_request_latency_seconds", "Time from request to last byte.",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("seekforge_request_ttft_seconds", "Time from submission to the first token.",
                              labels, buckets=TTFT_BUCKETS, registry=self.registry)
        self.tokens = Counter("seekforge_generation_tokens", "Tokens generated.", labels,
                              registry=self.registry)
        self.rollbacks = Counter("seekforge_rollbacks", "Automatic and admin rollbacks of a route.",
                                 ["route", "reason"], registry=self.registry)
        self.blocked_total = Counter("seekforge_blocked_requests", "Requests/outputs blocked by moderation.",
                                     labels + ["stage"], registry=self.registry)
        self.feedback = Counter("seekforge_feedback", "👍/👎 ratings of answers (POST /v1/feedback).",
                                labels + ["rating"], registry=self.registry)
        self.registry.register(_EngineGauges(snapshot))

    def request(self, version: str, route: str, status: int, latency: float, ttft: float | None,
                tokens: int) -> None:
        self.requests.labels(version, route, str(status)).inc()
        self.latency.labels(version, route).observe(latency)
        if ttft is not None:
            self.ttft.labels(version, route).observe(ttft)
        if tokens:
            self.tokens.labels(version, route).inc(tokens)

    def blocked(self, version: str, route: str, stage: str) -> None:
        """Count one blocked request (``stage``: "input" or "output"); for the content-safety module."""
        self.blocked_total.labels(version, route, stage).inc()

    def watch_classifier(self, classifier: Any) -> None:
        """Export the call counts of a remote classifier (one with an ``LLMClient`` as ``client``)."""
        client = getattr(classifier, "client", None)
        if client is not None:
            self.registry.register(_ClassifierUsage(lambda: client.usage))

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")
