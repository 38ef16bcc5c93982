"""Token shards on disk: the writer used by ``data tokenize`` and the memory-mapped reader used by
the trainer (format ``seekforge-tokens-v1``, specified in docs/ARCHITECTURE.md).

Layout of a shard directory::

    manifest.json          format, dtype, vocab/bos/eos ids, tokenizer info, per split and shard
                           the token, UTF-8 byte and document counts
    train-00000.bin        raw little-endian token ids (uint16 if the vocab fits, else uint32),
                           every document starts with BOS
    train-00000.idx.npy    int64 document start offsets into the .bin; length docs+1, last = tokens
    val-00000.bin ...

Why this shape: a flat ``.bin`` is what ``np.memmap`` reads with zero parsing and zero copies,
so a trainer can sample random windows from terabytes without loading them (nanoGPT and
datatrove use the same idea); the separate ``.idx.npy`` keeps document boundaries for
document-aware sampling and for evaluation without spending tokens on separators. The
manifest's byte counts make bits-per-byte (a tokenizer-independent loss) a division away.
A document never spans two shards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = "seekforge-tokens-v1"
MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per uint16 shard: big enough to be few, small to copy


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65,536), else uint32 (DeepSeek-V3's 129,280 needs it)."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


class ShardError(ValueError):
    """A shard directory is missing, incomplete or corrupt. The message names the file."""


# ---------------------------------------------------------------------------------------------
# Writing


class _SplitWriter:
    """Appends documents of one split to ``{split}-NNNNN.bin`` files, cutting at ``shard_tokens``."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self._starts: list[int] = []
        self._tokens = 0
        self._bytes = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}"
        self._file = open(self.out_dir / f"{name}.bin", "wb")  # noqa: SIM115 (closed in _close)
        self.shards.append({"file": f"{name}.bin", "index": f"{name}.idx.npy"})
        self._starts, self._tokens, self._bytes = [], 0, 0

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        starts = np.asarray(self._starts + [self._tokens], dtype=np.int64)
        np.save(self.out_dir / self.shards[-1]["index"], starts)
        self.shards[-1].update(tokens=self._tokens, bytes=self._bytes, docs=len(self._starts))

    def add(self, ids: np.ndarray, doc_lens: np.ndarray, doc_bytes: np.ndarray) -> None:
        """Append documents given as one concatenated id array plus per-document lengths/bytes."""
        if ids.dtype != self.dtype:
            ids = ids.astype(self.dtype)
        pos = 0
        for n, b in zip(doc_lens.tolist(), doc_bytes.tolist()):
            if self._file is None or (self._tokens > 0 and self._tokens + n > self.shard_tokens):
                self._close()
                self._open()
            self._starts.append(self._tokens)
            self._file.write(ids[pos:pos + n].tobytes())
            self._tokens += n
            self._bytes += b
            pos += n

    @property
    def num_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards[:-1]) + self._tokens

    @property
    def num_docs(self) -> int:
        return sum(s["docs"] for s in self.shards[:-1]) + len(self._starts)

    def take_tail(self, n: int) -> np.ndarray:
        """Remove and return the last ``n`` tokens of the open shard (documents cut accordingly)."""
        if self._file is None or not 0 < n < self._tokens:
            raise ValueError(f"cannot take {n} tokens from a shard holding {self._tokens}")
        self._file.flush()
        cut = self._tokens - n
        path = self.out_dir / self.shards[-1]["file"]
        tail = np.fromfile(path, dtype=self.dtype, count=n, offset=cut * self.dtype.itemsize)
        self._file.truncate(cut * self.dtype.itemsize)
        self._file.seek(cut * self.dtype.itemsize)
        self._starts = [s for s in self._starts if s < cut]  # docs starting in the tail move out whole
        self._tokens = cut
        return tail

    def finish(self) -> dict[str, Any]:
        if self._file is None and not self.shards:
            self._open()  # an empty split still gets one (empty) shard, so readers need no special case
        self._close()
        return {
            "tokens": sum(s["tokens"] for s in self.shards),
            "bytes": sum(s["bytes"] for s in self.shards),
            "docs": sum(s["docs"] for s in self.shards),
            "shards": self.shards,
        }


class ShardWriter:
    """Writes the ``train``/``val`` splits into ``out_dir`` (a fresh directory) plus the manifest.

    Use it inside ``seekforge.utils.atomic_dir`` so that a crash never leaves a half-written
    directory that looks complete.
    """

    def __init__(self, out_dir: str | Path, vocab_size: int, bos_token_id: int, *,
                 splits: tuple[str, ...] = ("train", "val"), shard_tokens: int = DEFAULT_SHARD_TOKENS):
        if shard_tokens <= 0:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.dtype = token_dtype(vocab_size)
        self.writers = {s: _SplitWriter(self.out_dir, s, self.dtype, shard_tokens) for s in splits}

    def add(self, split: str, ids: np.ndarray, doc_lens: np.ndarray, doc_bytes: np.ndarray) -> None:
        if ids.size and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(ids.max())} >= vocab_size {self.vocab_size}")
        self.writers[split].add(ids, doc_lens, doc_bytes)

    def split_tail(self, fraction: float, count_bytes: Callable[[np.ndarray], int]) -> bool:
        """Move the last ``fraction`` of the train tokens into ``val`` as one document.

        For corpora too small for a per-document split (one long text file). The moved tokens
        get a BOS in front; ``count_bytes(ids)`` gives their UTF-8 size. False if impossible.
        """
        train, val = self.writers["train"], self.writers["val"]
        want = max(1, round(fraction * train.num_tokens))
        if train._file is None or want >= train._tokens - 1:
            return False  # the tail must lie within the last shard and leave train non-empty
        tail = train.take_tail(want)
        nbytes = min(int(count_bytes(tail)), train._bytes)
        train._bytes -= nbytes
        val.add(np.concatenate([np.array([self.bos_token_id], dtype=self.dtype), tail]), np.array([want + 1]),
                np.array([nbytes]))
        return True

    def finish(self, **header: Any) -> dict[str, Any]:
        """Close all shards and write ``manifest.json``; ``header`` adds top-level fields."""
        manifest = {"format": FORMAT, "dtype": self.dtype.name, "vocab_size": self.vocab_size,
                    "bos_token_id": self.bos_token_id, **header,
                    "splits": {s: w.finish() for s, w in self.writers.items()}}
        (self.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
        return manifest


# ---------------------------------------------------------------------------------------------
# Reading


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and validate ``DIR/manifest.json`` (or a manifest path); errors name what is wrong."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"token shard directory {path} does not exist (create it with "
                                f"`seekforge data tokenize --input ... --tokenizer ... --out {path}`)")
    if not file.is_file():
        raise ShardError(f"{path} has no {MANIFEST}: not a `seekforge data tokenize` output, or the run "
                         "did not finish (outputs appear only when complete)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{file}: corrupt manifest (invalid JSON: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ShardError(f"{file}: format is {got!r}, expected {FORMAT!r}")
    for key in ("dtype", "vocab_size", "splits"):
        if key not in manifest:
            raise ShardError(f"{file}: corrupt manifest, field {key!r} is missing")
    if manifest["dtype"] not in ("uint16", "uint32"):
        raise ShardError(f"{file}: field 'dtype' is {manifest['dtype']!r}, expected 'uint16' or 'uint32'")
    return manifest


@dataclass
class Shard:
    """One shard of a split: the memory-mapped tokens and the document start offsets."""

    file: Path
    tokens: np.ndarray  # memmap (read-only) of token ids
    starts: np.ndarray  # int64, length docs+1
    num_bytes: int

    @property
    def num_docs(self) -> int:
        return len(self.starts) - 1


class TokenShards:
    """Read-only view of one split (``train``/``val``) of a token shard directory.

    ``len(ts)`` / ``ts.num_docs`` documents, ``ts.num_tokens`` tokens, ``ts.num_bytes`` UTF-8
    bytes. ``ts.doc(i)`` is document ``i`` (starting with BOS), ``ts.tokens(a, b)`` the global
    token range ``[a, b)`` across shards (a view when inside one shard, else a copy). Files are
    memory-mapped, so opening a terabyte split costs nothing until tokens are touched.
    """

    def __init__(self, path: str | Path, split: str = "train"):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        splits = self.manifest["splits"]
        if split not in splits:
            raise ShardError(f"{self.path}: no split {split!r}; available: {', '.join(splits) or '(none)'}")
        self.split = split
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.vocab_size = int(self.manifest["vocab_size"])
        self.bos_token_id = self.manifest.get("bos_token_id")
        self.eos_token_id = self.manifest.get("eos_token_id")
        self.shards = [self._open_shard(i, s) for i, s in enumerate(splits[split].get("shards", []))]
        # Global offsets: shard k holds tokens [tok_off[k], tok_off[k+1]) and docs [doc_off[k], ...).
        self._tok_off = np.cumsum([0] + [len(s.tokens) for s in self.shards])
        self._doc_off = np.cumsum([0] + [s.num_docs for s in self.shards])
        info = splits[split]
        if int(info.get("tokens", -1)) != self.num_tokens or int(info.get("docs", -1)) != self.num_docs:
            raise ShardError(f"{self.path / MANIFEST}: split {split!r} totals (tokens {info.get('tokens')}, "
                             f"docs {info.get('docs')}) disagree with its shards ({self.num_tokens}, "
                             f"{self.num_docs})")

    def _open_shard(self, i: int, info: dict[str, Any]) -> Shard:
        where = f"{self.path / MANIFEST}: splits.{self.split}.shards[{i}]"
        for key in ("file", "index", "tokens", "docs"):
            if key not in info:
                raise ShardError(f"{where}: field {key!r} is missing")
        file, index = self.path / info["file"], self.path / info["index"]
        for f in (file, index):
            if not f.is_file():
                raise ShardError(f"{where}: {f} is missing")
        n = int(info["tokens"])
        size = file.stat().st_size
        if size != n * self.dtype.itemsize:
            raise ShardError(f"{file}: {size} bytes on disk, but the manifest says {n} {self.dtype.name} "
                             f"tokens ({n * self.dtype.itemsize} bytes): truncated or corrupt")
        # np.memmap cannot map an empty file; an empty split is legal (e.g. no val docs).
        tokens = np.memmap(file, dtype=self.dtype, mode="r") if n else np.empty(0, dtype=self.dtype)
        try:
            starts = np.load(index)
        except (ValueError, OSError) as e:
            raise ShardError(f"{index}: corrupt document index ({e})") from None
        if starts.ndim != 1 or len(starts) != int(info["docs"]) + 1 or (len(starts) and starts[-1] != n):
            got = f"shape {starts.shape}" + (f" ending at {starts[-1]}" if len(starts) else "")
            want = int(info["docs"]) + 1
            raise ShardError(f"{index}: expected {want} int64 offsets ending at {n}, got {got}")
        return Shard(file, tokens, starts.astype(np.int64, copy=False), int(info.get("bytes", 0)))

    # -- sizes
    @property
    def num_tokens(self) -> int:
        return int(self._tok_off[-1])

    @property
    def num_docs(self) -> int:
        return int(self._doc_off[-1])

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.shards)

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes per token (BOS included in the tokens); converts loss/token to bits/byte."""
        return self.num_bytes / self.num_tokens if self.num_tokens else 0.0

    def __len__(self) -> int:
        return self.num_docs

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.path)!r}, {self.split!r}: {self.num_docs} docs, "
                f"{self.num_tokens} tokens, {len(self.shards)} shards, {self.dtype.name})")

    # -- access
    def doc_span(self, i: int) -> tuple[int, int]:
        """Global token range ``[start, end)`` of document ``i``."""
        if not -self.num_docs <= i < self.num_docs:
            raise IndexError(f"document {i} out of range for {self.num_docs} documents")
        i %= self.num_docs
        k = int(np.searchsorted(self._doc_off, i, side="right")) - 1
        starts = self.shards[k].starts
        j = i - int(self._doc_off[k])
        base = int(self._tok_off[k])
        return base + int(starts[j]), base + int(starts[j + 1])

    def doc(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (begins with BOS)."""
        return self.tokens(*self.doc_span(i))

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Tokens ``[start, end)`` of the whole split, crossing shard boundaries if needed."""
        if not 0 <= start <= end <= self.num_tokens:
            raise IndexError(f"token range [{start}, {end}) outside [0, {self.num_tokens})")
        k0 = int(np.searchsorted(self._tok_off, start, side="right")) - 1
        parts = []
        k = k0
        while start < end:
            lo = start - int(self._tok_off[k])
            hi = min(end, int(self._tok_off[k + 1])) - int(self._tok_off[k])
            parts.append(self.shards[k].tokens[lo:hi])
            start += hi - lo
            k += 1
        if not parts:
            return np.empty(0, dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def iter_docs(self) -> Iterator[np.ndarray]:
        for shard in self.shards:
            for a, b in zip(shard.starts[:-1].tolist(), shard.starts[1:].tolist()):
                yield shard.tokens[a:b]

    def doc_starts(self) -> np.ndarray:
        """Global start offset of every document (int64, length ``num_docs``)."""
        return np.concatenate([s.starts[:-1] + off for s, off in zip(self.shards, self._tok_off[:-1])]
                              or [np.empty(0, dtype=np.int64)])
