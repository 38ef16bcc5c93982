"""``seekforge data synth``: self-instruct / evol-instruct through ``seekforge serve`` on the tiny model and
a scripted ASGI server (filters, judge, dedup), resume after a kill, bad seed files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from seekforge.cli import main
from seekforge.data.synth import clean_instruction, parse_score
from seekforge.finetune.datasets import DatasetSpec, load_examples

SEEDS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "What are the three primary colors?", "input": "", "output": "Red, blue and yellow."},
    {"instruction": "Describe the structure of an atom.", "input": "", "output": "A nucleus and electrons."},
]

# What the scripted model writes when asked for a new task, by the request's seed.
TASKS = [
    "Task: Write a haiku about autumn leaves.",  # kept
    "Write a haiku about autumn leaves.",  # duplicate of the first once the label is gone
    "As an AI, I cannot write new tasks.",  # refusal in the instruction
    "Explain photosynthesis to a child REFUSE",  # the answer refuses
    "解释一下为什么天空是蓝色的。",  # not the seeds' language
    "List three bad uses of a hammer.",  # the judge gives it 3
    "Summarize the plot of Hamlet in two sentences.",  # kept
    "Hi",  # too short
    "Translate 'good morning' into French.",  # kept
    "Write a limerick about a cat.",  # kept
    "Give two tips for learning to code.",  # kept
    "Describe the water cycle briefly.",  # answered after n was reached
]


def _scripted_reply(body: dict) -> str:
    text = body["messages"][0]["content"]
    if text.startswith("Here are some tasks"):
        return TASKS[body["seed"] % len(TASKS)]
    if text.startswith("Rate how good"):
        return "Score: 3" if "bad uses" in text else "9"
    if "REFUSE" in text:
        return "As an AI language model, I cannot do that."
    return "Answer to: " + text


def _seeds(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(SEEDS), encoding="utf-8")
    return path


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_parsing_helpers():
    assert clean_instruction("Task 9: Write a poem.") == "Write a poem."
    assert clean_instruction("新指令：写一首诗。") == "写一首诗。"
    assert clean_instruction('"Quoted task"') == "Quoted task"
    assert parse_score("Score: 8/10") == 8.0 and parse_score("10") == 10.0 and parse_score("none") is None


def test_self_instruct_filters_judge_and_report(scripted_server, tmp_path):
    server, url = scripted_server(_scripted_reply)
    out = tmp_path / "out"
    argv = [
        "data",
        "synth",
        "--method",
        "self-instruct",
        "--seeds",
        str(_seeds(tmp_path)),
        "--n",
        "5",
        "--out",
        str(out),
        "--batch",
        "4",
        "--judge",
        "--endpoint",
        url,
    ]
    assert main(argv) == 0
    rep = _report(out)
    assert rep["complete"] and rep["accepted"] == 5 and rep["attempts"] == 12 and rep["rounds"] == 3
    assert rep["dropped"] == {
        "duplicate": 1,
        "refusal": 2,
        "language": 1,
        "judge_below_min": 1,
        "instruction_length": 1,
        "over_n": 1,
    }
    rows = _rows(out / "synth.jsonl")
    assert [r["instruction"] for r in rows] == [TASKS[0][6:], TASKS[6], TASKS[8], TASKS[9], TASKS[10]]
    assert all(r["output"] == "Answer to: " + r["instruction"] and r["judge_score"] == 9.0 for r in rows)
    # 12 task requests + 8 answers (after the instruction filters) + 7 judge calls
    assert rep["requests"] == server.requests == 27 and rep["failed"] == 0
    examples, _ = load_examples([DatasetSpec("synth", out / "synth.jsonl", "auto")])  # sft reads it as is
    assert len(examples) == 5

    # a re-run is free: every request is answered from the cache
    assert main(argv) == 0
    assert _report(out)["requests"] == 0 and _report(out)["cache_hits"] == 27 and server.requests == 27
    assert _rows(out / "synth.jsonl") == rows


def test_self_and_evol_instruct_through_seekforge_serve(tiny_endpoint, tmp_path):
    seeds = _seeds(tmp_path)
    common = [
        "--seeds",
        str(seeds),
        "--endpoint",
        tiny_endpoint.url,
        "--api-key",
        tiny_endpoint.api_key,
        "--max-tokens",
        "8",
        "--langs",
        "any",
        "--min-chars",
        "1",
        "--keep-truncated",
        "--batch",
        "4",
    ]
    out = tmp_path / "si"
    assert (
        main(
            [
                "data",
                "synth",
                "--method",
                "self-instruct",
                "--n",
                "3",
                "--out",
                str(out),
                "--format",
                "sharegpt",
                *common,
            ]
        )
        == 0
    )
    rep = _report(out)
    assert rep["complete"] and rep["accepted"] == 3 and rep["model"] == "tiny-chat"
    assert rep["requests"] >= 6 and rep["prompt_tokens"] > 0 and rep["completion_tokens"] > 0
    examples, _ = load_examples([DatasetSpec("si", out / "synth.jsonl", "auto")])
    assert len(examples) == 3 and all(e.messages[-1]["role"] == "assistant" for e in examples)
    out = tmp_path / "evol"
    assert main(["data", "synth", "--method", "evol-instruct", "--n", "2", "--out", str(out), *common]) == 0
    rows = _rows(out / "synth.jsonl")
    assert len(rows) == 2 and all(r["synth_method"].startswith("evol-instruct:") for r in rows)
    assert all(r["source_id"].startswith(str(seeds)) or r["source_id"].startswith("evol-") for r in rows)


def test_resume_after_kill_pays_only_for_the_rest(scripted_server, tmp_path):
    server, url = scripted_server(_scripted_reply, delay_s=0.3)
    seeds = _seeds(tmp_path)
    args = [
        "data",
        "synth",
        "--method",
        "self-instruct",
        "--seeds",
        str(seeds),
        "--n",
        "5",
        "--batch",
        "4",
        "--endpoint",
        url,
        "--concurrency",
        "2",
    ]
    out = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "seekforge", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    cache = out / "cache" / "responses.sqlite"

    def cached() -> int:
        try:
            with sqlite3.connect(cache) as db:
                return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        except sqlite3.Error:
            return 0

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and (not cache.exists() or cached() < 5):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    before = cached()
    assert not (out / "synth.jsonl").exists() and _report(out)["complete"] is False  # never looks complete

    assert main([*args, "--out", str(out)]) == 0
    rep = _report(out)
    fresh = tmp_path / "fresh"
    assert main([*args, "--out", str(fresh)]) == 0
    total = _report(fresh)["requests"]  # what an uninterrupted run sends
    assert 5 <= before < total  # it was killed mid-run
    assert rep["complete"] and rep["cache_hits"] == before
    assert rep["requests"] == total - before  # the resumed run paid only for the rest
    assert _rows(out / "synth.jsonl") == _rows(fresh / "synth.jsonl")  # the resumed run made the same data


def test_bad_seeds_and_endpoints_are_named(scripted_server, tiny_endpoint, tmp_path, capsys):
    _, url = scripted_server(_scripted_reply)
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(json.dumps(SEEDS[0]) + "\n" + '{"instruction": "x", "output": \n', encoding="utf-8")

    def err(*argv: str) -> str:
        assert main(["data", "synth", "--method", "self-instruct", "--n", "2", *argv]) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "out")
    assert f"--seeds: {bad}:2: invalid JSON" in err("--seeds", str(bad), "--out", out, "--endpoint", url)
    text = tmp_path / "plain.jsonl"
    text.write_text(json.dumps({"text": "just text"}) + "\n", encoding="utf-8")
    assert "seed tasks need instructions" in err("--seeds", str(text), "--out", out, "--endpoint", url)
    nochat = tmp_path / "nochat.jsonl"
    nochat.write_text(
        json.dumps({"conversations": [{"from": "human", "value": "hi"}]}) + "\n", encoding="utf-8"
    )
    assert f"{nochat}:1: no answer" in err("--seeds", str(nochat), "--out", out, "--endpoint", url)
    seeds = str(_seeds(tmp_path))
    assert "refused the API key" in err(
        "--seeds", seeds, "--out", out, "--endpoint", tiny_endpoint.url, "--api-key", "sk-wrong"
    )
    assert "model 'gpt-9' is not served" in err(
        "--seeds",
        seeds,
        "--out",
        out,
        "--endpoint",
        tiny_endpoint.url,
        "--api-key",
        tiny_endpoint.api_key,
        "--model",
        "gpt-9",
    )
    assert "cannot reach the endpoint" in err(
        "--seeds", seeds, "--out", out, "--endpoint", "http://127.0.0.1:9/v1", "--timeout", "5"
    )
    assert not Path(out).exists()  # preflight comes before anything is written


def test_shared_sft_files_work_as_seeds(shared_data):
    from seekforge.data.synth import read_seeds

    files = [shared_data / "sft" / "identity.json", shared_data / "sft" / "alpaca_zh_demo.json"]
    seeds = read_seeds([str(f) for f in files])
    assert len(seeds) == sum(len(json.loads(f.read_text(encoding="utf-8"))) for f in files)
    assert all(s.instruction.strip() and s.output.strip() for s in seeds)
    assert seeds[0].id == f"{files[0]}[0]"
