"""``seekforge ab-report LOG...``: compare model versions from the server's ``--request-log`` files.

Per version (by name; the report does not depend on the order of the files or lines): requests,
failed requests (HTTP 5xx or a generation error) and their rate, client errors (4xx, 499 = the
client went away), latency and time-to-first-token percentiles (nearest rank, successful requests),
tokens/s (generated tokens / seconds spent, successful requests), 👍/👎 from ``POST /v1/feedback``
(the chat page's buttons) and quality-probe scores. Then a significance test of
each version against the baseline on the main metric (``--metric``):

- ``error_rate`` and ``feedback`` (share of 👍): two-proportion z-test with the pooled proportion,
  two-sided p-value ``erfc(|z| / sqrt 2)``;
- ``latency``: Mann–Whitney U test (two-sided, scipy.stats.mannwhitneyu; reported as unavailable when
  scipy is not installed), which does not assume normally distributed latencies.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekforge.serve.canary import percentile

METRICS = ("error_rate", "latency", "feedback")


@dataclass
class VersionStats:
    version: str
    requests: int = 0
    failed: int = 0
    client_errors: int = 0
    latencies: list[float] = field(default_factory=list)  # successful requests
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    probe_scores: list[float] = field(default_factory=list)
    probe_metric: str | None = None

    @property
    def error_rate(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return round(percentile(values, q), 6) if values else None

        busy_s = math.fsum(self.latencies)  # exact, so the order of the records (and files) does not matter

        return {
            "version": self.version, "requests": self.requests, "failed": self.failed,
            "error_rate": round(self.error_rate, 6), "client_errors": self.client_errors,
            "latency_p50_s": pct(self.latencies, 50), "latency_p95_s": pct(self.latencies, 95),
            "latency_p99_s": pct(self.latencies, 99), "ttft_p50_s": pct(self.ttfts, 50),
            "ttft_p95_s": pct(self.ttfts, 95),
            "tokens_per_s": round(self.tokens / busy_s, 3) if busy_s > 0 else None,
            "thumbs_up": self.thumbs_up, "thumbs_down": self.thumbs_down,
            "probe_metric": self.probe_metric,
            "probe_mean": round(math.fsum(self.probe_scores) / len(self.probe_scores), 4) if self.probe_scores
            else None,
            "probes": len(self.probe_scores),
        }


def read_logs(paths: list[str | Path], route: str | None = None) -> dict[str, VersionStats]:
    """Per-version statistics of request-log files (``route``: only that route's records)."""
    stats: dict[str, VersionStats] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such request log")
        with open(path, encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{ln}: not a JSON line ({e.msg})") from None
                if not isinstance(rec, dict) or "event" not in rec:
                    raise ValueError(f"{path}:{ln}: expected a request-log object with an 'event' field")
                version = rec.get("version")
                if not isinstance(version, str) or route is not None and rec.get("route") != route:
                    continue
                add_record(stats.setdefault(version, VersionStats(version)), rec, f"{path}:{ln}")
    # by name: the report is the same whatever the order of the files (rotated logs, a shell glob)
    return dict(sorted(stats.items()))


def add_record(s: VersionStats, rec: dict[str, Any], where: str) -> None:
    kind = rec["event"]
    if kind == "request":
        status = rec.get("status")
        if not isinstance(status, int):
            raise ValueError(f"{where}: 'status' must be an integer")
        s.requests += 1
        if status >= 500 or rec.get("error"):
            s.failed += 1
        elif status >= 400:
            s.client_errors += 1
        else:
            latency = float(rec["latency_s"])
            s.latencies.append(latency)
            if rec.get("ttft_s") is not None:
                s.ttfts.append(float(rec["ttft_s"]))
            s.tokens += int(rec.get("completion_tokens") or 0)
    elif kind == "feedback":
        if rec.get("rating") == "up":
            s.thumbs_up += 1
        elif rec.get("rating") == "down":
            s.thumbs_down += 1
    elif kind == "probe":
        s.probe_scores.append(float(rec["score"]))
        s.probe_metric = rec.get("metric")


def two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float] | None:
    """(z, two-sided p) of H0: equal proportions, with the pooled standard error; None if undefined."""
    if not n_a or not n_b:
        return None
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return None
    z = (hits_b / n_b - hits_a / n_a) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def mann_whitney(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """(U of ``b``, two-sided p) by scipy; None without scipy or without samples."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return None
    if not a or not b:
        return None
    res = mannwhitneyu(b, a, alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def compare(base: VersionStats, other: VersionStats, metric: str) -> dict[str, Any]:
    if metric == "error_rate":
        test, name = two_proportion_z(base.failed, base.requests, other.failed, other.requests), "z"
        label = "two-proportion z-test on the error rate"
    elif metric == "feedback":
        test = two_proportion_z(base.thumbs_up, base.thumbs_up + base.thumbs_down,
                                other.thumbs_up, other.thumbs_up + other.thumbs_down)
        name, label = "z", "two-proportion z-test on the 👍 share"
    else:
        test, name, label = mann_whitney(base.latencies, other.latencies), "U", "Mann-Whitney U on latency"
    return {"baseline": base.version, "version": other.version, "metric": metric, "test": label,
            "statistic_name": name, "statistic": None if test is None else round(test[0], 6),
            "p_value": None if test is None else test[1]}


def report(paths: list[str | Path], metric: str = "error_rate", baseline: str | None = None,
           route: str | None = None) -> dict[str, Any]:
    if metric not in METRICS:
        raise ValueError(f"--metric {metric}: expected one of {', '.join(METRICS)}")
    stats = read_logs(paths, route)
    if not stats:
        where = f" for route {route}" if route else ""
        raise ValueError(f"{', '.join(map(str, paths))}: no request records{where}")
    if baseline is None:
        baseline = max(stats.values(), key=lambda s: s.requests).version
    if baseline not in stats:
        raise ValueError(f"--baseline {baseline}: not in the logs (versions: {', '.join(stats)})")
    tests = [compare(stats[baseline], s, metric) for v, s in stats.items() if v != baseline]
    return {"versions": [s.summary() for s in stats.values()], "baseline": baseline, "tests": tests}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render(result: dict[str, Any], alpha: float) -> str:
    cols = [("version", "version"), ("requests", "requests"), ("failed", "failed"),
            ("error_rate", "err rate"), ("client_errors", "4xx"), ("latency_p50_s", "p50 s"),
            ("latency_p95_s", "p95 s"),
            ("latency_p99_s", "p99 s"), ("ttft_p50_s", "ttft p50"), ("ttft_p95_s", "ttft p95"),
            ("tokens_per_s", "tok/s"), ("thumbs_up", "👍"), ("thumbs_down", "👎"), ("probe_mean", "probe")]
    rows = [[h for _, h in cols]] + [[_fmt(v[k]) for k, _ in cols] for v in result["versions"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    for t in result["tests"]:
        p = t["p_value"]
        if p is None:
            verdict = "n/a (too little data" + (", or scipy missing)" if t["metric"] == "latency" else ")")
        else:
            verdict = f"significant at alpha {alpha:g}" if p < alpha else f"not significant at {alpha:g}"
        lines.append(f"{t['version']} vs {t['baseline']}: {t['test']}: {t['statistic_name']} = "
                     f"{_fmt(t['statistic'])}, p = {_fmt(p)}  -> {verdict}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = report(args.logs, args.metric, args.baseline, args.route)
    print(render(result, args.alpha))
    if args.json:
        from seekforge.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ab-report", help="compare model versions from `seekforge serve --request-log` files",
                       description="Per-version requests, error rate, latency/TTFT percentiles, tokens/s, "
                       "👍/👎 and probe scores, with a significance test against the baseline.")
    p.add_argument("logs", nargs="+", help="request-log jsonl files")
    p.add_argument("--metric", default="error_rate", choices=METRICS,
                   help="the metric tested for significance")
    p.add_argument("--baseline", default=None,
                   help="version the others are compared with (default: the one with most requests)")
    p.add_argument("--route", default=None, help="only requests of this route")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=run)
