"""Canary verdicts over a sliding window, flag parsing, and the moderation counter hook."""

from __future__ import annotations

import pytest

from seekforge.serve.canary import CanaryMonitor, CanaryPolicy, percentile
from seekforge.serve.ops import CURRENT, RequestRecord, record_blocked


def test_window_thresholds_and_expiry() -> None:
    mon = CanaryMonitor(CanaryPolicy("chat", "b", window_s=10, min_requests=4, max_error_rate=0.25,
                                     max_p95_latency_s=2.0, max_p95_ttft_s=0.5))
    assert mon.observe(False, 1.0, 0.1, now=0) is None  # too few to judge
    for t in (1, 2):
        assert mon.observe(True, 1.0, 0.1, now=t) is None
    breach = mon.observe(True, 1.0, 0.1, now=3)  # 1 failure in 4 = 0.25: not above the threshold
    assert breach is None
    assert mon.observe(True, 1.0, 0.1, now=11) is None  # the failure at t=0 left the window
    breach = mon.observe(True, 1.0, 0.9, now=12)  # window t=2,3,11,12: p95 TTFT of [0.1, 0.1, 0.1, 0.9] = 0.9
    assert breach is not None and breach.measure == "p95_ttft_s" and breach.value == 0.9
    assert breach.describe() == "p95_ttft_s 0.9 crossed 0.5 over the last 4 requests"
    slow = CanaryMonitor(CanaryPolicy("chat", "b", min_requests=2, max_p95_latency_s=2.0))
    assert slow.observe(True, 3.0, None, now=0) is None
    assert slow.observe(True, 1.0, None, now=1).measure == "p95_latency_s"
    errors = CanaryMonitor(CanaryPolicy("chat", "b", min_requests=2, max_error_rate=0.4))
    errors.observe(True, 1.0, None, now=0)
    assert errors.observe(False, 9.0, None, now=1).measure == "error_rate"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (10.0, 19.0, 20.0)
    assert percentile([3.0], 95) == 3.0


def test_policy_parsing() -> None:
    p = CanaryPolicy.parse("chat=v2,max_error_rate=0.1,min_requests=50,probe=p.jsonl,min_probe_score=30")
    assert (p.route, p.version, p.max_error_rate, p.min_requests, p.probe, p.min_probe_score) == (
        "chat", "v2", 0.1, 50, "p.jsonl", 30.0)
    for text, message in [("chat", "expected ROUTE=VERSION"), ("chat=v2,min_requests=x", "must be a number"),
                          ("chat=v2,max_error_rate=2", "0 <= max_error_rate <= 1"),
                          ("chat=v2,min_probe_score=3", "needs probe=FILE")]:
        with pytest.raises(ValueError, match=message):
            CanaryPolicy.parse(text)


def test_record_blocked_counts_the_current_version(server) -> None:
    from seekforge.serve import create_app

    app = create_app(server.engine)  # a second app over the session's engine: its own metrics registry
    rec = RequestRecord("/v1/chat/completions", version="tiny-chat", route=None)
    token = CURRENT.set(rec)
    try:
        record_blocked(app.state.server, "input")
    finally:
        CURRENT.reset(token)
    app.state.server.ops.close()
    assert rec.blocked == "input"
    text = app.state.server.ops.metrics.render()
    assert 'seekforge_blocked_requests_total{route="",stage="input",version="tiny-chat"} 1.0' in text
