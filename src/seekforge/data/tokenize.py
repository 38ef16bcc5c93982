"""``seekforge data tokenize``: documents -> memory-mappable token shards for the trainer.

Pipeline: ``iter_documents`` (any input the readers understand, including ``data prepare``
outputs) -> batches of about 1 MB of text -> ``tokenizers``' ``encode_batch_fast`` (in this
process on the library's thread pool, or in worker processes) -> results taken back **in
submission order** -> the ``ShardWriter`` (format in docs/ARCHITECTURE.md and
:mod:`seekforge.data.shards`).

Choices worth knowing:

* **Parallel across cores, deterministic.** Below 8 cores the default is in-process: encoding
  runs on the library's Rust thread pool (all cores) while the Python thread reads and writes;
  from 8 cores on, one process per core (``workers``). Workers only compute; the main process
  writes in input order, so the output is byte-identical for any ``workers`` value.
* **Train/val split per document, by a hash of its text** (BLAKE2b, 64 bits): a document goes to
  val when ``hash / 2**64 < val_fraction``. Hashing the text rather than the reader's doc id means
  exact duplicates always land in the same split (no train->val leakage) and the split does not
  change when the same file is passed as a relative vs absolute path. ``val_inputs`` replaces the
  hash split by explicit validation files.
* **Tiny corpora.** If the hash split leaves val empty (say, one long ``.txt`` file is a single
  document), val becomes the last ``val_fraction`` of the train tokens instead, like nanoGPT's
  90/10 cut; the manifest records ``"val_split": "tail"``.
* **Bounded memory.** At most ``2 x workers`` batches (2 in-process) are in flight
  (``Pool.imap`` would read the whole corpus ahead into its task queue).
* **Atomic.** Everything is written into a temporary directory renamed to ``out_dir`` at the end.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from seekforge.data.shards import DEFAULT_SHARD_TOKENS, ShardWriter, token_dtype

log = logging.getLogger("seekforge.data")

# Tokenizer files copied next to the shards, so a shard directory is self-describing.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "seekforge_tokenizer.json", "chat_template.jinja", "generation_config.json")


# ---------------------------------------------------------------------------------------------
# Worker side: encode one batch of texts. Module-level state, set once per process.

_WORKER: dict[str, Any] = {}  # per pool process; the in-process path passes its own state


def _make_state(tokenizer_json: str, bos_id: int, dtype: str, val_fraction: float) -> dict[str, Any]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    # Raw text that happens to contain "<|eos|>" or "<|user|>" must stay text: special tokens in
    # training data would teach the model fake turn boundaries (and let scraped pages inject them).
    tok.encode_special_tokens = True
    return {"tok": tok, "bos": bos_id, "dtype": np.dtype(dtype), "val_fraction": val_fraction}


def _init_worker(*initargs: Any) -> None:
    _WORKER.update(_make_state(*initargs))


def _is_val(text: str, val_fraction: float) -> bool:
    if val_fraction <= 0:
        return False
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


def _encode_batch(texts: list[str], state: dict[str, Any] | None = None) -> tuple[np.ndarray, ...]:
    """texts -> (concatenated ids with BOS before each doc, lengths, UTF-8 bytes, is_val)."""
    state = _WORKER if state is None else state
    tok, bos, dtype, frac = state["tok"], state["bos"], state["dtype"], state["val_fraction"]
    # No special tokens from the tokenizer's post-processor: BOS is added here explicitly, and a
    # foreign tokenizer's post-processor might append EOS or nothing at all.
    encs = tok.encode_batch_fast(texts, add_special_tokens=False)
    lens = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
    ids = np.empty(int(lens.sum()), dtype=dtype)
    pos = 0
    for e, n in zip(encs, lens.tolist()):
        ids[pos] = bos
        ids[pos + 1:pos + n] = e.ids
        pos += n
    nbytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    is_val = np.fromiter((_is_val(t, frac) for t in texts), dtype=bool, count=len(texts))
    return ids, lens, nbytes, is_val


# ---------------------------------------------------------------------------------------------
# Main side


def _batches(texts: Iterable[str], batch_bytes: int, max_docs: int = 4096) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_bytes or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _ordered_map(batches: Iterator[list[str]], workers: int, initargs: tuple) -> Iterator[tuple]:
    """Encode batches, yielding results in input order with at most a few batches in flight.

    ``workers == 0``: in this process. ``encode_batch_fast`` runs on a helper thread and uses the
    library's own thread pool across all cores (it releases the GIL), while this thread reads the
    next batch and writes the previous one. ``workers >= 1``: a process pool, each worker
    single-threaded, which also spreads the Python-side work (id lists -> numpy) over cores.
    """
    if workers <= 0:
        state = _make_state(*initargs)
        with ThreadPoolExecutor(max_workers=1) as helper:
            queued: collections.deque = collections.deque()
            for batch in batches:
                queued.append(helper.submit(_encode_batch, batch, state))
                if len(queued) >= 2:
                    yield queued.popleft().result()
            while queued:
                yield queued.popleft().result()
        return
    # fork is fast and needs no re-import; spawn is the portable fallback (macOS, Windows).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    # Each worker encodes single-threaded: N processes x N rayon threads would oversubscribe the
    # cores. The variable is inherited at fork/spawn and read by the tokenizers library.
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=initargs)
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    pending: collections.deque = collections.deque()
    try:
        for batch in batches:
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


@dataclass
class _Tok:
    """What tokenizing needs from a tokenizer directory."""

    dir: Path
    backend: Any  # tokenizers.Tokenizer
    bos_id: int
    eos_id: int | None
    vocab_size: int
    hf: Any = None  # the transformers object, only when it had to be loaded (no tokenizer.json)


def _special(config: dict[str, Any], name: str) -> str | None:
    value = config.get(name)
    return value.get("content") if isinstance(value, dict) else value


def _open_tokenizer(tok_dir: Path) -> _Tok:
    """Open a tokenizer dir with ``tokenizers`` alone when it has a tokenizer.json (importing
    transformers costs ~1.5 s); otherwise through ``load_tokenizer`` (slow-only tokenizers).

    bos/eos follow ``load_tokenizer``'s rules: names from tokenizer_config.json (or
    special_tokens_map.json); a missing bos falls back to eos.
    """
    from seekforge.tokenizer import load_tokenizer

    tj = tok_dir / "tokenizer.json"
    if not tj.is_file():
        hf = load_tokenizer(tok_dir)  # raises the clear "does not exist" / "not a tokenizer" errors
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{tok_dir}: needs a fast (tokenizers-backed) tokenizer")
        return _Tok(tok_dir, backend, int(hf.bos_token_id),
                    None if hf.eos_token_id is None else int(hf.eos_token_id), len(hf), hf)
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(tj))
    except Exception as e:  # the library raises a bare Exception for a malformed file
        raise ValueError(f"{tj}: could not load the tokenizer: {e}") from e
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        f = tok_dir / name
        if f.is_file():
            try:
                config.update(json.loads(f.read_text(encoding="utf-8")))
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: invalid JSON ({e})") from None
    ids = {}
    for name in ("bos_token", "eos_token"):
        token = _special(config, name)
        ids[name] = None if token is None else backend.token_to_id(token)
        if token is not None and ids[name] is None:
            raise ValueError(f"{tok_dir}: {name} {token!r} is not in the vocabulary of {tj}")
    bos = ids["bos_token"] if ids["bos_token"] is not None else ids["eos_token"]
    if bos is None:
        raise ValueError(f"{tok_dir}: no bos_token or eos_token in tokenizer_config.json; data tokenize "
                         "needs one to mark document starts")
    return _Tok(tok_dir, backend, bos, ids["eos_token"], backend.get_vocab_size(with_added_tokens=True))


def _tokenizer_info(tok: _Tok) -> dict[str, Any]:
    info: dict[str, Any] = {"source": str(tok.dir.resolve()), "dir": "tokenizer",
                            "vocab_size": tok.vocab_size}
    tj = tok.dir / "tokenizer.json"
    if tj.is_file():
        info["sha256"] = hashlib.sha256(tj.read_bytes()).hexdigest()
    return info


def _copy_tokenizer(tok: _Tok, dest: Path) -> None:
    dest.mkdir()
    copied = False
    for name in _TOKENIZER_FILES:
        if (tok.dir / name).is_file():
            shutil.copy2(tok.dir / name, dest / name)
            copied = True
    if not copied and tok.hf is not None:  # e.g. a sentencepiece-only dir: let transformers write it
        tok.hf.save_pretrained(str(dest))


def _resolve_workers(workers: int | None) -> int:
    if workers is not None:
        return max(0, workers)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    # Measured on 2 cores (docs/LOG.md): in-process with the library's threads gets ~90% of a bare
    # encode_batch_fast, a 2-process pool ~70% (fork, pickling, a third busy process). The
    # in-process path tops out where its one Python thread (reading ~80 MB/s, id conversion
    # ~40 MB/s) saturates, roughly 8-10 cores' worth of encoding; from 8 cores on, use processes.
    return 0 if cores < 8 else min(cores, 32)


def tokenize_to_shards(
    inputs: str | Path | Sequence[str | Path],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.01,
    val_inputs: str | Path | Sequence[str | Path] | None = None,
    text_fields: Sequence[str] = ("text",),
    txt_mode: str = "file",
    workers: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_bytes: int = 1 << 20,
) -> dict[str, Any]:
    """Tokenize ``inputs`` (and ``val_inputs``) into a shard directory; return its manifest.

    ``workers``: 0 = in this process (on all cores via the library's threads), N = N processes,
    None = 0 below 8 cores, else one process per core. ``val_fraction`` is
    ignored when ``val_inputs`` are given. Raises ValueError for empty input, bad fractions or a
    tokenizer whose ids do not fit; FileNotFoundError for missing inputs or tokenizer.
    """
    from seekforge.data.readers import iter_documents
    from seekforge.utils import atomic_dir

    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_inputs is not None and isinstance(val_inputs, (str, Path)):
        val_inputs = [val_inputs]
    tok_dir = Path(tokenizer_dir)
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"tokenizer directory {tok_dir} does not exist (train one with "
                                f"`seekforge tokenizer train --input ... --out {tok_dir}`)")
    tok = _open_tokenizer(tok_dir)
    vocab_size = tok.vocab_size
    dtype = token_dtype(vocab_size)
    workers = _resolve_workers(workers)
    frac = 0.0 if val_inputs else val_fraction
    initargs = (tok.backend.to_str(), tok.bos_id, dtype.str, frac)
    reader_kw = dict(text_fields=tuple(text_fields), txt_mode=txt_mode)

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, vocab_size, tok.bos_id, shard_tokens=shard_tokens)
        jobs = [(inputs, None)] + ([(val_inputs, "val")] if val_inputs else [])
        for paths, forced in jobs:
            texts = (d.text for d in iter_documents(paths, **reader_kw))
            for ids, lens, nbytes, is_val in _ordered_map(_batches(texts, batch_bytes), workers, initargs):
                _write(writer, ids, lens, nbytes, is_val, forced)
        train, val = writer.writers["train"], writer.writers["val"]
        if train.num_docs == 0 and val.num_docs == 0:
            raise ValueError(f"no documents found in {inputs} (empty files, or text fields "
                             f"{list(text_fields)} empty everywhere)")
        val_split = "inputs" if val_inputs else "hash"
        if frac > 0 and val.num_docs == 0:
            # Too few documents for the hash split (e.g. one long .txt): cut a token tail instead.
            def count_bytes(ids: np.ndarray) -> int:  # exact except for a UTF-8 character cut in two
                return len(tok.backend.decode(ids.tolist(), skip_special_tokens=True).encode("utf-8"))

            if writer.split_tail(frac, count_bytes):
                val_split = "tail"
                log.warning("no document hashed into val (%d train docs); val is the last %.1f%% of the "
                            "train tokens instead", train.num_docs, 100 * frac)
            else:
                val_split = "none"
                log.warning("val split is empty: the corpus is too small to hold out %.1f%%", 100 * frac)
        _copy_tokenizer(tok, tmp / "tokenizer")
        manifest = writer.finish(
            eos_token_id=tok.eos_id,
            tokenizer=_tokenizer_info(tok),
            val_split=val_split,
            val_fraction=frac,
            inputs=[str(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)],
            val_inputs=[str(p) for p in val_inputs] if val_inputs else None,
            text_fields=list(text_fields),
        )
    seconds = time.perf_counter() - t0
    total_bytes = sum(s["bytes"] for s in manifest["splits"].values())
    log.info("tokenized %.1f MB in %.1fs (%.2f MB/s) with %d workers -> %s: %s", total_bytes / 1e6, seconds,
             total_bytes / 1e6 / max(seconds, 1e-9), workers, out_dir,
             ", ".join(f"{k} {v['docs']} docs / {v['tokens']} tokens" for k, v in manifest["splits"].items()))
    return manifest


def _write(writer: ShardWriter, ids: np.ndarray, lens: np.ndarray, nbytes: np.ndarray, is_val: np.ndarray,
           forced: str | None) -> None:
    if forced is not None or not is_val.any():
        writer.add(forced or "train", ids, lens, nbytes)
        return
    # Route each document to its split, keeping input order within each split.
    doc_of_token = np.repeat(is_val, lens)
    for split, mask in (("train", ~is_val), ("val", is_val)):
        if mask.any():
            writer.add(split, ids[doc_of_token == (split == "val")], lens[mask], nbytes[mask])


# ---------------------------------------------------------------------------------------------
# CLI: ``seekforge data tokenize``


@dataclass
class TokenizeConfig:
    """Settings of ``seekforge data tokenize`` (YAML keys and ``--set`` names)."""

    input: list[str] = field(default_factory=list)
    tokenizer: str = ""
    out: str = ""
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.01
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    txt_mode: Literal["file", "paragraphs", "lines"] = "file"
    workers: int | None = None
    shard_tokens: int = DEFAULT_SHARD_TOKENS

    def validate(self) -> None:
        from seekforge.config import ConfigError

        for key in ("input", "tokenizer", "out"):
            if not getattr(self, key):
                raise ConfigError(f"{key}: required (--{key} on the command line)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: expected a number in [0, 1), got {self.val_fraction}")
        if self.shard_tokens <= 0:
            raise ConfigError(f"shard_tokens: expected a positive integer, got {self.shard_tokens}")


def register(subparsers: argparse._SubParsersAction) -> None:
    from seekforge.cli import add_config_args
    from seekforge.data.cli import data_verbs

    p = data_verbs(subparsers).add_parser(
        "tokenize", help="tokenize documents into memory-mapped token shards for training",
        description="Tokenize files/folders/globs (or a `data prepare` output) into uint16/uint32 token "
        "shards with a manifest, split into train/val per document.")
    p.add_argument("--input", nargs="+", action="extend", metavar="PATH", help="files, folders or globs")
    p.add_argument("--tokenizer", metavar="DIR", help="HF tokenizer directory")
    p.add_argument("--out", metavar="DIR", help="output shard directory (replaced atomically)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--val-fraction", type=float, metavar="F",
                       help="share of documents (by text hash) for val (default 0.01)")
    group.add_argument("--val", nargs="+", action="extend", metavar="PATH", help="explicit validation inputs")
    p.add_argument("--text-field", dest="text_fields", action="append", metavar="NAME",
                   help="JSON/CSV/parquet field with the text (repeatable; default: text)")
    p.add_argument("--txt-mode", choices=["file", "paragraphs", "lines"],
                   help=".txt: one doc per file, paragraph or line")
    p.add_argument("--workers", type=int, metavar="N",
                   help="0 = in-process on the tokenizers thread pool, N = N processes (default: 0 "
                   "below 8 cores, else one per core)")
    p.add_argument("--shard-tokens", type=int, metavar="N", help="max tokens per shard file")
    add_config_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from seekforge.config import deep_merge, load_config, read_yaml

    # Precedence: defaults < YAML file < command-line flags < --set overrides.
    flags = {k: v for k, v in {
        "input": args.input, "tokenizer": args.tokenizer, "out": args.out, "val": args.val,
        "val_fraction": args.val_fraction, "text_fields": args.text_fields, "txt_mode": args.txt_mode,
        "workers": args.workers, "shard_tokens": args.shard_tokens}.items() if v is not None}
    base = deep_merge(read_yaml(args.config), flags) if args.config else flags
    cfg = load_config(TokenizeConfig, None, args.overrides, base=base)
    manifest = tokenize_to_shards(
        cfg.input, cfg.tokenizer, cfg.out, val_fraction=cfg.val_fraction, val_inputs=cfg.val or None,
        text_fields=cfg.text_fields, txt_mode=cfg.txt_mode, workers=cfg.workers,
        shard_tokens=cfg.shard_tokens)
    print(f"wrote {cfg.out} ({manifest['dtype']}, vocab {manifest['vocab_size']}, val split: "
          f"{manifest['val_split']})")
    print(f"{'split':<6} {'docs':>10} {'tokens':>14} {'MB':>10} {'bytes/token':>12} {'shards':>7}")
    for name, s in manifest["splits"].items():
        bpt = s["bytes"] / s["tokens"] if s["tokens"] else 0.0
        print(f"{name:<6} {s['docs']:>10} {s['tokens']:>14} {s['bytes'] / 1e6:>10.2f} {bpt:>12.3f} "
              f"{len(s['shards']):>7}")
    return 0
