"""Calibration / evaluation text for compression: read documents, make token windows, measure bits per byte.

One reader for ``quantize --calib``, ``prune --data`` and ``bench/compress.py``: any file or folder
:func:`seekforge.data.readers.iter_documents` reads (txt, jsonl, json, parquet, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


@dataclass
class TokenWindows:
    """Documents as one BOS-separated token stream cut into rows of ``seq_len + 1`` tokens that
    overlap by one token, so every token after the first is predicted exactly once."""

    rows: list[Tensor]  # each [n <= seq_len + 1] int64
    num_bytes: int  # UTF-8 bytes of the documents' text
    num_docs: int


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
    stream: list[int] = []
    bos = tokenizer.bos_token_id
    used_bytes, used_docs = 0, 0
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        stream += ([bos] if bos is not None else []) + ids
        used_bytes += len(text.encode("utf-8"))
        used_docs += 1
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    ids = torch.tensor(stream, dtype=torch.long)
    rows = [ids[i : i + seq_len + 1] for i in range(0, max(len(ids) - 1, 1), seq_len)]
    return TokenWindows([r for r in rows if r.numel() > 1], used_bytes, used_docs)


@torch.no_grad()
def bits_per_byte(model: torch.nn.Module, windows: TokenWindows) -> float:
    """Sum of next-token cross-entropies (nats) over the windows / ln 2 / bytes of text."""
    device = next(model.parameters()).device
    total = 0.0
    was_training = model.training
    model.eval()
    for row in windows.rows:
        ids = row[None].to(device)
        logits = model(ids).logits.float()
        total += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
    model.train(was_training)
    return total / math.log(2) / max(windows.num_bytes, 1)


__all__ = ["TokenWindows", "read_texts", "token_windows", "bits_per_byte"]
