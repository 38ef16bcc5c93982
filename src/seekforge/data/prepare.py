"""``seekforge data prepare``: raw text in, clean deduplicated ``jsonl.gz`` shards out.

Pipeline, per document (steps switchable in ``PrepareConfig``)::

    read -> weight sampling -> clean -> language ID (+ keep-list) -> length / Gopher repetition /
    Gopher quality / C4 / FineWeb filters -> PII scrub -> decontamination -> exact + MinHash dedup
    -> write (weight > 1: copies)

With ``quality.model`` set, a trained classifier (:mod:`seekforge.data.quality`) scores the
documents that passed the heuristic filters, a batch at a time, and drops those under
``quality.threshold`` (reason ``quality.score``) before dedup.

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
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xxhash

from seekforge.config import ConfigError, to_dict
from seekforge.data.clean import CleanConfig, clean_text
from seekforge.data.dedup import (
    DedupConfig,
    LSHIndex,
    MinHasher,
    contaminated,
    exact_key_simplified,
    ngram_set,
)
from seekforge.data.filters import run_filters
from seekforge.data.pii import PIIConfig, scrub
from seekforge.data.prepare_config import LanguageConfig, OutputConfig, PrepareConfig, SourceConfig
from seekforge.data.prepare_report import ShardStats, build_report, empty_message, report_markdown
from seekforge.data.quality import load_quality_model
from seekforge.data.readers import (
    PREPARED_REPORT,
    PREPARED_STATE_DIR,
    Document,
    ReadStats,
    expand_inputs,
    iter_documents,
)
from seekforge.data.text import LanguageIdentifier, detect_language, simplify, warm_up
from seekforge.utils import atomic_write_bytes, atomic_write_text

__all__ = ["LanguageConfig", "OutputConfig", "PrepareConfig", "PrepareError", "SourceConfig", "prepare"]

log = logging.getLogger("seekforge.data")


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


class WorkItem(NamedTuple):
    """One input document sent to a worker; ``idx`` is its position in the whole input stream."""

    idx: int
    source: str
    text: str
    doc_id: str


class Dropped(NamedTuple):
    """A worker's verdict: the document fails a step (``reason`` names it, e.g. ``c4.too_few_sentences``)."""

    idx: int
    reason: str
    lang: str
    snippet: str


class Kept(NamedTuple):
    """A worker's verdict: the document passes every per-document step; dedup is decided later.

    ``line`` is the output JSON line, serialised here, in parallel, so the main process only
    decides dedup and compresses.
    """

    idx: int
    text: str
    lang: str
    exact_key: bytes | None  # None: exact dedup off
    band_keys: bytes | None  # MinHash LSH band keys (uint64 bytes); None: near dedup off
    pii_replaced: dict[str, int]
    c4_lines_removed: dict[str, int]
    line: bytes
    nbytes: int  # UTF-8 bytes of ``text``
    quality: float | None = None  # the classifier's score, when quality.keep_score


def _process_batch(batch: list[WorkItem]) -> list[Dropped | Kept]:
    """Clean, identify the language, filter, scrub and hash a batch, in input order."""
    cfg_clean: CleanConfig = _W["clean_cfg"]
    keep_langs: set[str] = _W["keep_langs"]
    pii_cfg: PIIConfig = _W["pii_cfg"]
    dedup_cfg: DedupConfig = _W["dedup_cfg"]
    decon: np.ndarray = _W["decon_ngrams"]
    decon_n: int = _W["decon_n"]
    out: list[Dropped | Kept] = []
    pending: list[tuple[int, str]] = []  # (position in `out`, simplified text) still needing MinHash keys
    names: dict[int, tuple[str, str]] = {}  # position in `out` -> (source, id), to re-serialise
    for idx, source, raw, doc_id in batch:
        text = clean_text(raw, cfg_clean)
        if not text.strip():
            out.append(Dropped(idx, "clean.empty", "other", _snippet(raw)))
            continue
        lang = _W["lid"](text)
        if keep_langs and lang not in keep_langs:
            out.append(Dropped(idx, "language.not_kept", lang, _snippet(text)))
            continue
        res = run_filters(text, lang, _W["filters"][source])
        if res.text is None:
            out.append(Dropped(idx, res.reason, lang, _snippet(text)))
            continue
        text = res.text
        pii_counts: Counter = Counter()
        text = scrub(text, pii_cfg, pii_counts)
        if len(decon) and contaminated(text, lang, decon, decon_n):
            out.append(Dropped(idx, "decontaminate.eval_overlap", lang, _snippet(text)))
            continue
        simple = simplify(text)  # shared by exact and near dedup
        ekey = exact_key_simplified(simple) if dedup_cfg.exact else None
        line = json.dumps({"text": text, "source": source, "language": lang, "id": doc_id},
                          ensure_ascii=False).encode("utf-8") + b"\n"
        out.append(Kept(idx, text, lang, ekey, None, dict(pii_counts), dict(res.c4_lines_removed),
                        line, len(text.encode("utf-8"))))
        names[len(out) - 1] = (source, doc_id)
        if _W["minhasher"] is not None:
            pending.append((len(out) - 1, simple))
    if _W.get("quality") is not None:
        _apply_quality(out, names)
        pending = [(p, sp) for p, sp in pending if isinstance(out[p], Kept)]
    mh: MinHasher | None = _W["minhasher"]
    if mh is not None and pending:
        keys = mh.keys_for_many([sp for _, sp in pending], [out[p].lang for p, _ in pending], simplified=True)
        for (pos, _), k in zip(pending, keys):
            out[pos] = out[pos]._replace(band_keys=k.tobytes())
    return out


def _apply_quality(out: list[Dropped | Kept], names: dict[int, tuple[str, str]]) -> None:
    """Score the batch's surviving documents in one vectorised call; drop those under the threshold."""
    model, threshold, keep_score = _W["quality"]
    kept = [p for p, r in enumerate(out) if isinstance(r, Kept)]
    if not kept:
        return
    scores = model.score([out[p].text for p in kept])
    for p, score in zip(kept, scores.tolist()):
        r = out[p]
        if score < threshold:
            out[p] = Dropped(r.idx, "quality.score", r.lang, _snippet(r.text))
        elif keep_score:
            source, doc_id = names[p]
            score = round(score, 4)
            line = json.dumps({"text": r.text, "source": source, "language": r.lang, "id": doc_id,
                               "quality": score}, ensure_ascii=False).encode("utf-8") + b"\n"
            out[p] = r._replace(line=line, quality=score)


# --------------------------------------------------------------------------- shard output


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
    if cfg.quality.model:  # a retrained model in the same folder is a changed input
        for t in sorted(Path(cfg.quality.model).glob("*")):
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


def _batches(items: list[WorkItem], batch_docs: int, batch_chars: int = 1 << 20) -> Iterator[list[WorkItem]]:
    cur: list[WorkItem] = []
    size = 0
    for it in items:
        cur.append(it)
        size += len(it.text)
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

    def _results(self, items: list[WorkItem]) -> Iterator[Dropped | Kept]:
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
        items: list[WorkItem] = []
        docs_by_idx: dict[int, Document] = {}
        copies: dict[int, int] = {}
        for j, doc in enumerate(docs):
            idx = first_idx + j
            nb = len(doc.text.encode("utf-8"))
            stats.count_input(doc.source, nb)
            n = _sample_copies(doc.id, doc.source, self.sources[doc.source].weight)
            if n == 0:
                stats.count_sampled_out(doc.source, nb)
                continue
            copies[idx] = n
            docs_by_idx[idx] = doc
            items.append(WorkItem(idx, doc.source, doc.text, doc.id))

        ext = {"jsonl.gz": ".jsonl.gz", "jsonl": ".jsonl", "parquet": ".parquet"}[cfg.output.format]
        writer = _ShardWriter(self.out, name + ext, cfg.output.format)
        exact_saved: list[tuple[bytes, int]] = []
        bands_saved: list[tuple[bytes, int]] = []
        new_ids: dict[str, str] = {}
        try:
            for res in self._results(items):
                idx = res.idx
                doc = docs_by_idx.pop(idx)
                nb_in = len(doc.text.encode("utf-8"))
                if self.progress is not None:
                    self.progress.update(1)
                stats.count_language(res.lang, nb_in)
                if isinstance(res, Dropped):
                    self._drop(stats, doc, res.reason, nb_in, res.snippet)
                    continue
                stats.count_c4_lines_removed(res.c4_lines_removed)
                if res.exact_key is not None:
                    rep = self.index.find_exact(res.exact_key)
                    if rep is not None:
                        self._drop(stats, doc, "dedup.exact", nb_in, _snippet(res.text), rep=rep)
                        continue
                    self.index.add_exact(res.exact_key, idx)
                    exact_saved.append((res.exact_key, idx))
                # Every indexed document can become a cluster representative: remember its id.
                self.ids[idx] = doc.id
                new_ids[str(idx)] = doc.id
                if res.band_keys is not None:
                    rep = self.index.query_and_add(np.frombuffer(res.band_keys, dtype=np.uint64), idx)
                    bands_saved.append((res.band_keys, idx))
                    if rep is not None:
                        self._drop(stats, doc, "dedup.near", nb_in, _snippet(res.text), rep=rep)
                        continue
                stats.count_pii(res.pii_replaced)
                self._write(writer, stats, doc, res, copies[idx])
            file = writer.commit()
        except BaseException:
            writer.abort()
            raise
        self._save_dedup(name, exact_saved, bands_saved)
        marker = {"shard": k, "file": file, "first_doc": first_idx, "n_docs": len(docs),
                  "stats": stats.to_dict(), "ids": new_ids}
        # The marker is the commit point: written after the shard file and its dedup keys.
        atomic_write_text(self.state / f"{name}.done.json", json.dumps(marker, ensure_ascii=False))
        return marker

    def _write(self, writer: _ShardWriter, stats: ShardStats, doc: Document, res: Kept, copies: int) -> None:
        """Write a surviving document ``copies`` times (its source's weight); copies get ``#copyN`` ids."""
        record: dict[str, Any] = {"text": res.text, "source": doc.source, "language": res.lang, "id": doc.id}
        if res.quality is not None:
            record["quality"] = res.quality
        line: bytes | None = res.line
        if self.cfg.output.keep_meta and doc.meta:
            record["meta"] = doc.meta
            line = None  # the worker's line has no meta
        for c in range(copies):
            if c:
                record = {**record, "id": f"{doc.id}#copy{c}"}
                line = None
            writer.write(record, line)
            stats.count_output(doc.source, res.lang, res.nbytes)

    def _drop(self, stats: ShardStats, doc: Document, reason: str, nbytes: int, snippet: str,
              rep: int | None = None) -> None:
        duplicate_of = (rep, self.ids.get(rep, "?")) if rep is not None else None
        stats.count_drop(doc.source, doc.id, reason, nbytes, snippet, self.cfg.output.examples_per_reason,
                         duplicate_of)


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run the pipeline; returns the report dict (also written to ``out/report.json``)."""
    t0 = time.time()
    sources = cfg.resolved_sources()
    if not sources:
        raise ConfigError("no inputs: pass --input PATH ... or define `sources` in the config")
    if not cfg.out:
        raise ConfigError("no output folder: pass --out DIR (or set `out` in the config)")
    out = Path(cfg.out)
    quality = None
    if cfg.quality.model:  # a bad model folder fails before anything is written
        quality = (load_quality_model(cfg.quality.model), cfg.quality.threshold, cfg.quality.keep_score)
    fingerprint = _fingerprint(cfg, sources)
    _prepare_out_dir(out, fingerprint, cfg.overwrite)

    filters = cfg.resolved_filters()
    workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    decon, decon_n, decon_info = _load_decontam(cfg)
    state = {"clean_cfg": cfg.clean, "lang_cfg": cfg.language, "keep_langs": set(cfg.language.languages),
             "filters": filters, "pii_cfg": cfg.pii, "dedup_cfg": cfg.dedup, "decon_ngrams": decon,
             "decon_n": decon_n, "quality": quality}
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
    report = build_report(cfg, sources, markers, read_stats, fingerprint, decon_info, elapsed, workers,
                          resumed)
    md = report_markdown(report)
    atomic_write_text(out / "report.md", md)
    if report["totals"]["docs_out"] == 0:
        raise PrepareError(empty_message(report) + f" (details: {out / 'report.md'})")
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
