"""2 CPU processes (gloo, torchrun) give the same per-step loss as 1 process with 2x accumulation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from seekforge.train import Trainer
from seekforge.train.metrics import read_metrics


def _losses(out) -> list[float]:
    return [r["train_loss"] for r in read_metrics(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory):
    """1 process, micro_batch_size 4 x grad_accum 2 (batch 512 tokens)."""
    from seekforge.train.config import load_train_config

    out = tmp_path_factory.mktemp("ref") / "run"
    sets = _sets(tiny_shards, out)
    cfg = load_train_config(None, sets)
    assert cfg.grad_accum(1) == 2 and cfg.grad_accum(2) == 1
    Trainer(cfg).run()
    return out


def _sets(shards, out, **extra) -> list[str]:
    base = {"data.train": shards, "out_dir": out, "seq_len": 64, "batch_tokens": 512, "micro_batch_size": 4,
            "max_steps": 6, "warmup_steps": 2, "lr": 3e-3, "eval_every": 3, "log_every": 1,
            "sample_tokens": 0,
            "tensorboard": False, "plot": False, "progress": False, "wandb": False, "num_threads": 1}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_accumulation(reference, tiny_shards, tmp_path, strategy):
    out = tmp_path / strategy
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "seekforge", "train"]
    for s in _sets(tiny_shards, out, distributed=strategy):
        cmd += ["--set", s]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    one, two = _losses(reference), _losses(out)
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert abs(a - b) / a <= 1e-4, (one, two)
    v1 = [r["val_bpb"] for r in read_metrics(reference / "metrics.jsonl") if "val_bpb" in r]
    v2 = [r["val_bpb"] for r in read_metrics(out / "metrics.jsonl") if "val_bpb" in r]
    assert v1 == pytest.approx(v2, rel=1e-5)
    assert (out / "latest" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_processes_match_one_on_a_loss_driven_mixture(tiny_shards, counting_shards, tmp_path):
    """Both ranks plan the same rows per source and re-weight identically from all-reduced val bpb."""
    from seekforge.train.config import load_train_config

    mix = {"data.train.prose.path": tiny_shards, "data.train.count.path": counting_shards,
           "data.schedule.kind": "loss", "data.schedule.step_size": 20.0}

    def sets(out, **extra):
        return [s for s in _sets(tiny_shards, out, **mix, **extra) if not s.startswith("data.train=")]

    Trainer(load_train_config(None, sets(tmp_path / "one"))).run()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "seekforge", "train"]
    for s in sets(tmp_path / "two", distributed="ddp"):
        cmd += ["--set", s]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    one, two = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("one", "two"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(7))  # step 0: the reference
    for a, b in zip(one[1:], two[1:]):
        assert abs(a["train_loss"] - b["train_loss"]) / a["train_loss"] <= 1e-4, (a, b)
    evals = [(a, b) for a, b in zip(one, two) if "mix_weight/prose" in a]
    assert len(evals) == 2 and evals[-1][0]["mix_weight/prose"] != 0.5
    for a, b in evals:
        assert a["mix_tokens/prose"] == b["mix_tokens/prose"]
        assert a["mix_weight/prose"] == pytest.approx(b["mix_weight/prose"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model,stage", [("tiny-dsa", None), ("tiny-v4", None), ("tiny-v4", "sparse")])
def test_torchrun_ddp_on_the_newer_architectures(tiny_shards, tmp_path, model, stage):
    """DeepSeek-V3.2 (sparse attention) and V4 under torchrun: 2 processes match 1, with the
    indexers frozen (no stage) or trained by their KL next to the model (V4's sparse stage)."""
    from seekforge.train.config import load_train_config

    ref, out = tmp_path / "one", tmp_path / "two"
    extra = {"model": model, "dsa_stage": stage} if stage else {"model": model}
    Trainer(load_train_config(None, _sets(tiny_shards, ref, **extra))).run()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "seekforge", "train"]
    for s in _sets(tiny_shards, out, distributed="ddp", **extra):
        cmd += ["--set", s]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    one, two = _losses(ref), _losses(out)
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert abs(a - b) / a <= 1e-4, (model, one, two)
