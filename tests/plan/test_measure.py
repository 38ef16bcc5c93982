"""``seekforge plan --measure``: real training steps on this CPU against the memory estimate (±20%)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seekforge.config import ConfigError
from seekforge.plan.measure import read_metrics

# The presets are checked against a real run by default (~40 s and ~85 s on a 2-core CPU);
# `pytest -m "not slow"` leaves out the larger one.


def write_shards(out: Path, vocab: int, train_tokens: int = 20_000, val_tokens: int = 200) -> str:
    """Random-token shards (the content does not matter for memory), documents of 200 tokens."""
    from seekforge.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    writer = ShardWriter(out, vocab, 0)
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        ids = rng.integers(1, vocab, size=n)
        ids[::200] = 0
        docs = n // 200
        writer.add(split, ids, np.full(docs, 200), np.full(docs, 800))
    writer.finish()
    return str(out)


@pytest.mark.slow
@pytest.mark.parametrize("preset, vocab, seq_len, micro_batch", [
    ("small-moe", 8192, 256, 4),
    pytest.param("100m-moe", 32000, 64, 2, marks=pytest.mark.slow),  # ~85 s on 2 shared cores
    ("small-v4", 8192, 256, 4),  # DeepSeek-V4: explicit attention scores and mHC streams (~60 s)
])
def test_measured_peak_memory_matches_estimate(run_plan, tmp_path, preset, vocab, seq_len, micro_batch):
    data = write_shards(tmp_path / "shards", vocab)
    r = run_plan(["--preset", preset, "--hardware", "cpu", "--measure", "--measure-steps", "2",
                  "--data", data, "--seq-len", str(seq_len), "--micro-batch", str(micro_batch),
                  "--global-batch", str(seq_len * micro_batch), "--tokens", "1M"])
    measured = r["measured"]
    estimate = r["memory_per_device_bytes"]["total"]
    assert measured["peak_memory_bytes"] > 0 and measured["tokens_per_s"] > 0
    assert estimate == pytest.approx(measured["peak_memory_bytes"], rel=0.20), \
        f"estimate {estimate / 2**20:.0f} MiB vs measured {measured['peak_memory_bytes'] / 2**20:.0f} MiB"


def test_read_metrics_skips_warmup(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "tokens_per_s": 10, "mfu": 0.01}\n{"step": 2, "tokens_per_s": 100, "mfu": 0.1}\n'
        '{"step": 3, "tokens_per_s": 120, "mfu": 0.12}\n{"step": 3, "val_loss": 3.0}\n')
    m = read_metrics(tmp_path)
    assert m["tokens_per_s"] == 110 and m["mfu"] == pytest.approx(0.11) and m["steps_logged"] == 3
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "missing")


def test_measured_numbers_are_printed_next_to_the_estimate(run_plan):
    from seekforge.plan.cli import format_table

    r = run_plan(["--preset", "small-moe", "--hardware", "rtx-4090", "--tokens", "1B"])
    r["measured"] = {"peak_memory_bytes": r["memory_per_device_bytes"]["total"] // 2, "tokens_per_s": 1234.0,
                     "mfu": 0.05}
    out = format_table(r)
    assert "measured (this machine)" in out and "+100%" in out and "1,234" in out and "5.0%" in out


def test_measure_needs_data_and_a_small_preset(run_plan):
    with pytest.raises(ConfigError, match="--measure needs training data"):
        run_plan(["--preset", "tiny", "--measure"])
    with pytest.raises(ConfigError, match="too large to train here"):
        run_plan(["--preset", "v3", "--measure", "--data", "x"])
    with pytest.raises(ConfigError, match="only supports --method pretrain"):
        run_plan(["--preset", "tiny", "--measure", "--method", "lora", "--data", "x"])


def test_train_command_is_a_quiet_run_that_logs_every_step():
    from seekforge.plan.measure import train_command
    from seekforge.train.config import load_train_config

    cmd = train_command(preset="tiny", config=None, steps=3, out_dir="o", seq_len=64, batch_tokens=256,
                        micro_batch=2, data="shards", tokenizer=None, extra=["eval_every=7"])
    sets = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
    cfg = load_train_config(None, sets)
    assert (cfg.max_steps, cfg.log_every, cfg.warmup_steps, cfg.micro_batch_size) == (3, 1, 0, 2)
    assert not any([cfg.plot, cfg.tensorboard, cfg.wandb, cfg.progress]) and cfg.resume == "never"
    assert cfg.eval_every == 7  # the caller's extra overrides come last and win
