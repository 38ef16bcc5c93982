"""Parity with lm-evaluation-harness 0.4 itself: same files, same model, question by question.

lm-eval runs offline on the benchmark CSVs through its own task templates (lm_eval_reference.py).
Checked: every prediction equal, every log-likelihood within 1e-4, every accuracy equal — for a
seekforge checkpoint, a seekforge DeepSeek-V4 checkpoint (scored by seekforge's V4 model; lm-eval
runs transformers' DeepseekV4ForCausalLM) and a random transformers Llama (5-shot, two subjects of
each benchmark), for left truncation at a short window, and for lm-eval's ``local-completions``
model pointed at ``seekforge serve`` (equal to lm-eval's ``hf`` model on the same checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval[hf])")
sys.path.insert(0, str(Path(__file__).parent))
import lm_eval_reference

from seekforge.cli import main

SUBJECTS = [
    ("mmlu", "world_religions"),
    ("mmlu", "abstract_algebra"),
    ("cmmlu", "traditional_chinese_medicine"),
    ("cmmlu", "elementary_commonsense"),
    ("ceval", "basic_medicine"),
    ("ceval", "discrete_mathematics"),
]
LIMIT, SHOTS, TOL = 2, 5, 1e-4


@pytest.fixture(scope="module")
def ref_tasks(eval_data, tmp_path_factory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    return d, lm_eval_reference.write_tasks(d, eval_data, SUBJECTS)


def ours(
    model_dir: Path | None, eval_data: Path, out: Path, *extra: str
) -> dict[tuple[str, str], list[dict]]:
    tasks = ",".join(f"{b}:{s}" for b, s in SUBJECTS)
    model = [str(model_dir)] if model_dir else []
    assert (
        main(
            [
                "eval",
                *model,
                "--tasks",
                tasks,
                "--limit",
                str(LIMIT),
                "--shots",
                str(SHOTS),
                "--data-dir",
                str(eval_data),
                "--out",
                str(out),
                "--no-progress",
                *extra,
            ]
        )
        == 0
    )
    by: dict[tuple[str, str], list[dict]] = {}
    for bench in ("mmlu", "cmmlu", "ceval"):
        for line in (out / "samples" / f"{bench}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            by.setdefault((bench, row["subject"]), []).append(row)
    return by


def compare(mine: dict[tuple[str, str], list[dict]], ref: dict[str, list[dict]]) -> tuple[float, int]:
    """Asserts equality question by question; returns (max |Δ log-likelihood|, questions compared)."""
    worst, n = 0.0, 0
    for bench, subject in SUBJECTS:
        theirs = ref[f"ref_{bench}_{subject}"]
        rows = mine[(bench, subject)]
        assert [r["index"] for r in rows] == [t["doc_id"] for t in theirs]
        for r, t in zip(rows, theirs):
            assert r["gold"] == "ABCD"[t["gold"]]
            assert r["pred"] == "ABCD"[t["pred"]], (bench, subject, r, t)
            worst = max(worst, max(abs(a - b) for a, b in zip(r["loglikelihoods"], t["lls"])))
            n += 1
        acc = sum(r["pred"] == r["gold"] for r in rows) / len(rows)
        assert acc == pytest.approx(sum(t["acc"] for t in theirs) / len(theirs), abs=1e-12)
    assert worst < TOL, worst
    return worst, n


@pytest.fixture(scope="module")
def hf_reference_sf(sf_model_dir, ref_tasks) -> dict:
    include, names = ref_tasks
    return lm_eval_reference.run(
        "hf",
        {"pretrained": str(sf_model_dir), "dtype": "float32", "device": "cpu"},
        include,
        names,
        SHOTS,
        LIMIT,
    )


def test_seekforge_checkpoint_equals_lm_eval_hf(sf_model_dir, eval_data, hf_reference_sf, tmp_path):
    mine = ours(sf_model_dir, eval_data, tmp_path / "out")
    worst, n = compare(mine, hf_reference_sf)
    print(f"seekforge checkpoint vs lm-eval hf: {n} questions, max |dloglik| {worst:.2e}")
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert results["tasks"]["mmlu"]["n"] == 2 * LIMIT and results["tasks"]["cmmlu"]["shots"] == SHOTS
    assert results["tasks"]["ceval"]["truncated"] == 0


def test_v4_checkpoint_equals_lm_eval_hf(v4_model_dir, eval_data, ref_tasks, tmp_path):
    include, names = ref_tasks
    ref = lm_eval_reference.run(
        "hf",
        {"pretrained": str(v4_model_dir), "dtype": "float32", "device": "cpu"},
        include,
        names,
        SHOTS,
        LIMIT,
    )
    mine = ours(v4_model_dir, eval_data, tmp_path / "out")
    worst, n = compare(mine, ref)
    print(f"seekforge DeepSeek-V4 checkpoint vs lm-eval hf (transformers' V4): {n} questions, "
          f"max |dloglik| {worst:.2e}")
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert results["config"]["model"]["kind"] == "seekforge"  # not the transformers path


def test_transformers_llama_equals_lm_eval_hf(llama_dir, eval_data, ref_tasks, tmp_path):
    include, names = ref_tasks
    ref = lm_eval_reference.run(
        "hf",
        {"pretrained": str(llama_dir), "dtype": "float32", "device": "cpu"},
        include,
        names,
        SHOTS,
        LIMIT,
    )
    worst, n = compare(ours(llama_dir, eval_data, tmp_path / "out"), ref)
    print(f"transformers Llama vs lm-eval hf: {n} questions, max |dloglik| {worst:.2e}")


def test_left_truncation_equals_lm_eval(sf_model_dir, eval_data, ref_tasks, tmp_path):
    """A 300-token window: every 5-shot prompt is cut from the left exactly as lm-eval cuts it."""
    include, names = ref_tasks
    ref = lm_eval_reference.run(
        "hf",
        {"pretrained": str(sf_model_dir), "dtype": "float32", "device": "cpu", "max_length": 300},
        include,
        names,
        SHOTS,
        LIMIT,
    )
    compare(ours(sf_model_dir, eval_data, tmp_path / "out", "--max-length", "300"), ref)
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert results["tasks"]["cmmlu"]["truncated"] == 2 * LIMIT  # counted, and said in the results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model_dir: Path, log_path: Path):
    port = _free_port()
    log = open(log_path, "w")  # noqa: SIM115 - a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seekforge",
            "serve",
            str(model_dir),
            "--port",
            str(port),
            "--model-name",
            "tiny-sf",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seekforge serve did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_local_completions_on_seekforge_serve_equals_hf(
    sf_model_dir, eval_data, ref_tasks, hf_reference_sf, tmp_path
):
    """lm-eval's local-completions (echo + logprobs over token ids) against `seekforge serve` gives what
    lm-eval's hf model gives in-process; so does `seekforge eval --endpoint`. The hf model adds BOS (the
    tokenizer's default), local-completions does not unless told: add_bos_token=True makes them the
    same request."""
    include, names = ref_tasks
    with serve(sf_model_dir, tmp_path / "serve.log") as url:
        api = lm_eval_reference.run(
            "local-completions",
            {
                "model": "tiny-sf",
                "base_url": f"{url}/v1/completions",
                "tokenizer": str(sf_model_dir),
                "tokenizer_backend": "huggingface",
                "add_bos_token": True,
                "max_length": 4096,
                "num_concurrent": 1,
                "max_retries": 1,
            },
            include,
            names,
            SHOTS,
            LIMIT,
        )
        endpoint = ["--endpoint", f"{url}/v1", "--tokenizer", str(sf_model_dir)]
        cached = [*endpoint, "--cache", str(tmp_path / "responses.sqlite")]
        mine = ours(None, eval_data, tmp_path / "out", *cached)
        # the client's report: every batch was a request that came back, with the server's token counts
        report = json.loads((tmp_path / "out" / "report.json").read_text("utf-8"))
        assert report["requests"] == report["succeeded"] > 0 and report["failed"] == report["cache_hits"] == 0
        assert report["prompt_tokens"] > 0 and report["model"] == "tiny-sf"
        # a rerun with the same cache sends nothing and scores the same
        again = ours(None, eval_data, tmp_path / "again", *cached)
        rerun = json.loads((tmp_path / "again" / "report.json").read_text("utf-8"))
        assert rerun["requests"] == 0 and rerun["cache_hits"] == report["succeeded"]
        assert again == mine
        gen = tmp_path / "gen.jsonl"
        gen.write_text(
            json.dumps({"prompt": "床前明月光，", "reference": "疑是地上霜。"}, ensure_ascii=False)
            + "\n"
            + json.dumps({"messages": [{"role": "user", "content": "Hello"}], "reference": "Hi"})
            + "\n",
            encoding="utf-8",
        )
        gen_args = ["--gen", str(gen), "--max-new-tokens", "12", "--no-progress"]
        assert (
            main(
                [
                    "eval",
                    *endpoint,
                    "--out",
                    str(tmp_path / "gen_api"),
                    *gen_args,
                ]
            )
            == 0
        )
    # generation through /v1/chat/completions = the same greedy generation through the local engine
    assert main(["eval", str(sf_model_dir), "--out", str(tmp_path / "gen_local"), *gen_args]) == 0
    outputs = [
        [
            json.loads(x)["output"]
            for x in (tmp_path / d / "samples/gen-gen.jsonl").read_text("utf-8").splitlines()
        ]
        for d in ("gen_api", "gen_local")
    ]
    assert outputs[0] == outputs[1] and any(outputs[0])
    for task in names:  # server vs in-process, both through lm-eval
        for a, b in zip(api[task], hf_reference_sf[task]):
            assert a["pred"] == b["pred"]
            assert max(abs(x - y) for x, y in zip(a["lls"], b["lls"])) < TOL
    worst, n = compare(mine, api)
    print(f"seekforge eval --endpoint vs lm-eval local-completions: {n} questions, max |dloglik| {worst:.2e}")
