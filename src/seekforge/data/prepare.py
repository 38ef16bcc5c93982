"""``seekforge data prepare``: raw text in, clean deduplicated ``jsonl.gz`` shards out.

Pipeline, per document (steps switchable in ``PrepareConfig``)::

    read -> weight sampling -> clean -> language ID (+ keep-list) -> length / Gopher repetition /
    Gopher quality / C4 / FineWeb filters -> PII scrub -> decontamination -> exact + MinHash dedup
    -> write (weight > 1: copies)

How it runs:

- **Sharding.** The input stream (sources in config order, files in sorted order) is cut into
  shards of ``output.shard_docs`` input documents (or ``output.shard_mb`` of text). Shard k of
  the output holds what survived of input shard k, so shard boundaries do not depend on what
  was filtered.
- **Parallel and deterministic.** Worker processes clean and filter batches and compute hashes;
  the main process takes results back *in input order* and alone makes the dedup decisions
  (first document of a cluster wins). The output is byte-identical for any worker count.
  At most ``2·workers+2`` batches are in flight, so memory stays bounded.
- **Resumable.** A shard is written to a temporary file, renamed into place, and then a done
  marker (with its stats and dedup keys) is written under ``_state/``. A re-run with the same
  config and inputs skips completed shards (replaying their dedup keys), so it ends with the
  same output an uninterrupted run would have produced. ``report.json`` is written last; readers
  treat a folder without it as unfinished.
- **Memory.** The dedup index holds ~16 bytes per document for exact dedup and ~15 dict entries
  per document for MinHash (roughly 1.5 KB/document): fine for millions of documents on a
  laptop. Beyond that, run the same steps on datatrove executors (docs/data.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from seekforge.config import ConfigError, deep_merge, from_dict, to_dict
from seekforge.data.clean import CleanConfig, clean_text
from seekforge.data.dedup import (
    DecontamConfig,
    DedupConfig,
    LSHIndex,
    MinHasher,
    contaminated,
    exact_key_simplified,
    ngram_set,
)
from seekforge.data.filters import FiltersConfig, run_filters
from seekforge.data.pii import PIIConfig, scrub
from seekforge.data.readers import (
    PREPARED_FORMAT,
    PREPARED_REPORT,
    PREPARED_STATE_DIR,
    Document,
    ReadStats,
    expand_inputs,
    iter_documents,
)
from seekforge.data.text import LanguageIdentifier, detect_language, simplify, warm_up
from seekforge.utils import atomic_write_bytes, atomic_write_text, human_bytes, human_count

log = logging.getLogger("seekforge.data")

# --------------------------------------------------------------------------- config


@dataclass
class SourceConfig:
    """One named input. ``weight`` resamples it: 2 = every document twice, 0.5 = a
    deterministic half (chosen by a hash of the document id), 1.5 = all once, half twice."""

    name: str = ""
    paths: list[str] = field(default_factory=list)
    weight: float = 1.0
    text_fields: list[str] | None = None  # default: the top-level text_fields
    txt_mode: Literal["file", "paragraphs", "lines"] | None = None
    # Overrides of the top-level ``filters`` for this source only, same keys, e.g.
    # {gopher_quality: {zh: {min_stop_words: null}}} for classical poetry.
    filters: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.weight < 0 or not math.isfinite(self.weight):
            raise ConfigError(f"source {self.name!r}: weight must be a finite number >= 0, got {self.weight}")


@dataclass
class LanguageConfig:
    # Keep-list of language codes (zh, en, ja, ko, other; or fastText codes). Empty: keep all.
    languages: list[str] = field(default_factory=list)
    fasttext_model: str | None = None  # path to lid.176.bin (needs `pip install fasttext`)
    min_score: float = 0.65  # fastText confidence below which the script-based guess is used


@dataclass
class OutputConfig:
    format: Literal["jsonl.gz", "jsonl", "parquet"] = "jsonl.gz"
    shard_docs: int = 100_000  # input documents per shard (also the resume granularity)
    shard_mb: float = 512.0  # ... or this many MB of input text, whichever comes first
    keep_meta: bool = False  # also write the input records' other fields under "meta"
    examples_per_reason: int = 3  # dropped-document examples per reason in the report


@dataclass
class PrepareConfig:
    """Everything ``data prepare`` does. Inputs come as ``sources`` and/or plain ``inputs``."""

    inputs: list[str] = field(default_factory=list)  # each path becomes a source named after it
    sources: list[SourceConfig] = field(default_factory=list)
    out: str = ""
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    joiner: str = "\n\n"  # between several text fields of one record
    txt_mode: Literal["file", "paragraphs", "lines"] = "file"
    strict: bool = False  # raise on the first malformed record instead of skipping it
    workers: int = 0  # 0: all CPU cores
    batch_docs: int = 256
    progress: bool = True
    overwrite: bool = False  # start over even if `out` holds a (different) earlier run
    clean: CleanConfig = field(default_factory=CleanConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        if self.batch_docs < 1:
            raise ConfigError(f"batch_docs must be >= 1, got {self.batch_docs}")
        if self.output.shard_docs < 1 or self.output.shard_mb <= 0:
            raise ConfigError("output.shard_docs and output.shard_mb must be positive")
        for i, src in enumerate(self.sources):
            if not src.paths:
                raise ConfigError(f"sources[{i}] ({src.name or 'unnamed'}): paths is empty")
        self.resolved_filters()  # surfaces bad per-source overrides at load time

    # Source list with names filled in and unique: config sources first, then plain inputs.
    def resolved_sources(self) -> list[SourceConfig]:
        out: list[SourceConfig] = []
        seen: set[str] = set()
        for i, src in enumerate([*self.sources, *(SourceConfig(paths=[p]) for p in self.inputs)]):
            name = src.name or _default_name(src.paths[0] if src.paths else f"source{i}")
            base, k = name, 2
            while name in seen:
                name, k = f"{base}-{k}", k + 1
            seen.add(name)
            out.append(dataclasses.replace(src, name=name))
        return out

    def resolved_filters(self) -> dict[str, FiltersConfig]:
        """Per-source filter configs: the global one with each source's overrides merged in."""
        base = to_dict(self.filters)
        out = {}
        for src in self.resolved_sources():
            if src.filters:
                try:
                    out[src.name] = from_dict(FiltersConfig, deep_merge(base, src.filters),
                                              prefix=f"sources.{src.name}.filters.")
                except ConfigError as e:
                    raise ConfigError(f"source {src.name!r}: {e}") from None
            else:
                out[src.name] = self.filters
        return out


def _default_name(path: str) -> str:
    p = Path(path.rstrip("/"))
    name = p.name.split(".")[0] if p.suffix else p.name
    return name or "input"


class PrepareError(ValueError):
    """prepare cannot produce a useful output (e.g. every document was filtered out)."""


# --------------------------------------------------------------------------- worker side

# Set by _init_worker in each process (fork) or in the main process (workers=1).
_W: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _W.clear()
    _W.update(state)
    _W["lid"] = LanguageIdentifier(state["lang_cfg"].fasttext_model, state["lang_cfg"].min_score)
    _W["minhasher"] = MinHasher(state["dedup_cfg"]) if state["dedup_cfg"].minhash else None


def _snippet(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _process_batch(batch: list[tuple[int, str, str, str]]) -> list[tuple]:
    """Clean/filter/scrub a batch; returns per doc either
    ("drop", idx, reason, lang, snippet) or ("keep", idx, text, lang, exact_key, band_keys,
    pii_counts, c4_lines_removed, jsonl_line, utf8_bytes). The output line is serialised here,
    in parallel, so the main process only decides dedup and compresses."""
    cfg_clean: CleanConfig = _W["clean_cfg"]
    keep_langs: set[str] = _W["keep_langs"]
    pii_cfg: PIIConfig = _W["pii_cfg"]
    dedup_cfg: DedupConfig = _W["dedup_cfg"]
    decon: np.ndarray = _W["decon_ngrams"]
    decon_n: int = _W["decon_n"]
    out: list[tuple] = []
    pending: list[int] = []  # positions in `out` that still need MinHash keys
    for idx, source, raw, doc_id in batch:
        text = clean_text(raw, cfg_clean)
        if not text.strip():
            out.append(("drop", idx, "clean.empty", "other", _snippet(raw)))
            continue
        lang = _W["lid"](text)
        if keep_langs and lang not in keep_langs:
            out.append(("drop", idx, "language.not_kept", lang, _snippet(text)))
            continue
        res = run_filters(text, lang, _W["filters"][source])
        if res.text is None:
            out.append(("drop", idx, res.reason, lang, _snippet(text)))
            continue
        text = res.text
        pii_counts: Counter = Counter()
        text = scrub(text, pii_cfg, pii_counts)
        if len(decon) and contaminated(text, lang, decon, decon_n):
            out.append(("drop", idx, "decontaminate.eval_overlap", lang, _snippet(text)))
            continue
        simple = simplify(text)  # shared by exact and near dedup
        ekey = exact_key_simplified(simple) if dedup_cfg.exact else None
        line = json.dumps({"text": text, "source": source, "language": lang, "id": doc_id},
                          ensure_ascii=False).encode("utf-8") + b"\n"
        out.append(("keep", idx, text, lang, ekey, None, dict(pii_counts), dict(res.c4_lines_removed),
                    line, len(text.encode("utf-8"))))
        if _W["minhasher"] is not None:
            pending.append((len(out) - 1, simple))
    mh: MinHasher | None = _W["minhasher"]
    if mh is not None and pending:
        keys = mh.keys_for_many([sp for _, sp in pending], [out[p][3] for p, _ in pending], simplified=True)
        for (pos, _), k in zip(pending, keys):
            rec = out[pos]
            out[pos] = (*rec[:5], k.tobytes(), *rec[6:])
    return out


# --------------------------------------------------------------------------- shard bookkeeping


@dataclass
class ShardStats:
    """What happened in one shard; JSON-serialisable, summed over shards for the report."""

    docs_in: int = 0
    bytes_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    drops: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[list[str]]] = field(default_factory=dict)
    lang_in: dict[str, dict[str, int]] = field(default_factory=dict)
    lang_out: dict[str, dict[str, int]] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)
    c4_lines_removed: dict[str, int] = field(default_factory=dict)
    source_drops: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> reason -> docs
    # representative doc index -> [duplicates found, representative id, first duplicate id, its snippet]
    clusters: dict[str, list] = field(default_factory=dict)


def _bump(d: dict[str, dict[str, int]], key: str, docs: int, nbytes: int) -> None:
    e = d.setdefault(key, {"docs": 0, "bytes": 0})
    e["docs"] += docs
    e["bytes"] += nbytes


def _src(stats: ShardStats, name: str) -> dict[str, int]:
    return stats.sources.setdefault(
        name, {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "sampled_out": 0, "dropped": 0}
    )


class _ShardWriter:
    """Writes one output shard to a temp file; ``commit`` renames it into place."""

    def __init__(self, out_dir: Path, name: str, fmt: str):
        self.final = out_dir / name
        self.tmp = out_dir / f".{name}.tmp"
        self.fmt = fmt
        self.rows = 0
        if fmt == "parquet":
            self._rows: list[dict[str, Any]] = []
            self._pq_writer = None
        else:
            raw = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
            # mtime=0 and no file name in the gzip header: identical bytes on every run.
            # Level 3: ~2x faster than the default 6 for ~5% larger files; the main process
            # compresses every shard alone, so this is on the critical path.
            self._f = (gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3, mtime=0, filename="")
                       if fmt == "jsonl.gz" else raw)
            self._raw = raw

    def write(self, record: dict[str, Any], line: bytes | None = None) -> None:
        """Write one record; ``line`` is its JSON line when already serialised."""
        self.rows += 1
        if self.fmt == "parquet":
            self._rows.append(record)
            if len(self._rows) >= 10_000:
                self._flush_parquet()
        else:
            self._f.write(line if line is not None else
                          json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        cols = list(self._rows[0])
        table = pa.table({c: [r.get(c) for r in self._rows] for c in cols})
        if self._pq_writer is None:
            self._pq_writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        self._pq_writer.write_table(table)
        self._rows = []

    def commit(self) -> str | None:
        """Close and rename into place; returns the file name, or None if nothing was written."""
        if self.fmt == "parquet":
            self._flush_parquet()
            if self._pq_writer is not None:
                self._pq_writer.close()
        else:
            if self._f is not self._raw:
                self._f.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
        if self.rows == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            return None
        os.replace(self.tmp, self.final)
        return self.final.name

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self.fmt != "parquet":
                self._f.close()
                self._raw.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


# --------------------------------------------------------------------------- the run


def _fingerprint(cfg: PrepareConfig, sources: list[SourceConfig]) -> dict[str, Any]:
    """What must not change between a run and its resumption: config (minus runtime knobs)
    and the input files (path, size, mtime)."""
    conf = to_dict(cfg)
    for k in ("workers", "progress", "overwrite", "out", "batch_docs"):
        conf.pop(k, None)
    files = []
    for src in sources:
        for kind, path in expand_inputs(src.paths):
            targets = [path] if kind == "file" else sorted(p for p in path.rglob("*") if p.is_file())
            for t in targets:
                st = t.stat()
                files.append([str(t), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"config": conf, "files": files}, sort_keys=True, ensure_ascii=False)
    return {"hash": hashlib.sha256(blob.encode()).hexdigest()[:16], "config": conf, "n_files": len(files)}


def _prepare_out_dir(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    state = out / PREPARED_STATE_DIR
    ours = state.is_dir() or (out / PREPARED_REPORT).is_file()
    if out.exists() and any(out.iterdir()) and not ours:
        raise PrepareError(f"--out {out} exists and is not a `data prepare` output; refusing to write there")
    if overwrite and ours:
        log.info("overwrite: removing the previous run in %s", out)
        shutil.rmtree(out)
    elif ours:
        fp_file = state / "fingerprint.json"
        if fp_file.is_file():
            old = json.loads(fp_file.read_text(encoding="utf-8"))
            if old.get("hash") != fingerprint["hash"]:
                changed = sorted(k for k in set(old.get("config", {})) | set(fingerprint["config"])
                                 if old.get("config", {}).get(k) != fingerprint["config"].get(k))
                what = f"config keys changed: {', '.join(changed)}" if changed else "input files changed"
                raise PrepareError(
                    f"{out} holds an earlier run with different settings ({what}); use a new --out, "
                    "or --overwrite to start over"
                )
    (out / PREPARED_STATE_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PREPARED_STATE_DIR / "fingerprint.json",
                      json.dumps(fingerprint, ensure_ascii=False, indent=1))


def _sample_copies(doc_id: str, source: str, weight: float) -> int:
    """Deterministic resampling: floor(weight) copies, plus one with probability frac(weight)."""
    whole = int(math.floor(weight))
    frac = weight - whole
    if frac <= 0:
        return whole
    u = xxhash.xxh64_intdigest(f"{source}\0{doc_id}".encode()) / 2**64
    return whole + (1 if u < frac else 0)


def _input_stream(sources: list[SourceConfig], cfg: PrepareConfig,
                  read_stats: dict[str, ReadStats]) -> Iterator[Document]:
    for src in sources:
        yield from iter_documents(
            src.paths, text_fields=src.text_fields or cfg.text_fields, joiner=cfg.joiner,
            txt_mode=src.txt_mode or cfg.txt_mode, strict=cfg.strict, stats=read_stats[src.name],
            source=src.name,
        )


def _shards(stream: Iterator[Document], shard_docs: int, shard_bytes: float) -> Iterator[list[Document]]:
    """Cut the input stream into shards (lists of documents) by count or text size."""
    cur: list[Document] = []
    size = 0
    for doc in stream:
        cur.append(doc)
        size += len(doc.text)  # characters: a cheap, deterministic proxy for bytes
        if len(cur) >= shard_docs or size >= shard_bytes:
            yield cur
            cur, size = [], 0
    if cur:
        yield cur


def _batches(items: list[tuple[int, str, str, str]], batch_docs: int, batch_chars: int = 1 << 20):
    cur: list[tuple[int, str, str, str]] = []
    size = 0
    for it in items:
        cur.append(it)
        size += len(it[2])
        if len(cur) >= batch_docs or size >= batch_chars:
            yield cur
            cur, size = [], 0
    if cur:
        yield cur


class _Runner:
    """Holds the state of one prepare run (index, pool, stats) across shards."""

    def __init__(self, cfg: PrepareConfig, out: Path, sources: list[SourceConfig], workers: int):
        self.cfg = cfg
        self.out = out
        self.state = out / PREPARED_STATE_DIR
        self.sources = {s.name: s for s in sources}
        self.workers = workers
        self.index = LSHIndex(cfg.dedup.num_bands)
        self.ids: dict[int, str] = {}  # doc index -> id, for documents in the dedup index
        self.pool = None
        self.progress = None

    # ---- dedup state persistence (for resume)

    def _save_dedup(self, name: str, exact: list[tuple[bytes, int]], bands: list[tuple[bytes, int]]) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            exact_keys=np.frombuffer(b"".join(k for k, _ in exact), dtype=np.uint8).reshape(-1, 16),
            exact_docs=np.array([d for _, d in exact], dtype=np.int64),
            band_keys=np.frombuffer(b"".join(k for k, _ in bands), dtype=np.uint64).reshape(
                -1, self.cfg.dedup.num_bands),
            band_docs=np.array([d for _, d in bands], dtype=np.int64),
        )
        atomic_write_bytes(self.state / f"{name}.dedup.npz", buf.getvalue())

    def _replay_dedup(self, name: str, ids: dict[str, str]) -> None:
        path = self.state / f"{name}.dedup.npz"
        with np.load(path) as z:
            for key, doc in zip(z["exact_keys"], z["exact_docs"].tolist()):
                self.index.add_exact(key.tobytes(), doc)
            for keys, doc in zip(z["band_keys"], z["band_docs"].tolist()):
                self.index.query_and_add(keys, doc)
        self.ids.update({int(k): v for k, v in ids.items()})

    # ---- processing

    def _results(self, items: list[tuple[int, str, str, str]]) -> Iterator[tuple]:
        """Processed results in input order, with bounded look-ahead."""
        if self.pool is None:
            for batch in _batches(items, self.cfg.batch_docs):
                yield from _process_batch(batch)
            return
        inflight: deque = deque()
        for batch in _batches(items, self.cfg.batch_docs):
            inflight.append(self.pool.apply_async(_process_batch, (batch,)))
            if len(inflight) >= 2 * self.workers + 2:
                yield from inflight.popleft().get()
        while inflight:
            yield from inflight.popleft().get()

    def run_shard(self, k: int, docs: list[Document], first_idx: int) -> dict[str, Any]:
        cfg = self.cfg
        name = f"part-{k:05d}"
        stats = ShardStats()
        items: list[tuple[int, str, str, str]] = []
        docs_by_idx: dict[int, Document] = {}
        copies: dict[int, int] = {}
        for j, doc in enumerate(docs):
            idx = first_idx + j
            nb = len(doc.text.encode("utf-8"))
            stats.docs_in += 1
            stats.bytes_in += nb
            s = _src(stats, doc.source)
            s["docs_in"] += 1
            s["bytes_in"] += nb
            n = _sample_copies(doc.id, doc.source, self.sources[doc.source].weight)
            if n == 0:
                s["sampled_out"] += 1
                _bump(stats.drops, "weight.sampled_out", 1, nb)
                sd = stats.source_drops.setdefault(doc.source, {})
                sd["weight.sampled_out"] = sd.get("weight.sampled_out", 0) + 1
                continue
            copies[idx] = n
            docs_by_idx[idx] = doc
            items.append((idx, doc.source, doc.text, doc.id))

        ext = {"jsonl.gz": ".jsonl.gz", "jsonl": ".jsonl", "parquet": ".parquet"}[cfg.output.format]
        writer = _ShardWriter(self.out, name + ext, cfg.output.format)
        exact_saved: list[tuple[bytes, int]] = []
        bands_saved: list[tuple[bytes, int]] = []
        new_ids: dict[str, str] = {}
        try:
            for res in self._results(items):
                idx = res[1]
                doc = docs_by_idx.pop(idx)
                nb_in = len(doc.text.encode("utf-8"))
                if self.progress is not None:
                    self.progress.update(1)
                if res[0] == "drop":
                    _, _, reason, lang, snip = res
                    _bump(stats.lang_in, lang, 1, nb_in)
                    self._drop(stats, doc, reason, nb_in, snip)
                    continue
                _, _, text, lang, ekey, bkeys, pii_counts, c4_removed, line, nb_out = res
                _bump(stats.lang_in, lang, 1, nb_in)
                for key, v in c4_removed.items():
                    stats.c4_lines_removed[key] = stats.c4_lines_removed.get(key, 0) + v
                if ekey is not None:
                    rep = self.index.find_exact(ekey)
                    if rep is not None:
                        self._drop(stats, doc, "dedup.exact", nb_in, _snippet(text), rep=rep)
                        continue
                    self.index.add_exact(ekey, idx)
                    exact_saved.append((ekey, idx))
                # Every indexed document can become a cluster representative: remember its id.
                self.ids[idx] = doc.id
                new_ids[str(idx)] = doc.id
                if bkeys is not None:
                    keys = np.frombuffer(bkeys, dtype=np.uint64)
                    rep = self.index.query_and_add(keys, idx)
                    bands_saved.append((bkeys, idx))
                    if rep is not None:
                        self._drop(stats, doc, "dedup.near", nb_in, _snippet(text), rep=rep)
                        continue
                for key, v in pii_counts.items():
                    stats.pii[key] = stats.pii.get(key, 0) + v
                record: dict[str, Any] = {"text": text, "source": doc.source, "language": lang, "id": doc.id}
                if cfg.output.keep_meta and doc.meta:
                    record["meta"] = doc.meta
                    line = None  # the worker's line has no meta
                for c in range(copies[idx]):
                    if c:
                        record = {**record, "id": f"{doc.id}#copy{c}"}
                        line = None
                    writer.write(record, line)
                    stats.docs_out += 1
                    stats.bytes_out += nb_out
                    s = _src(stats, doc.source)
                    s["docs_out"] += 1
                    s["bytes_out"] += nb_out
                    _bump(stats.lang_out, lang, 1, nb_out)
            file = writer.commit()
        except BaseException:
            writer.abort()
            raise
        self._save_dedup(name, exact_saved, bands_saved)
        marker = {"shard": k, "file": file, "first_doc": first_idx, "n_docs": len(docs),
                  "stats": dataclasses.asdict(stats), "ids": new_ids}
        # The marker is the commit point: written after the shard file and its dedup keys.
        atomic_write_text(self.state / f"{name}.done.json", json.dumps(marker, ensure_ascii=False))
        return marker

    def _drop(self, stats: ShardStats, doc: Document, reason: str, nbytes: int, snippet: str,
              rep: int | None = None) -> None:
        _bump(stats.drops, reason, 1, nbytes)
        s = _src(stats, doc.source)
        s["dropped"] += 1
        sd = stats.source_drops.setdefault(doc.source, {})
        sd[reason] = sd.get(reason, 0) + 1
        ex = stats.examples.setdefault(reason, [])
        if len(ex) < self.cfg.output.examples_per_reason:
            ex.append([doc.id, snippet])
        if rep is not None:
            c = stats.clusters.setdefault(str(rep), [0, self.ids.get(rep, "?"), doc.id, snippet])
            c[0] += 1


def _sum_stats(markers: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "sources": {},
                             "drops": {}, "examples": {}, "lang_in": {}, "lang_out": {}, "pii": {},
                             "c4_lines_removed": {}, "clusters": {}, "source_drops": {}}
    for m in markers:
        s = m["stats"]
        for k in ("docs_in", "bytes_in", "docs_out", "bytes_out"):
            total[k] += s[k]
        for name, d in s["sources"].items():
            t = total["sources"].setdefault(name, Counter())
            t.update(d)
        for key in ("drops", "lang_in", "lang_out"):
            for name, d in s[key].items():
                _bump(total[key], name, d["docs"], d["bytes"])
        for key in ("pii", "c4_lines_removed"):
            for name, v in s[key].items():
                total[key][name] = total[key].get(name, 0) + v
        for name, d in s.get("source_drops", {}).items():
            t = total["source_drops"].setdefault(name, Counter())
            t.update(d)
        for reason, ex in s["examples"].items():
            total["examples"].setdefault(reason, []).extend(ex)
        for rep, c in s["clusters"].items():
            if rep in total["clusters"]:
                total["clusters"][rep][0] += c[0]
            else:
                total["clusters"][rep] = list(c)
    total["sources"] = {k: dict(v) for k, v in total["sources"].items()}
    return total


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run the pipeline; returns the report dict (also written to ``out/report.json``)."""
    t0 = time.time()
    sources = cfg.resolved_sources()
    if not sources:
        raise ConfigError("no inputs: pass --input PATH ... or define `sources` in the config")
    if not cfg.out:
        raise ConfigError("no output folder: pass --out DIR (or set `out` in the config)")
    out = Path(cfg.out)
    fingerprint = _fingerprint(cfg, sources)
    _prepare_out_dir(out, fingerprint, cfg.overwrite)

    filters = cfg.resolved_filters()
    workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    decon, decon_n, decon_info = _load_decontam(cfg)
    state = {"clean_cfg": cfg.clean, "lang_cfg": cfg.language, "keep_langs": set(cfg.language.languages),
             "filters": filters, "pii_cfg": cfg.pii, "dedup_cfg": cfg.dedup, "decon_ngrams": decon,
             "decon_n": decon_n}
    warm_up(("zh",))  # load jieba's dictionary once, before forking
    _init_worker(state)
    runner = _Runner(cfg, out, sources, workers)
    read_stats = {s.name: ReadStats() for s in sources}
    markers: list[dict[str, Any]] = []
    resumed = 0
    try:
        if workers > 1:
            # fork: workers inherit jieba's dictionary and the decontamination set for free.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            runner.pool = mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(state,))
        runner.progress = _progress(cfg.progress)
        first = 0
        stream = _input_stream(sources, cfg, read_stats)
        for k, docs in enumerate(_shards(stream, cfg.output.shard_docs, cfg.output.shard_mb * 1e6)):
            done = out / PREPARED_STATE_DIR / f"part-{k:05d}.done.json"
            marker = _load_marker(done, k, first, len(docs))
            if marker is not None:
                runner._replay_dedup(f"part-{k:05d}", marker["ids"])
                resumed += 1
                if runner.progress is not None:
                    runner.progress.update(len(docs))
            else:
                marker = runner.run_shard(k, docs, first)
            markers.append(marker)
            first += len(docs)
    finally:
        if runner.pool is not None:
            runner.pool.terminate()
            runner.pool.join()
        if runner.progress is not None:
            runner.progress.close()
    elapsed = time.time() - t0
    report = _build_report(cfg, sources, markers, read_stats, fingerprint, decon_info, elapsed, workers,
                           resumed)
    md = _report_markdown(report)
    atomic_write_text(out / "report.md", md)
    if report["totals"]["docs_out"] == 0:
        raise PrepareError(_empty_message(report) + f" (details: {out / 'report.md'})")
    atomic_write_text(out / PREPARED_REPORT, json.dumps(report, ensure_ascii=False, indent=1))
    return report


def _load_marker(path: Path, k: int, first: int, n_docs: int) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if m.get("first_doc") != first or m.get("n_docs") != n_docs:
        return None  # the input changed under us: redo the shard
    shard_file = path.parent.parent / m["file"] if m.get("file") else None
    if shard_file is not None and not shard_file.is_file():
        return None
    if not (path.parent / f"part-{k:05d}.dedup.npz").is_file():
        return None
    return m


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" docs", desc="prepare", smoothing=0.1, mininterval=0.5)


def _load_decontam(cfg: PrepareConfig) -> tuple[np.ndarray, int, dict[str, Any]]:
    dc = cfg.decontaminate
    if not dc.paths:
        return np.zeros(0, dtype=np.uint64), dc.ngram, {}
    texts = [d.text for d in iter_documents(dc.paths, text_fields=dc.text_fields, strict=cfg.strict)]
    grams, short = ngram_set(texts, detect_language, dc.ngram)
    info = {"paths": dc.paths, "eval_docs": len(texts), "eval_docs_too_short": short,
            "ngram": dc.ngram, "eval_ngrams": int(len(grams))}
    log.info("decontamination: %d %d-grams from %d eval documents (%d shorter than n, unused)",
             len(grams), dc.ngram, len(texts), short)
    return grams, dc.ngram, info


# --------------------------------------------------------------------------- reports


def _build_report(cfg, sources, markers, read_stats, fingerprint, decon_info, elapsed, workers, resumed):
    total = _sum_stats(markers)
    clusters = sorted(total["clusters"].items(), key=lambda kv: (-kv[1][0], int(kv[0])))
    top = [{"size": c[0] + 1, "kept": c[1], "example_duplicate": c[2], "snippet": c[3]}
           for _, c in clusters[: cfg.dedup.clusters_in_report]]
    drops = {
        reason: {**d, "examples": [{"id": i, "text": t} for i, t in
                                   total["examples"].get(reason, [])[: cfg.output.examples_per_reason]]}
        for reason, d in sorted(total["drops"].items(), key=lambda kv: -kv[1]["docs"])
    }
    return {
        "format": PREPARED_FORMAT,
        "shards": [{"file": m["file"], "docs": m["stats"]["docs_out"], "bytes": m["stats"]["bytes_out"]}
                   for m in markers if m["file"]],
        "totals": {
            "docs_in": total["docs_in"], "bytes_in": total["bytes_in"],
            "docs_out": total["docs_out"], "bytes_out": total["bytes_out"],
            "elapsed_s": round(elapsed, 2),
            "mb_per_s": round(total["bytes_in"] / 1e6 / max(elapsed, 1e-9), 3),
            "workers": workers, "shards": len(markers), "shards_resumed": resumed,
        },
        "sources": {s.name: {"paths": s.paths, "weight": s.weight, **total["sources"].get(s.name, {}),
                             "drops": dict(total["source_drops"].get(s.name, Counter()).most_common()),
                             "read": _read_info(read_stats[s.name])} for s in sources},
        "drops": drops,
        "languages": {"in": total["lang_in"], "out": total["lang_out"]},
        "pii_replaced": total["pii"],
        "c4_lines_removed": total["c4_lines_removed"],
        "dedup": {
            "exact": total["drops"].get("dedup.exact", {}).get("docs", 0),
            "near": total["drops"].get("dedup.near", {}).get("docs", 0),
            "clusters_with_duplicates": len(clusters),
            "largest_clusters": top,
            "minhash": {"word_ngram": cfg.dedup.word_ngram, "char_ngram": cfg.dedup.char_ngram,
                        "bands": cfg.dedup.num_bands, "rows": cfg.dedup.rows_per_band,
                        "p_candidate_at_jaccard": {str(j): round(cfg.dedup.candidate_probability(j), 3)
                                                   for j in (0.5, 0.7, 0.8, 0.9)}},
        },
        "decontamination": decon_info,
        "fingerprint": fingerprint["hash"],
        "config": to_dict(cfg),
    }


def _read_info(rs: ReadStats) -> dict[str, Any]:
    return {"files": rs.files, "empty": rs.empty, "malformed": rs.malformed,
            "decode_errors": rs.decode_errors,
            "skipped_files": rs.skipped_files[:20], "problems": rs.problems[:10]}


def _empty_message(report: dict[str, Any]) -> str:
    t = report["totals"]
    if t["docs_in"] == 0:
        return "the inputs contain no documents (check the paths, text_fields and txt_mode)"
    drops = report["drops"]
    parts = [f"{r} removed {d['docs']}" for r, d in drops.items()]
    head = next(iter(drops), "?")
    filt = head.split(".")[0]
    return (f"no documents left: all {t['docs_in']} input documents were removed, mostly by {head} "
            f"({'; '.join(parts)}). Loosen or disable it, e.g. --set filters.{filt}.enabled=false"
            if filt in {f.name for f in dataclasses.fields(FiltersConfig)} else
            f"no documents left: all {t['docs_in']} input documents were removed ({'; '.join(parts)})")


def _pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def _report_markdown(r: dict[str, Any]) -> str:
    t = r["totals"]
    lines = [
        "# data prepare report", "",
        f"- documents: {human_count(t['docs_in'])} in → {human_count(t['docs_out'])} out "
        f"({_pct(t['docs_out'], t['docs_in'])})",
        f"- text: {human_bytes(t['bytes_in'])} in → {human_bytes(t['bytes_out'])} out "
        f"({_pct(t['bytes_out'], t['bytes_in'])})",
        f"- time: {t['elapsed_s']:.1f} s, {t['mb_per_s']:.2f} MB/s with {t['workers']} worker(s); "
        f"{t['shards']} shard(s), {t['shards_resumed']} resumed",
        "", "## Sources", "",
        "| source | weight | docs in | docs out | bytes in | bytes out | malformed | top drop reasons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["sources"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(s["drops"].items())[:4]) or "-"
        lines.append(f"| {name} | {s['weight']} | {s.get('docs_in', 0)} | {s.get('docs_out', 0)} | "
                     f"{human_bytes(s.get('bytes_in', 0))} | {human_bytes(s.get('bytes_out', 0))} | "
                     f"{s['read']['malformed']} | {top} |")
    lines += ["", "## Drops by reason", "", "| reason | docs | % of input | bytes |", "|---|---|---|---|"]
    for reason, d in r["drops"].items():
        share = _pct(d["docs"], t["docs_in"])
        lines.append(f"| {reason} | {d['docs']} | {share} | {human_bytes(d['bytes'])} |")
    lines += ["", "### Examples", ""]
    for reason, d in r["drops"].items():
        for ex in d["examples"]:
            lines.append(f"- **{reason}** `{ex['id']}`: {ex['text'].replace('|', '¦')}")
    lines += ["", "## Languages", "", "| language | docs in | docs out | bytes out |", "|---|---|---|---|"]
    lin, lout = r["languages"]["in"], r["languages"]["out"]
    for lang in sorted(set(lin) | set(lout), key=lambda k: -lin.get(k, {}).get("docs", 0)):
        lines.append(f"| {lang} | {lin.get(lang, {}).get('docs', 0)} | {lout.get(lang, {}).get('docs', 0)} | "
                     f"{human_bytes(lout.get(lang, {}).get('bytes', 0))} |")
    d = r["dedup"]
    mh = d["minhash"]
    lines += ["", "## Deduplication", "",
              f"- exact duplicates removed: {d['exact']}; near duplicates removed: {d['near']}; "
              f"clusters with duplicates: {d['clusters_with_duplicates']}",
              f"- MinHash: word {mh['word_ngram']}-grams / CJK character {mh['char_ngram']}-grams, "
              f"{mh['bands']} bands × {mh['rows']} rows; P(candidate | Jaccard 0.8) = "
              f"{mh['p_candidate_at_jaccard']['0.8']}", ""]
    if d["largest_clusters"]:
        lines += ["| size | kept | a duplicate | its text |", "|---|---|---|---|"]
        for c in d["largest_clusters"]:
            lines.append(f"| {c['size']} | `{c['kept']}` | `{c['example_duplicate']}` | "
                         f"{c['snippet'][:100].replace('|', '¦')} |")
    lines += ["", "## PII replaced", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(r["pii_replaced"].items())] or ["- none"]
    if r["c4_lines_removed"]:
        lines += ["", "## C4 lines removed (documents kept)", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(r["c4_lines_removed"].items())]
    if r["decontamination"]:
        dc = r["decontamination"]
        lines += ["", "## Decontamination", "",
                  f"- {dc['eval_ngrams']} {dc['ngram']}-grams from {dc['eval_docs']} eval documents "
                  f"({dc['eval_docs_too_short']} too short to use); documents removed: "
                  f"{r['drops'].get('decontaminate.eval_overlap', {}).get('docs', 0)}"]
    problems = [p for s in r["sources"].values() for p in s["read"]["problems"]]
    if problems:
        lines += ["", "## Input problems (first few)", ""] + [f"- {p}" for p in problems[:10]]
    return "\n".join(lines) + "\n"
