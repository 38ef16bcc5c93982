"""``seekforge dpo``: preference data formats and bad rows, and real trainer runs (LoRA, full, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seekforge.finetune.datasets import DataError, resolve_datasets
from seekforge.finetune.pairs import load_pairs
from seekforge.train.metrics import read_metrics

REWARD_KEYS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy")
FAST = ["seq_len=64", "micro_batch_size=4", "batch_tokens=256"]


def _pairs_file(tmp: Path) -> Path:
    """16 sharegpt pairs (English and Chinese): a short correct answer vs. a wrong one."""
    rows = []
    for a in range(8):
        b = a + 3
        rows.append(
            {
                "conversations": [{"from": "human", "value": f"What is {a} plus {b}?"}],
                "chosen": {"from": "gpt", "value": f"{a} plus {b} is {a + b}."},
                "rejected": {"from": "gpt", "value": f"I do not know, maybe {a * b + 1}."},
            }
        )
        rows.append(
            {
                "conversations": [{"from": "human", "value": f"{a} 加 {b} 等于多少？"}],
                "chosen": {"from": "gpt", "value": f"{a} 加 {b} 等于 {a + b}。"},
                "rejected": {"from": "gpt", "value": "不知道。"},
            }
        )
    path = tmp / "pairs.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def test_pair_formats_registry_and_bad_rows(tmp_path: Path):
    sharegpt = [
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "2+2?"},
            ],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
        },
        {
            "conversations": [{"from": "human", "value": "x"}],
            "chosen": {"from": "gpt", "value": "same"},
            "rejected": {"from": "gpt", "value": "same"},
        },  # identical: counted and skipped
        {
            "conversations": [{"from": "human", "value": "x"}],
            "chosen": {"from": "gpt", "value": " "},
            "rejected": {"from": "gpt", "value": "no"},
        },  # empty answer: a bad row
    ]
    alpaca = [
        {"instruction": "Add", "input": "1 and 2", "chosen": "3", "rejected": "4"},
        {"instruction": "Add", "chosen": "3"},  # no rejected
    ]
    openai = [
        {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
            "chosen": {"role": "assistant", "content": "2"},
            "rejected": "3",
        }
    ]
    files = {}
    for name, rows in (("sg", sharegpt), ("al", alpaca), ("oa", openai)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(rows), encoding="utf-8")
    pairs, report = load_pairs(resolve_datasets([str(p) for p in files.values()], ranking=True))
    assert [(p.chosen, p.rejected) for p in pairs] == [("4", "5"), ("3", "4"), ("2", "3")]
    assert pairs[0].prompt[-1] == {"role": "user", "content": "2+2?"} and len(pairs[0].prompt) == 3
    assert pairs[1].prompt == [{"role": "user", "content": "Add\n1 and 2"}]
    assert pairs[2].prompt[0] == {"role": "system", "content": "Be brief."}
    assert report.identical == 1
    bad = sorted(str(b) for b in report.bad)
    assert bad[0].startswith(f"{files['al']}:2: missing field: 'rejected'"), bad
    assert bad[1].startswith(f"{files['sg']}:3: empty answer: 'chosen'"), bad

    # A LLaMA-Factory registry: "ranking": true is required for dpo, refused for sft.
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "prefs": {
                    "file_name": "sg.json",
                    "formatting": "sharegpt",
                    "ranking": True,
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
                },
                "chat": {"file_name": "al.json"},
            }
        )
    )
    pairs, _ = load_pairs(resolve_datasets("prefs", tmp_path, ranking=True))
    assert len(pairs) == 1
    with pytest.raises(DataError, match="'chat': is not preference data"):
        resolve_datasets("chat", tmp_path, ranking=True)
    with pytest.raises(DataError, match="is preference data"):
        resolve_datasets("prefs", tmp_path)
    sft_file = _write(tmp_path / "sft.json", [{"instruction": "a", "output": "b"}])
    with pytest.raises(DataError, match="needs 'chosen' and 'rejected'"):
        load_pairs(resolve_datasets(str(sft_file), ranking=True))


def _write(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_long_prompts_are_skipped_and_counted(sft_tokenizer_dir: Path, tmp_path: Path):
    from seekforge.finetune.dpo import encode_pairs
    from seekforge.finetune.encode import ChatEncoder
    from seekforge.tokenizer import load_tokenizer

    rows = [
        {"instruction": "word " * 200, "chosen": "yes", "rejected": "no"},
        {"instruction": "short", "chosen": "a long answer " * 40, "rejected": "no"},
        {"instruction": "short", "chosen": "yes", "rejected": "no"},
    ]
    pairs, _ = load_pairs(resolve_datasets(str(_write(tmp_path / "p.json", rows)), ranking=True))
    enc = ChatEncoder(load_tokenizer(sft_tokenizer_dir), 64, "last")
    kept, stats = encode_pairs(enc, pairs)
    assert (len(kept), stats.prompt_too_long, stats.truncated) == (2, 1, 1)
    assert all(len(p.chosen) <= 64 and len(p.rejected) <= 64 for p in kept)


def _run_dpo(overrides: list[str], sft_run):
    from seekforge.finetune.dpo import DPOConfig, DPOObjective

    return sft_run(overrides, cls=DPOConfig, objective=DPOObjective())


@pytest.mark.parametrize(
    "method,loss,extra",
    [
        ("lora", "dpo", ["precompute_ref_logps=false"]),
        ("full", "dpo", ["label_smoothing=0.1"]),
        ("full", "ipo", ["precompute_ref_logps=true"]),
        ("lora", "simpo", []),
        ("full", "orpo", []),
    ],
)
def test_dpo_runs_logs_rewards_and_evaluates(method, loss, extra, tiny_base: Path, tmp_path: Path, sft_run):
    data = _pairs_file(tmp_path)
    out = tmp_path / "run"
    summary, trainer, obj = _run_dpo(
        [
            f"model={tiny_base}",
            f"data={data}",
            *FAST,
            f"method={method}",
            f"loss={loss}",
            "lr=1e-3",
            "max_steps=4",
            "val_size=0.25",
            "eval_every=2",
            "log_every=1",
            f"out_dir={out}",
            *extra,
        ],
        sft_run,
    )
    assert summary["step"] == 4
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "rewards_chosen" in r]
    assert len(train) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    for r in train:
        assert set(REWARD_KEYS) <= r.keys()
        assert 0.0 <= r["rewards_accuracy"] <= 1.0
        assert r["rewards_margin"] == pytest.approx(r["rewards_chosen"] - r["rewards_rejected"], abs=1e-5)
    evals = [r for r in records if "val_loss" in r]
    assert len(evals) >= 2 and all(f"val_{k}" in r for r in evals for k in REWARD_KEYS)
    if loss == "orpo":
        assert "nll_loss" in train[0]
    if method == "lora":  # the reference is the base with the adapter off: no second model
        assert obj.ref_model is None
        assert (out / "final" / "adapter_model.safetensors").exists()
    else:
        assert (obj.ref_model is None) == (loss == "orpo" or "precompute_ref_logps=true" in extra)
        assert (out / "final" / "model.safetensors").exists() or list((out / "final").glob("*.safetensors"))


def test_dpo_learns_the_preference(tiny_base: Path, tmp_path: Path, sft_run):
    """After a few LoRA steps the training pairs' chosen answers out-score the rejected ones."""
    data = _pairs_file(tmp_path)
    out = tmp_path / "learn"
    _run_dpo(
        [
            f"model={tiny_base}",
            f"data={data}",
            *FAST,
            "method=lora",
            "lora.rank=16",
            "beta=0.5",
            "lr=5e-3",
            "max_steps=12",
            "log_every=1",
            "warmup_steps=0",
            f"out_dir={out}",
        ],
        sft_run,
    )
    records = [r for r in read_metrics(out / "metrics.jsonl") if "rewards_margin" in r]
    assert records[0]["rewards_margin"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at step 1
    assert records[-1]["rewards_margin"] > 0.5 and records[-1]["rewards_accuracy"] == 1.0
    assert records[-1]["loss"] < records[0]["loss"]


def test_resume_continues_exactly(tiny_base: Path, tmp_path: Path, sft_run):
    """4 steps in one go == 2 steps, stop, resume, 2 more (LoRA weights and data position)."""
    from safetensors.torch import load_file

    data = _pairs_file(tmp_path)
    args = [
        f"model={tiny_base}",
        f"data={data}",
        *FAST,
        "method=lora",
        "lr=5e-3",
        "warmup_steps=0",
        "schedule=constant",
    ]
    _run_dpo(args + ["max_steps=4", f"out_dir={tmp_path / 'straight'}"], sft_run)
    _run_dpo(args + ["max_steps=2", f"out_dir={tmp_path / 'resumed'}"], sft_run)
    summary, _, _ = _run_dpo(
        args + ["max_steps=4", f"out_dir={tmp_path / 'resumed'}", "resume=auto"], sft_run
    )
    assert summary["step"] == 4
    a = load_file(str(tmp_path / "straight/final/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed/final/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_cli_dpo_and_config_errors(tiny_base: Path, tmp_path: Path, capsys):
    from seekforge.cli import main

    data = _pairs_file(tmp_path)
    out = tmp_path / "cli"
    sets = [
        f"model={tiny_base}",
        f"data={data}",
        *FAST,
        "max_steps=2",
        f"out_dir={out}",
        "progress=false",
        "plot=false",
        "tensorboard=true",
        "log_every=1",
        "loss=simpo",
        "beta=2.0",
    ]
    assert main(["dpo", *[x for kv in sets for x in ("--set", kv)]]) == 0
    assert (out / "final" / "adapter_model.safetensors").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in out.rglob("events.out.tfevents.*")]
    tags = {t for ev in events for t in ev.Tags()["scalars"]}
    assert set(REWARD_KEYS) <= tags, tags
    assert main(["dpo", "--set", f"model={tiny_base}", "--set", f"data={data}", "--set", "loss=kto"]) == 2
    assert "loss" in capsys.readouterr().err
    bad = [
        "dpo",
        "--set",
        f"model={tiny_base}",
        "--set",
        f"data={data}",
        "--set",
        "loss=ipo",
        "--set",
        "label_smoothing=0.1",
        "--set",
        f"out_dir={tmp_path / 'e'}",
    ]
    assert main(bad) != 0
    assert "label_smoothing: only dpo and simpo use it" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_base: Path, tmp_path: Path, sft_run):
    """DDP over 2 CPU processes == 1 process with 2x accumulation: per-step loss, rewards, eval."""
    import os
    import subprocess
    import sys

    data = _pairs_file(tmp_path)
    sets = [
        f"model={tiny_base}",
        f"data={data}",
        "seq_len=64",
        "micro_batch_size=2",
        "batch_tokens=256",
        "method=lora",
        "lr=5e-3",
        "max_steps=3",
        "val_size=0.25",
        "eval_every=3",
        "log_every=1",
        "num_threads=1",
        "warmup_steps=5",  # quiet_args' values, so both runs use them
        "mtp_loss_weight=0",
    ]
    _run_dpo([*sets, f"out_dir={tmp_path / 'one'}"], sft_run)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "seekforge",
        "dpo",
    ]
    for s in [
        *sets,
        f"out_dir={tmp_path / 'two'}",
        "distributed=ddp",
        "progress=false",
        "plot=false",
        "tensorboard=false",
        "sample_tokens=0",
        "save_every=0",
    ]:
        cmd += ["--set", s]
    res = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-4000:]
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", *REWARD_KEYS):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a, b)
    for key in ("val_loss", *(f"val_{k}" for k in REWARD_KEYS)):
        assert one[-1][key] == pytest.approx(two[-1][key], rel=1e-4, abs=1e-6), key


def test_precomputed_reference_equals_online(tiny_base: Path, tmp_path: Path, sft_run):
    """precompute_ref_logps only changes when the reference is scored: the runs are the same."""
    data = _pairs_file(tmp_path)
    runs = {}
    for pre in (False, True):
        out = tmp_path / f"pre{pre}"
        _run_dpo(
            [
                f"model={tiny_base}",
                f"data={data}",
                *FAST,
                "method=full",
                "lr=1e-3",
                "max_steps=3",
                "log_every=1",
                "val_size=0.25",
                "eval_every=3",
                f"precompute_ref_logps={str(pre).lower()}",
                f"out_dir={out}",
            ],
            sft_run,
        )
        runs[pre] = read_metrics(out / "metrics.jsonl")
    for a, b in zip(runs[False], runs[True]):
        for key in ("loss", *REWARD_KEYS):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert runs[False][-1]["val_rewards_margin"] == pytest.approx(
        runs[True][-1]["val_rewards_margin"], abs=1e-6
    )
