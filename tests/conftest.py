"""Shared test fixtures. Data from ../shared/data is read in place (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (tinyshakespeare, wiki/c4 samples, Tang poems, SFT demo sets)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def _tokenizer_corpus() -> list[str]:
    """~130 KB of English + Chinese text: shared samples if present, else generated sentences."""
    import json
    import random

    pretrain = SHARED_DATA / "pretrain"
    if (pretrain / "c4_demo.jsonl").is_file() and (pretrain / "tang_poems.jsonl").is_file():
        with open(pretrain / "c4_demo.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for _, line in zip(range(40), f)]
        with open(pretrain / "tang_poems.jsonl", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(200), f)]
        return texts
    rng = random.Random(0)
    en = "the model learns to predict the next token from data and code with 123 steps".split()
    zh = list("我们用数据训练一个语言模型它学会预测下一个词元中文和英文都要好")
    return [" ".join(rng.choices(en, k=40)) + ". " + "".join(rng.choices(zh, k=60)) + "。\n"
            for _ in range(400)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer dir, vocab 512 (the ``tiny`` preset), with the chat template.

    Trained once per test session in well under a second; load it with
    ``seekforge.tokenizer.load_tokenizer(tokenizer_dir)``. bos=0, eos=1, pad=2.
    """
    from seekforge.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer") / "tok512"
    return train_tokenizer(_tokenizer_corpus(), vocab_size=512, out_dir=out)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised ``tiny`` model (seed 0, float32, with its MTP layer) saved together with
    the ``tokenizer_dir`` tokenizer: a complete model directory for inference/serving tests."""
    import torch

    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(tokenizer_dir)
    model = load_model("tiny", device="cpu", dtype=torch.float32)
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny-chat", tokenizer=tok)


# Runs before any test imports torch (conftest is loaded first; nothing above imports torch).
# PyTorch's OpenMP threads spin while they wait for each other; on a machine with more runnable
# threads than cores (parallel test runs, other jobs) a descheduled thread then stalls every small op:
# measured here with 2 threads under load 5, one 512x64 grouped matmul took 218 ms instead of 0.3 ms.
# PASSIVE makes waiting threads sleep (docs/LOG.md, trainer notes). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
