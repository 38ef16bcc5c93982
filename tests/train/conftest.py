"""Fixtures for the trainer tests: tiny token shards and a fast config for the ``tiny`` preset."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest


def synthetic_corpus(n_docs: int = 300, seed: int = 0) -> list[str]:
    """Learnable English + Chinese text (a small grammar), ~60 KB: loss falls fast on it."""
    rng = random.Random(seed)
    subjects = ["the model", "a student", "the old cat", "my friend", "the teacher", "this robot"]
    verbs = ["reads", "writes", "learns", "likes", "finds", "counts"]
    objects = ["a book", "the data", "many tokens", "the answer", "some code", "the stars"]
    zh = ["我们训练模型。", "模型学习数据。", "今天天气很好。", "老师写代码。", "学生读书。"]
    docs = []
    for _ in range(n_docs):
        n = rng.randint(3, 8)
        sents = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(n)]
        sents += rng.sample(zh, k=2)
        docs.append(" ".join(sents))
    return docs


@pytest.fixture(scope="session")
def tiny_shards(tokenizer_dir: Path, tmp_path_factory) -> Path:
    """Token shards (train + val by hash, 10%) of :func:`synthetic_corpus` with the 512-token tokenizer."""
    from seekforge.data.tokenize import tokenize_to_shards

    root = tmp_path_factory.mktemp("shards")
    src = root / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in synthetic_corpus()),
                   encoding="utf-8")
    out = root / "shards"
    tokenize_to_shards(src, tokenizer_dir, out, val_fraction=0.1, workers=0)
    return out


def counting_corpus(n_docs: int = 200, seed: int = 1) -> list[str]:
    """A second, differently distributed source for mixtures: number words in order, zh and en."""
    rng = random.Random(seed)
    en = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    zh = "一二三四五六七八九十"
    docs = []
    for _ in range(n_docs):
        a = rng.randint(0, 5)
        docs.append(" ".join(en[a:a + 5]) + "。" + "".join(zh[a:a + 5]) + "。" + " ".join(en[a:a + 5]))
    return docs


@pytest.fixture(scope="session")
def counting_shards(tokenizer_dir: Path, tmp_path_factory) -> Path:
    """Token shards (train + val, 10%) of :func:`counting_corpus`, same tokenizer as ``tiny_shards``."""
    from seekforge.data.tokenize import tokenize_to_shards

    root = tmp_path_factory.mktemp("counting")
    src = root / "counting.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in counting_corpus()),
                   encoding="utf-8")
    tokenize_to_shards(src, tokenizer_dir, root / "shards", val_fraction=0.1, workers=0)
    return root / "shards"


def fast_overrides(shards: Path, out_dir: Path, **extra: Any) -> list[str]:
    """``--set`` overrides for a few-second tiny run (no plots/TensorBoard/samples unless asked)."""
    base = {"data.train": str(shards), "out_dir": str(out_dir), "model": "tiny", "seq_len": 64,
            "batch_tokens": 1024, "micro_batch_size": 8, "max_steps": 20, "warmup_steps": 2, "lr": 3e-3,
            "eval_every": 0, "save_every": 0, "log_every": 1, "sample_tokens": 0, "tensorboard": False,
            "plot": False, "progress": False, "wandb": False, "num_threads": 1}
    base.update(extra)
    if any(k.startswith("data.train.") for k in base):
        del base["data.train"]  # a mixture given source by source replaces the single folder
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def overrides(tiny_shards: Path):
    """``overrides(out_dir, **extra) -> ["k=v", ...]`` for ``seekforge train --set`` (subprocess tests)."""
    return lambda out_dir, **extra: fast_overrides(tiny_shards, out_dir, **extra)


@pytest.fixture
def make_config(tiny_shards: Path, tmp_path: Path):
    """``make_config(**overrides) -> TrainConfig`` for a fast tiny run in ``tmp_path/run``."""
    from seekforge.train.config import load_train_config

    def make(**extra: Any):
        out = extra.pop("out_dir", tmp_path / "run")
        return load_train_config(None, fast_overrides(tiny_shards, out, **extra))

    return make
