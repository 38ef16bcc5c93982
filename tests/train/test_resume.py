"""Real processes: SIGKILL + resume is bit-identical to an uninterrupted run; SIGTERM saves and exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seekforge.train import checkpoint as ckpt
from seekforge.train.metrics import read_metrics

TIMING_KEYS = {"tokens_per_s", "mfu", "elapsed_s"}


def _cmd(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "seekforge", "train"] + [a for o in overrides for a in ("--set", o)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            err = proc.stderr.read()[-3000:]
            raise AssertionError(f"run ended (rc {proc.returncode}) before the condition: {err}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.01)


def _comparable(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(out / "metrics.jsonl")]


@pytest.fixture(params=["single", "mixture"])
def data_settings(request, tiny_shards, counting_shards) -> dict:
    """One shard folder, or two sources under a loss-driven schedule (its weights and reference
    losses, the per-source positions and rounding carries are then part of what must resume)."""
    if request.param == "single":
        return {}
    return {"data.train.prose.path": tiny_shards, "data.train.prose.weight": 0.6,
            "data.train.count.path": counting_shards, "data.train.count.weight": 0.4,
            "data.schedule.kind": "loss", "data.schedule.step_size": 20.0}


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(overrides, data_settings, tmp_path):
    common = dict(max_steps=24, save_every=4, eval_every=8, keep_last=10, **data_settings)
    ref_out, run_out = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.run(_cmd(overrides(ref_out, **common)), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    proc = subprocess.Popen(_cmd(overrides(run_out, **common)), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: ckpt.find_latest(run_out) is not None, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.find_latest(run_out)
    steps_logged = len(read_metrics(run_out / "metrics.jsonl"))
    assert killed_at is not None and int(killed_at.name.split("-")[1]) < 24

    again = subprocess.run(_cmd(overrides(run_out, **common)), env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {killed_at.name}" in again.stderr
    a = load_file(ref_out / "step-000024" / "model.safetensors")
    b = load_file(run_out / "step-000024" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(ref_out / "step-000024" / "trainer_state" / "state.pt", weights_only=False)
    sb = torch.load(run_out / "step-000024" / "trainer_state" / "state.pt", weights_only=False)
    assert sa["loader"] == sb["loader"]
    for (ka, va), (kb, vb) in zip(sa["optimizer"]["state"].items(), sb["optimizer"]["state"].items()):
        assert ka == kb and all(torch.equal(va[n], vb[n]) for n in va)
    ma, mb = _comparable(ref_out), _comparable(run_out)
    assert ma == mb, f"killed after {steps_logged} logged steps"
    if data_settings:  # the schedule really moved the weights, and both runs saw the same mixture
        evals = [r for r in ma if "mix_weight/prose" in r]
        assert len(evals) == 3 and evals[-1]["mix_weight/prose"] != 0.6
        assert sa["loader"]["schedule"]["reference"] is not None


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(overrides, tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen(_cmd(overrides(out, max_steps=100000, save_every=0)), env=_env(),
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(read_metrics(out / "metrics.jsonl")) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "received SIGTERM" in err
    latest = ckpt.find_latest(out)
    assert latest is not None and (latest / "model.safetensors").is_file()
    step = int(latest.name.split("-")[1])
    assert step >= 3 and read_metrics(out / "metrics.jsonl")[-1]["step"] == step
