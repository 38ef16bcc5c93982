"""``seekforge plan --measure``: run a few real training steps and report what they used.

The trainer runs as a child process (``python -m seekforge train ...``) under a tiny wrapper, which
is the trainer's only parent, so ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in the wrapper is exactly
the trainer's peak resident memory (psutil polling of the process tree is kept as a cross-check).
Throughput and MFU come from the trainer's own ``metrics.jsonl`` (one JSON object per logged step
with ``tokens_per_s`` and ``mfu``); the first logged step is skipped because it includes warm-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from seekforge.config import ConfigError
from seekforge.train.config import QUIET_RUN


def train_command(*, preset: str | None, config: str | None, steps: int, out_dir: str, seq_len: int | None,
                  batch_tokens: int | None, micro_batch: int | None, data: str | None, tokenizer: str | None,
                  checkpointing: str | None = None, extra: list[str] | None = None) -> list[str]:
    """The ``seekforge train`` command line for a short measuring run."""
    cmd = [sys.executable, "-m", "seekforge", "train"]
    if config:
        cmd.append(config)
    # Every step logged (throughput per step), no warmup (steps at full LR, like the steady state).
    sets = [f"max_steps={steps}", f"out_dir={out_dir}", *QUIET_RUN, "log_every=1", "warmup_steps=0"]
    given = {"model": preset, "seq_len": seq_len, "batch_tokens": batch_tokens,
             "micro_batch_size": micro_batch, "data.train": data, "tokenizer": tokenizer}
    sets += [f"{key}={value}" for key, value in given.items() if value]
    if checkpointing:
        sets.append(f"activation_checkpointing={'true' if checkpointing == 'full' else 'false'}")
    sets += list(extra or [])
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_measured(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run ``cmd`` under the rusage wrapper; return its exit code, output tail and peak RSS (bytes)."""
    wrapper = [sys.executable, "-m", "seekforge.plan.measure", "--", *cmd]
    peak_polled = 0
    proc = subprocess.Popen(wrapper, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak_polled
        while not stop.is_set():
            peak_polled = max(peak_polled, _tree_rss(proc.pid) - _own_rss(proc.pid))
            stop.wait(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise ConfigError(f"--measure: the training run did not finish within {timeout:.0f} s; "
                          f"command: {' '.join(cmd)}\n{output[-2000:]}") from None
    finally:
        stop.set()
        poller.join()
    maxrss = None
    lines = output.splitlines()
    for line in lines:
        if line.startswith("SEEKFORGE_MAXRSS_KB="):
            maxrss = int(line.split("=", 1)[1]) * 1024  # Linux reports KiB
    output = "\n".join(line for line in lines if not line.startswith("SEEKFORGE_MAXRSS_KB="))
    return {"returncode": proc.returncode, "output": output, "peak_rss_bytes": maxrss,
            "peak_polled": peak_polled}


def _own_rss(pid: int) -> int:
    """The wrapper's own RSS (subtracted so the polled number is the trainer tree's)."""
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def read_metrics(out_dir: str | Path) -> dict[str, float | None]:
    """Median ``tokens_per_s`` and ``mfu`` over the logged steps, the first (warm-up) one skipped."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        found = sorted(Path(out_dir).rglob("metrics.jsonl"))
        if not found:
            raise ConfigError(f"--measure: the trainer wrote no metrics.jsonl under {out_dir}")
        path = found[0]
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("tokens_per_s") is not None:
            rows.append(row)
    if not rows:
        raise ConfigError(f"--measure: {path} has no step with tokens_per_s")
    steady = rows[1:] or rows

    def median(key: str) -> float | None:
        values = [float(r[key]) for r in steady if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {"tokens_per_s": median("tokens_per_s"), "mfu": median("mfu"), "steps_logged": len(rows)}


def measure(*, steps: int, timeout: float = 600.0, **kwargs: Any) -> dict[str, Any]:
    """Run ``steps`` training steps and return ``peak_memory_bytes``, ``tokens_per_s``, ``mfu``."""
    if steps < 2:
        raise ConfigError(f"--measure-steps must be >= 2 (the first step is warm-up), got {steps}")
    with tempfile.TemporaryDirectory(prefix="seekforge-plan-measure-") as tmp:
        out_dir = os.path.join(tmp, "run")
        cmd = train_command(steps=steps, out_dir=out_dir, **kwargs)
        t0 = time.perf_counter()
        res = run_measured(cmd, timeout)
        wall = time.perf_counter() - t0
        if res["returncode"] != 0:
            raise ConfigError(f"--measure: `seekforge train` failed (exit {res['returncode']}); command: "
                              f"{' '.join(cmd)}\n{res['output'][-3000:]}")
        metrics = read_metrics(out_dir)
    peak = res["peak_rss_bytes"] or res["peak_polled"]
    return {"peak_memory_bytes": int(peak), "peak_memory_polled_bytes": int(res["peak_polled"]),
            "tokens_per_s": metrics["tokens_per_s"], "mfu": metrics["mfu"], "steps": steps,
            "wall_s": wall, "command": " ".join(cmd)}


def _wrapper_main(argv: list[str]) -> int:
    """``python -m seekforge.plan.measure -- CMD...``: run CMD, then print its peak RSS in KiB."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m seekforge.plan.measure -- COMMAND ...", file=sys.stderr)
        return 2
    rc = subprocess.call(argv)
    sys.stdout.flush()
    print(f"SEEKFORGE_MAXRSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(_wrapper_main(sys.argv[1:]))
