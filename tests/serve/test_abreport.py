"""``seekforge ab-report`` on a request log whose numbers are known by construction."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import mannwhitneyu

from seekforge.cli import main
from seekforge.serve.abreport import report


def _write_log(path) -> None:
    lines = []
    for i in range(100):  # a: 10 failures; successful latencies 1..90 s, ttft = latency / 10, 10 tokens each
        status = 500 if i >= 90 else 200
        lines.append({"event": "request", "version": "a", "route": "chat", "status": status,
                      "latency_s": float(i + 1), "ttft_s": (i + 1) / 10, "completion_tokens": 10})
    for i in range(100):  # b: 30 failures, 5 client errors; latencies 0.5..32.5
        status = 500 if i >= 70 else 400 if i >= 65 else 200
        lines.append({"event": "request", "version": "b", "route": "chat", "status": status,
                      "latency_s": 0.5 + i / 2, "ttft_s": None, "completion_tokens": 20})
    lines.append({"event": "request", "version": "c", "route": "other", "status": 200, "latency_s": 1.0,
                  "completion_tokens": 1})
    lines += [{"event": "feedback", "version": "a", "route": "chat", "rating": "up"}] * 8
    lines += [{"event": "feedback", "version": "a", "route": "chat", "rating": "down"}] * 2
    lines += [{"event": "feedback", "version": "b", "route": "chat", "rating": "up"}] * 3
    lines += [{"event": "feedback", "version": "b", "route": "chat", "rating": "down"}] * 7
    lines += [{"event": "probe", "version": "b", "route": "chat", "metric": "rougeL", "score": s}
              for s in (40.0, 50.0)]
    lines.append({"event": "rollback", "route": "chat", "to": "a"})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")


def test_report_numbers_and_tests(tmp_path) -> None:
    log = tmp_path / "requests.jsonl"
    _write_log(log)
    result = report([log], route="chat", baseline="a")
    a, b = result["versions"]
    assert (a["requests"], a["failed"], a["error_rate"], a["client_errors"]) == (100, 10, 0.1, 0)
    assert (b["requests"], b["failed"], b["error_rate"], b["client_errors"]) == (100, 30, 0.3, 5)
    # nearest rank over 1..90: p50 = 45th value, p95 = 86th, p99 = 90th
    assert (a["latency_p50_s"], a["latency_p95_s"], a["latency_p99_s"]) == (45.0, 86.0, 90.0)
    assert (a["ttft_p50_s"], a["ttft_p95_s"]) == (4.5, 8.6) and b["ttft_p50_s"] is None
    assert a["tokens_per_s"] == pytest.approx(900 / sum(range(1, 91)), abs=1e-3)
    assert b["tokens_per_s"] == pytest.approx(1300 / sum(0.5 + i / 2 for i in range(65)), abs=1e-3)
    assert (a["thumbs_up"], a["thumbs_down"], b["thumbs_up"], b["thumbs_down"]) == (8, 2, 3, 7)
    assert (b["probe_mean"], b["probes"], a["probe_mean"]) == (45.0, 2, None)
    (test,) = result["tests"]
    # pooled p = 0.2, se = sqrt(0.2 * 0.8 * 2 / 100), z = 0.2 / se = 3.5355, p = erfc(z / sqrt 2)
    assert test["statistic"] == pytest.approx(3.535534, abs=1e-5)
    assert test["p_value"] == pytest.approx(math.erfc(3.5355339 / math.sqrt(2)), rel=1e-5)
    assert test["p_value"] == pytest.approx(4.07e-4, abs=1e-6)
    fb = report([log], metric="feedback", baseline="a", route="chat")["tests"][0]
    assert fb["statistic"] == pytest.approx(-0.5 / math.sqrt(0.55 * 0.45 * 0.2), abs=1e-5)
    lat = report([log], metric="latency", baseline="a", route="chat")["tests"][0]
    want = mannwhitneyu([0.5 + i / 2 for i in range(65)], [float(i + 1) for i in range(90)],
                        alternative="two-sided")
    assert (lat["statistic"], lat["p_value"]) == (pytest.approx(want.statistic), pytest.approx(want.pvalue))
    assert [v["version"] for v in report([log])["versions"]] == ["a", "b", "c"]


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys) -> None:
    log = tmp_path / "requests.jsonl"
    _write_log(log)
    assert main(["ab-report", str(log), "--route", "chat", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "b vs a: two-proportion z-test on the error rate: z = 3.536" in out
    assert "significant at alpha 0.05" in out
    assert json.loads((tmp_path / "r.json").read_text())["baseline"] == "a"


def test_bad_log_names_file_and_line(tmp_path, capsys) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_text('{"event": "request", "version": "a", "status": 200, "latency_s": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON line"):
        report([log])
    assert main(["ab-report", str(tmp_path / "missing.jsonl")]) != 0
    assert "missing.jsonl: no such request log" in capsys.readouterr().err
