"""Perplexity and bits per byte on text files or token shards, with a sliding window.

Inputs: anything ``seekforge data prepare`` reads (``seekforge.data.readers.iter_documents``: txt,
jsonl, json, csv, parquet, compressed, folders, prepare outputs; field ``text``), or a
``seekforge data tokenize`` directory (``seekforge.data.shards.TokenShards``: its ``val`` split when
there is one, else ``train``). Each input is one source in the results.

Every document is scored on its own, starting from BOS (text is encoded with BOS, as ``data
tokenize`` writes it; the BOS itself is never a target). A document longer than the window W is
scored in windows that advance by ``stride`` S tokens: each window scores its last S new tokens with
the W - S tokens before them as context (the first window scores all of its tokens), so every
token is predicted once and, past the first window, with at least W - S tokens of context.

    nll_per_token = total NLL (nats) / scored tokens
    bits_per_byte = total NLL / ln 2 / UTF-8 bytes of the documents
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seekforge.eval.scoring import Scorer, TokenPair, Tokens


@dataclass
class PplResult:
    bits_per_byte: float
    nll_per_token: float
    tokens: int  # scored tokens
    bytes: int
    documents: int
    window: int
    stride: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def windows(doc: list[int], window: int, stride: int) -> Iterator[TokenPair]:
    """Pairs that score tokens 1..n-1 of ``doc`` once each (see the module docstring)."""
    n = len(doc)
    end = min(window, n)
    if end < 2:
        return
    yield TokenPair(doc[:end], end - 1, False)
    while end < n:
        new_end = min(end + stride, n)
        yield TokenPair(doc[max(0, new_end - window) : new_end], new_end - end, False)
        end = new_end


def _documents(path: Path, tokens: Tokens) -> tuple[Iterator[list[int]], list[int]]:
    """(token lists, [total bytes]) - bytes filled in as the iterator runs (text) or known (shards)."""
    from seekforge.data.shards import TokenShards, read_manifest

    total = [0]
    if path.is_dir() and (path / "manifest.json").is_file():
        split = "val" if "val" in read_manifest(path)["splits"] else "train"
        shards = TokenShards(path, split)
        if shards.num_docs == 0:
            raise ValueError(f"--ppl {path}: split {split!r} has no documents")
        total[0] = shards.num_bytes
        return (d.tolist() for d in shards.iter_docs()), total

    from seekforge.data.readers import iter_documents

    def gen() -> Iterator[list[int]]:
        for doc in iter_documents(path):
            total[0] += len(doc.text.encode("utf-8"))
            ids = tokens.tokenizer.encode(doc.text, add_special_tokens=False)
            bos = tokens.tokenizer.bos_token_id
            yield ([bos] if bos is not None else []) + ids

    return gen(), total


def score_documents(
    docs: Iterable[list[int]], scorer: Scorer, stride: int, batch_size: int = 8
) -> tuple[float, int, int]:
    """(total NLL in nats, scored tokens, documents) of token lists that each start with BOS,
    in windows of ``scorer.window`` tokens advancing by ``stride`` (module docstring). Also what
    ``seekforge quantize`` / ``prune`` report as bits per byte (``seekforge.compress.data``)."""
    nll, scored, n_docs = 0.0, 0, 0
    batch: list[TokenPair] = []

    def flush() -> None:
        nonlocal nll, scored
        for lps in scorer.score(batch):
            nll -= sum(lps)
            scored += len(lps)
        batch.clear()

    for doc in docs:
        n_docs += 1
        for pair in windows(doc, scorer.window, stride):
            batch.append(pair)
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()
    return nll, scored, n_docs


def perplexity(
    path: str | Path, tokens: Tokens, scorer: Scorer, stride: int | None = None, batch_size: int = 8
) -> PplResult:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--ppl {path}: no such file or directory")
    window = scorer.window
    stride = stride or window // 2
    if not 1 <= stride < window:
        raise ValueError(
            f"--ppl-stride must be in 1..{window - 1} (the window is {window} tokens), got {stride}"
        )
    docs, total_bytes = _documents(path, tokens)
    nll, scored, n_docs = score_documents(docs, scorer, stride, batch_size)
    if not scored:
        raise ValueError(f"--ppl {path}: no tokens to score (empty documents)")
    return PplResult(
        nll / math.log(2) / max(total_bytes[0], 1),
        nll / scored,
        scored,
        total_bytes[0],
        n_docs,
        window,
        stride,
    )
