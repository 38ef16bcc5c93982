"""Calibration / evaluation text for compression: read documents, make token windows, measure bits per byte.

One reader for ``quantize --calib``, ``prune --data`` and ``bench/compress.py``: any file or folder
:func:`seekforge.data.readers.iter_documents` reads (txt, jsonl, json, parquet, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


@dataclass
class TokenWindows:
    """Documents as token lists (each starting with BOS, as ``seekforge eval --ppl`` encodes them),
    and the same documents as one BOS-separated stream cut into rows of ``seq_len + 1`` tokens that
    overlap by one token (calibration batches for AWQ and expert statistics)."""

    rows: list[Tensor]  # each [n <= seq_len + 1] int64
    num_bytes: int  # UTF-8 bytes of the documents' text
    num_docs: int
    docs: list[list[int]] = field(default_factory=list)


def read_texts(path: str | Path, max_docs: int | None = None, what: str = "calibration data") -> list[str]:
    """Up to ``max_docs`` non-empty documents from ``path``; clear errors when missing or empty."""
    from seekforge.data.readers import iter_documents

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    texts: list[str] = []
    for doc in iter_documents(path):
        if doc.text.strip():
            texts.append(doc.text)
        if max_docs is not None and len(texts) >= max_docs:
            break
    if not texts:
        raise ValueError(f"{what} {path} holds no non-empty documents (expected text, e.g. a .txt "
                         "file or a .jsonl file with a 'text' field)")
    return texts


def token_windows(tokenizer: Any, texts: list[str], seq_len: int = 256,
                  max_tokens: int | None = None) -> TokenWindows:
    docs: list[list[int]] = []
    bos = tokenizer.bos_token_id
    used_bytes, n_tokens = 0, 0
    for text in texts:
        docs.append(([bos] if bos is not None else []) + tokenizer.encode(text, add_special_tokens=False))
        used_bytes += len(text.encode("utf-8"))
        n_tokens += len(docs[-1])
        if max_tokens is not None and n_tokens >= max_tokens:
            break
    ids = torch.tensor([t for d in docs for t in d], dtype=torch.long)
    rows = [ids[i : i + seq_len + 1] for i in range(0, max(len(ids) - 1, 1), seq_len)]
    return TokenWindows([r for r in rows if r.numel() > 1], used_bytes, len(docs), docs)


def shard_windows(path: str | Path, split: str = "val", seq_len: int = 256,
                  max_tokens: int | None = None) -> TokenWindows:
    """The same from a ``seekforge data tokenize`` / training-run token directory (its documents
    already start with BOS); ``num_bytes`` is the split's (all of its documents)."""
    from seekforge.data.shards import TokenShards

    shards = TokenShards(path, split)
    if shards.num_docs == 0:
        raise ValueError(f"{path}: split {split!r} has no documents")
    docs: list[list[int]] = []
    n_tokens = 0
    for doc in shards.iter_docs():
        docs.append(doc.tolist())
        n_tokens += len(docs[-1])
        if max_tokens is not None and n_tokens >= max_tokens:
            break
    ids = torch.tensor([t for d in docs for t in d], dtype=torch.long)
    rows = [ids[i : i + seq_len + 1] for i in range(0, max(len(ids) - 1, 1), seq_len)]
    whole = len(docs) == shards.num_docs
    return TokenWindows([r for r in rows if r.numel() > 1], shards.num_bytes if whole else 0, len(docs), docs)


def run_validation_data(model_dir: str | Path) -> Path | None:
    """The tokenized validation split that ``seekforge train`` made for this model, if recorded.

    A training run writes its token shards (train and val splits) to ``OUT/data`` and its checkpoints
    to ``OUT/step-N`` (``trainer_state/config.yaml`` names ``out_dir``) and ``OUT/final``. Returns
    that ``data`` directory when it has a non-empty val split and the model's vocabulary, else None.
    """
    import json

    import yaml

    model_dir = Path(model_dir)
    runs = []
    state = model_dir / "trainer_state" / "config.yaml"
    if state.is_file():
        out_dir = (yaml.safe_load(state.read_text(encoding="utf-8")) or {}).get("out_dir")
        if out_dir:
            runs.append(Path(out_dir))
    if (model_dir.parent / "summary.json").is_file():  # OUT/final next to OUT/summary.json
        runs.append(model_dir.parent)
    vocab = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    for run in runs:
        manifest = run / "data" / "manifest.json"
        if not manifest.is_file():
            continue
        info = json.loads(manifest.read_text(encoding="utf-8"))
        if info.get("splits", {}).get("val", {}).get("docs") and info.get("vocab_size") == vocab:
            return manifest.parent
    return None


@torch.no_grad()
def bits_per_byte(model: torch.nn.Module, windows: TokenWindows, batch_size: int = 8) -> float:
    """Bits per byte of the windows' documents, measured exactly as ``seekforge eval MODEL --ppl FILE``
    measures a file holding them (:func:`seekforge.eval.perplexity.score_documents`: each document
    on its own from BOS, the model's context window, half-window stride, same batching)."""
    from seekforge.eval.models import context_length
    from seekforge.eval.perplexity import score_documents
    from seekforge.eval.scoring import SeekforgeScorer

    if not windows.num_bytes:
        raise ValueError("bits per byte needs the documents' byte count (a whole split or text documents)")
    was_training = model.training
    scorer = SeekforgeScorer(model, context_length(model.config), batch_size, "compress")
    nll, _, _ = score_documents(windows.docs, scorer, scorer.window // 2, batch_size)
    scorer.close()
    model.train(was_training)
    return nll / math.log(2) / windows.num_bytes


__all__ = ["TokenWindows", "read_texts", "token_windows", "shard_windows", "bits_per_byte"]
