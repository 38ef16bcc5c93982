"""The loop in-process: learning, accumulation equivalence, non-finite steps, checkpoints, pluggability."""

from __future__ import annotations

import json
import math

import pytest
import torch

from seekforge.train import PretrainObjective, Trainer, TrainingError
from seekforge.train import checkpoint as ckpt
from seekforge.train.metrics import read_metrics


def _losses(out_dir) -> list[float]:
    return [r["train_loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "train_loss" in r]


def test_training_reduces_loss_and_writes_everything(make_config, tmp_path):
    cfg = make_config(max_steps=30, eval_every=15, save_every=10, sample_tokens=4, plot=True,
                      tensorboard=True, keep_last=1)
    summary = Trainer(cfg).run()
    out = tmp_path / "run"
    losses = _losses(out)
    assert len(losses) == 30
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses
    records = read_metrics(out / "metrics.jsonl")
    evals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in evals] == [15, 30] and evals[1]["val_bpb"] < evals[0]["val_bpb"]
    for key in ("step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mtp_loss",
                "balance_loss", "expert_imbalance"):
        assert key in records[-1], key
    assert records[-1]["tokens"] == 30 * 1024
    # val_bpb = val_loss * tokens / (ln 2 * bytes)
    from seekforge.data.shards import TokenShards

    val = TokenShards(cfg.data.train, "val")
    assert evals[1]["val_bpb"] == pytest.approx(evals[1]["val_loss"] * evals[1]["val_tokens"] /
                                                (math.log(2) * val.num_bytes), rel=1e-9)
    # checkpoints: keep_last=1 plus the best; latest -> the final one, which is a loadable HF directory
    assert ckpt.read_pointer(out).name == "step-000030" and summary["checkpoint"].endswith("step-000030")
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["step-000030"]
    from seekforge.model import load_model

    model = load_model(out / "latest")
    assert model.config.vocab_size == 512 and (out / "latest" / "tokenizer.json").is_file()
    assert json.loads((out / "summary.json").read_text())["val_bpb"] == evals[1]["val_bpb"]
    assert (out / "loss.png").stat().st_size > 1000 and any((out / "tb").iterdir())
    assert "sample:" in (out / "train.log").read_text()


def test_grad_accumulation_matches_a_bigger_micro_batch(make_config, tmp_path):
    a = make_config(max_steps=6, micro_batch_size=8, batch_tokens=1024, out_dir=tmp_path / "a")
    b = make_config(max_steps=6, micro_batch_size=2, batch_tokens=1024, out_dir=tmp_path / "b")
    Trainer(a).run()
    Trainer(b).run()
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(la) == 6
    for x, y in zip(la, lb):
        assert abs(x - y) / x < 1e-5, (la, lb)


class FlakyObjective(PretrainObjective):
    """Pretraining whose loss is NaN on chosen (1-based) steps: a stand-in for a diverging run."""

    def __init__(self, bad_steps: set[int]) -> None:
        self.bad_steps, self.calls = bad_steps, 0

    def loss(self, model, batch):
        out = super().loss(model, batch)
        self.calls += 1
        step = (self.calls - 1) // self.trainer_accum + 1
        if step in self.bad_steps:
            out.loss = out.loss * float("nan")
        return out

    def train_loader(self, micro_batch_size, grad_accum):
        self.trainer_accum = grad_accum
        return super().train_loader(micro_batch_size, grad_accum)


def test_non_finite_steps_are_skipped_then_stop_the_run(make_config, tmp_path):
    cfg = make_config(max_steps=8, out_dir=tmp_path / "skip")
    summary = Trainer(cfg, FlakyObjective({3, 5})).run()
    assert summary["skipped_steps"] == 2 and summary["step"] == 8
    records = read_metrics(tmp_path / "skip" / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("skipped")] == [3, 5]
    assert records[2]["loss"] == "nan" and records[2]["grad_norm"] == "nan"  # JSON-safe

    cfg = make_config(max_steps=20, save_every=2, max_bad_steps=3, out_dir=tmp_path / "stop")
    expect = r"3 consecutive steps \(up to step 7\).*resume from .*step-000004"
    with pytest.raises(TrainingError, match=expect):
        Trainer(cfg, FlakyObjective({5, 6, 7, 8})).run()


def test_a_crash_while_saving_keeps_the_previous_checkpoint(make_config, tmp_path, monkeypatch):
    cfg = make_config(max_steps=6, save_every=2, keep_last=5)
    real = ckpt.write_trainer_state
    calls = []

    def crash_on_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            real(path, *args, **kwargs)  # the files are all there ... and then the process dies
            raise KeyboardInterrupt("simulated crash during save")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "write_trainer_state", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).run()
    out = tmp_path / "run"
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["step-000002"]
    assert ckpt.find_latest(out).name == "step-000002"
    assert not list(out.glob(".step-*"))  # the half-built directory was removed
    # the run resumes from the intact checkpoint and finishes
    monkeypatch.setattr(ckpt, "write_trainer_state", real)
    summary = Trainer(cfg).run()
    assert summary["step"] == 6
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 7))


def test_keep_last_and_best_are_kept(make_config, tmp_path):
    cfg = make_config(max_steps=8, save_every=2, eval_every=2, keep_last=2)
    Trainer(cfg).run()
    out = tmp_path / "run"
    names = [p.name for _, p in ckpt.list_checkpoints(out)]
    best = ckpt.read_pointer(out, "best")
    assert names[-2:] == ["step-000006", "step-000008"] and best is not None and best.name in names
    assert len(names) <= 3


class HeadOnly(PretrainObjective):
    """A different parameter selection (what LoRA does): only the output head is trained."""

    def build_model(self):
        model = super().build_model()
        for name, param in model.named_parameters():
            param.requires_grad_(name == "lm_head.weight")
        return model


def test_objective_controls_trainable_parameters(make_config, tmp_path):
    from seekforge.model import load_model

    cfg = make_config(max_steps=3, mtp_loss_weight=0.0, bias_update_speed=0.0)
    Trainer(cfg, HeadOnly()).run()
    torch.manual_seed(cfg.seed)
    init = load_model("tiny", device="cpu")  # same seed -> the same initial weights as the run
    trained = load_model(tmp_path / "run" / "latest")
    changed = {n for (n, a), b in zip(init.state_dict().items(), trained.state_dict().values())
               if not torch.equal(a, b)}
    assert changed == {"lm_head.weight"}


def test_early_stopping_on_val_bpb(make_config, tmp_path):
    # lr 0: val bpb never improves after the first eval, so patience 2 stops at the third eval
    cfg = make_config(max_steps=40, eval_every=2, save_every=2, early_stopping_patience=2, lr=0.0,
                      muon_lr=0.0, warmup_steps=0, bias_update_speed=0.0)
    summary = Trainer(cfg).run()
    assert summary["step"] == 6 and summary["stopped"].startswith("early stopping")
    assert summary["best_step"] == 2 and summary["best_checkpoint"].endswith("step-000002")
    assert ckpt.read_pointer(tmp_path / "run", "best").name == "step-000002"


def test_raw_text_is_tokenized_once_into_out_dir(tokenizer_dir, tmp_path):
    from seekforge.train.config import load_train_config

    text = tmp_path / "story.txt"
    text.write_text(" ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(600)))
    out = tmp_path / "run"
    sets = [f"data.train={text}", f"tokenizer={tokenizer_dir}", f"out_dir={out}", "model=tiny", "seq_len=32",
            "batch_tokens=256", "micro_batch_size=8", "max_steps=2", "log_every=1", "sample_tokens=3",
            "tensorboard=false", "plot=false", "progress=false", "wandb=false", "data.val_fraction=0.1"]
    summary = Trainer(load_train_config(None, sets)).run()
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    # one document: nanoGPT-style tail split
    assert manifest["val_split"] == "tail" and summary["val_bpb"] > 0
    stamp = (out / "data" / "manifest.json").stat().st_mtime_ns
    Trainer(load_train_config(None, [*sets, "max_steps=3"])).run()  # resumes, reuses the tokenized data
    assert (out / "data" / "manifest.json").stat().st_mtime_ns == stamp
    assert len(read_metrics(out / "metrics.jsonl")) == 3
