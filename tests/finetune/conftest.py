"""Fixtures for the fine-tuning tests: a tokenizer fitted to the SFT demo data, tiny base models.

The SFT tokenizer is trained on the shared SFT demo sets (vocab 1,500) so that Chinese answers
are a few tokens per character rather than raw bytes: the trainer runs stay short on a CPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

SFT = "sft"


def sft_rows(shared_data: Path, name: str) -> list[dict]:
    return json.loads((shared_data / SFT / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def sft_dir(shared_data: Path) -> Path:
    return shared_data / SFT


@pytest.fixture(scope="session")
def sft_tokenizer_dir(tmp_path_factory, shared_data: Path) -> Path:
    from seekforge.tokenizer import train_tokenizer

    texts = []
    for name in ("identity", "alpaca_en_demo", "alpaca_zh_demo"):
        for r in sft_rows(shared_data, name):
            texts.append(" ".join(str(r.get(k, "")) for k in ("instruction", "input", "output")))
    texts += ["Forge Ada Nemo Acme"] * 3  # the names used by the identity test
    out = tmp_path_factory.mktemp("sft_tok") / "tok"
    return train_tokenizer(texts, vocab_size=1500, out_dir=out)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, sft_tokenizer_dir: Path) -> Path:
    """A randomly initialised seekforge ``tiny`` model dir with the SFT tokenizer."""
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(sft_tokenizer_dir)
    torch.manual_seed(0)
    model = load_model(
        "tiny",
        device="cpu",
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return save_model(model, tmp_path_factory.mktemp("tiny_base") / "base", tokenizer=tok)


def quiet_args() -> list[str]:
    """Trainer settings for fast test runs (no eval samples, no plots, no tensorboard)."""
    return [
        "progress=false",
        "sample_tokens=0",
        "tensorboard=false",
        "plot=false",
        "wandb=off",
        "log_every=10",
        "eval_every=0",
        "save_every=0",
        "warmup_steps=5",
        "mtp_loss_weight=0",
        "resume=never",
    ]


def run_sft(overrides: list[str], cls=None, objective=None):  # noqa: ANN001, ANN201
    """Run an SFT/distill config through the real trainer; returns (summary, trainer, objective)."""
    from seekforge.config import load_config
    from seekforge.finetune.cli import publish_final
    from seekforge.finetune.sft import SFTConfig, SFTObjective
    from seekforge.train.trainer import Trainer

    cfg = load_config(cls or SFTConfig, None, quiet_args() + overrides)
    obj = objective or SFTObjective()
    trainer = Trainer(cfg, obj)
    summary = trainer.run()
    publish_final(summary, cfg.out_dir)
    return summary, trainer, obj


def losses(out_dir: Path) -> list[float]:
    from seekforge.train.metrics import read_metrics

    return [r["train_loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl") if "train_loss" in r]


@pytest.fixture(scope="session")
def warm_base(tmp_path_factory, tiny_base: Path, sft_dir: Path) -> Path:
    """``tiny_base`` after a short full fine-tune that makes it a chat model called "Nemo" by "Acme".

    A frozen *random* base cannot be steered by LoRA (its lm_head rows are ~0.006 in scale, so no
    hidden state can make any token likely); a real user's base is pretrained. This stands in for
    one: identity data with another name plus general alpaca data so the vocabulary is trained.
    """
    logging.getLogger("seekforge").setLevel(logging.WARNING)
    out = tmp_path_factory.mktemp("warm") / "run"
    data = f"[{sft_dir}/identity.json,{sft_dir}/alpaca_en_demo.json,{sft_dir}/alpaca_zh_demo.json]"
    run_sft(
        [
            f"model={tiny_base}",
            f"data={data}",
            "max_samples=400",
            "template_vars={name: Nemo, author: Acme}",
            "method=full",
            "lr=1e-2",
            "max_steps=120",
            "seq_len=128",
            "micro_batch_size=8",
            "batch_tokens=1024",
            f"out_dir={out}",
        ]
    )
    return out / "final"
