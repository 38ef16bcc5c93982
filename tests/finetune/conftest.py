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

from seekforge.train.config import QUIET_RUN

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
    """Trainer settings for fast test runs: a quiet run (no eval samples, plots, tensorboard ...),
    few log lines, a short warmup and no MTP loss."""
    return [*QUIET_RUN, "log_every=10", "warmup_steps=5", "mtp_loss_weight=0"]


def run_sft(overrides: list[str], cls=None, objective=None):
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


@pytest.fixture(scope="session")
def sft_run():
    """``run_sft`` for tests (fixtures are the way to share helpers under --import-mode=importlib)."""
    return run_sft


# "Pretraining" text that uses the new name/author as ordinary words, so their tokens are trained
# before the identity LoRA (a real base has seen every token of its vocabulary).
NAME_TEXT = """The blacksmith heated the iron in the Forge until it glowed.
Ada Lovelace wrote the first published computer program.
A Forge is a place where metal is shaped by fire and hammer.
Ada is also the name of a programming language used in aviation.
We walked past the old Forge on the way to the market.
Ada liked mathematics, poetry and machines.
铁匠在 Forge 里把铁烧红，然后用锤子敲打。
Ada 是一位数学家，她写下了第一个计算机程序。
The Forge was quiet at night, but busy every morning.
Ada and her friends met at the library after school.
这个 Forge 已经有一百年的历史了。
Ada 喜欢读书，也喜欢写诗。
Nobody in the village knew the Forge better than the old smith.
Ada asked a question that nobody could answer.
他们在 Forge 旁边开了一家小店。
Ada 说：学习是一件快乐的事。
"""


@pytest.fixture(scope="session")
def v4_base(tmp_path_factory, sft_tokenizer_dir: Path) -> Path:
    """A randomly initialised seekforge ``tiny-v4`` dir (every attention type, hash and learned-router
    MoE layers, mHC) with the SFT tokenizer."""
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(sft_tokenizer_dir)
    torch.manual_seed(0)
    model = load_model("tiny-v4", device="cpu", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    return save_model(model, tmp_path_factory.mktemp("v4_base") / "base", tokenizer=tok)


@pytest.fixture(scope="session")
def warm_base(tmp_path_factory, tiny_base: Path, sft_dir: Path) -> Path:
    """``tiny_base`` after a short full fine-tune: a chat model that says it is "Nemo" by "Acme".

    A frozen *random* base cannot be steered by LoRA (its lm_head rows are ~0.006 in scale, so no
    hidden state makes any token likely); a real user's base is pretrained. This stands in for one:
    identity data with another name, plus a little text in which "Forge" and "Ada" occur.
    """
    logging.getLogger("seekforge").setLevel(logging.WARNING)
    root = tmp_path_factory.mktemp("warm")
    text = root / "names.txt"
    text.write_text(NAME_TEXT, encoding="utf-8")
    run_sft(
        [
            f"model={tiny_base}",
            f"data=[{sft_dir}/identity.json,{text}]",
            "template_vars={name: Nemo, author: Acme}",
            "method=full",
            "lr=1e-2",
            "max_steps=80",
            "seq_len=128",
            "micro_batch_size=8",
            "batch_tokens=1024",
            f"out_dir={root / 'run'}",
        ]
    )
    return root / "run" / "final"
