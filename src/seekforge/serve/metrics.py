"""Prometheus text for ``GET /metrics``: engine counters plus HTTP request counts.

Names follow vLLM's where one exists (``num_requests_running``, ``time_to_first_token_seconds``
...), under the ``seekforge:`` prefix, so existing Grafana panels need only the prefix changed.
"""

from __future__ import annotations

import collections
import threading

from seekforge.infer import Engine


class HttpStats:
    """``http_requests_total{path, status}``; paths outside the API are grouped as "other"."""

    KNOWN = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize",
             "/detokenize", "/"}

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self.lock = threading.Lock()

    def add(self, path: str, status: int) -> None:
        with self.lock:
            self.counts[(path if path in self.KNOWN else "other", status)] += 1


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    lab = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    return f"{name}{lab} {value:g}" if isinstance(value, float) else f"{name}{lab} {value}"


def render_metrics(engine: Engine, http: HttpStats) -> str:
    s = engine.stats
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str] | None, float]]) -> None:
        out.append(f"# HELP seekforge:{name} {help_}")
        out.append(f"# TYPE seekforge:{name} {kind}")
        out.extend(_line(f"seekforge:{name}", v, lab) for lab, v in samples)

    with s.lock:
        finished = dict(s.requests_total)
        ttft = list(s.ttft_buckets), s.ttft_sum, s.ttft_count
        prompt_toks, gen_toks = s.prompt_tokens_total, s.generation_tokens_total
        drafts, accepted, steps = s.draft_tokens_total, s.accepted_tokens_total, s.decode_steps_total
    metric("num_requests_running", "gauge", "Requests holding a cache slot.", [(None, engine.num_running())])
    metric("num_requests_waiting", "gauge", "Requests in the queue waiting for a slot.",
           [(None, engine.num_waiting())])
    metric("queue_capacity", "gauge", "Waiting requests accepted before answering 503.",
           [(None, engine.config.queue_size)])
    metric("kv_cache_usage_perc", "gauge", "Fraction of cache slots in use.",
           [(None, 1.0 - engine.free_slots() / engine.config.max_batch)])
    metric("request_success_total", "counter", "Finished requests by finish reason.",
           [({"finish_reason": k}, v) for k, v in sorted(finished.items())]
           or [({"finish_reason": "stop"}, 0)])
    metric("prompt_tokens_total", "counter", "Prompt tokens submitted.", [(None, prompt_toks)])
    metric("generation_tokens_total", "counter", "Tokens generated.", [(None, gen_toks)])
    metric("generation_tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.",
           [(None, float(s.tokens_per_second()))])
    metric("decode_steps_total", "counter", "Batched decode forward passes.", [(None, steps)])
    metric("spec_decode_draft_tokens_total", "counter", "MTP draft tokens proposed.", [(None, drafts)])
    metric("spec_decode_accepted_tokens_total", "counter", "MTP draft tokens accepted.", [(None, accepted)])
    buckets, total, count = ttft
    name = "seekforge:time_to_first_token_seconds"
    out.append(f"# HELP {name} Time from submission to the first generated token.")
    out.append(f"# TYPE {name} histogram")
    for b, c in zip(s.TTFT_BUCKETS, buckets):
        out.append(_line(f"{name}_bucket", c, {"le": f"{b:g}"}))
    out.append(_line(f"{name}_bucket", count, {"le": "+Inf"}))
    out.append(_line(f"{name}_sum", float(total)))
    out.append(_line(f"{name}_count", count))
    out.append("# HELP http_requests_total HTTP requests by path and status.")
    out.append("# TYPE http_requests_total counter")
    with http.lock:
        for (path, status), c in sorted(http.counts.items()):
            out.append(_line("http_requests_total", c, {"path": path, "status": str(status)}))
    return "\n".join(out) + "\n"
