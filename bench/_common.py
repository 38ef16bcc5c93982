"""Shared setup of the serving benchmarks: a ``small-moe`` model directory with random weights and
a real 8192-token tokenizer (trained on ../shared/data when present, else on generated zh+en text).
Built once under ``--workdir`` (default: $TMPDIR/seekforge-bench) and reused by later runs."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import torch


def corpus() -> list[str]:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrain"
    texts: list[str] = []
    if (shared / "c4_demo.jsonl").is_file():
        with open(shared / "c4_demo.jsonl", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(400), f)]
    if (shared / "tang_poems.jsonl").is_file():
        with open(shared / "tang_poems.jsonl", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(3000), f)]
    if not texts:
        rng = random.Random(0)
        en = ["the", "model", "learns", "to", "predict", "the", "next", "token", "from", "data", "and",
              "code", "with", "many", "steps"]
        zh = list("我们用数据训练一个语言模型它学会预测下一个词元中文和英文都要好春风明月山水")
        texts = [" ".join(rng.choices(en, k=60)) + "。" + "".join(rng.choices(zh, k=120))
                 for _ in range(3000)]
    return texts


def small_moe_dir(workdir: Path, preset: str = "small-moe") -> Path:
    """``workdir/<preset>``: random-init model (seed 0, fp32) + tokenizer, built on first use."""
    from seekforge.model import load_model, save_model
    from seekforge.model.config import preset_config
    from seekforge.tokenizer import load_tokenizer, train_tokenizer

    out = workdir / preset
    if (out / "config.json").is_file():
        return out
    vocab = preset_config(preset).vocab_size
    tok_dir = train_tokenizer(corpus(), vocab_size=vocab, out_dir=workdir / f"tok{vocab}")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = load_model(preset, device="cpu", dtype=torch.float32)
    return save_model(model, out, tokenizer=tok)


DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "seekforge-bench"
