"""Read documents from whatever a user has lying around: one iterator, many formats.

``iter_documents(inputs)`` yields ``Document(text, source, id, meta)`` from

- ``.txt``/``.md`` — one document per file, one per blank-line-separated block
  (``txt_mode="paragraphs"``) or one per non-blank line (``txt_mode="lines"``);
- ``.jsonl``/``.ndjson`` — one JSON object per line; ``.json`` — a JSON array of objects (a
  ``.json`` file that is really JSON lines is read as such);
- ``.parquet``, ``.arrow`` (Arrow IPC file or stream), ``.csv``/``.tsv``;
- any of the above compressed as ``.gz``, ``.zst``, ``.bz2`` or ``.xz`` (``x.jsonl.gz``);
- folders (walked recursively in sorted order) and glob patterns (``data/**/*.jsonl.zst``);
- a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``);
- a folder written by ``seekforge data prepare`` (its shards, in order, with their ``source``,
  ``language`` and ``id``).

``iter_records(inputs)`` is the layer below: the raw records (parsed JSON values, table rows,
``{"text": line}`` for text lines) with their place, for readers that interpret whole records
themselves (the SFT loader's chat formats). Both share one parser per format.

Order is deterministic (sorted paths, file order within a file), and ids are stable
(``path:line`` for line-based files, ``path#row`` for tables), so that everything downstream
(sharding, sampling, dedup) is reproducible. Memory stays bounded: files are streamed, except a
``.json`` array and a ``.txt`` document in ``file`` mode, which are necessarily read whole.

Bad input is reported precisely: a malformed JSON line is logged with ``file:line`` and counted
in ``stats`` (``strict=True`` raises instead); a missing text field raises naming the field and
the keys that do exist, because a silently empty corpus is worse than a crash.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import json
import logging
import lzma
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

log = logging.getLogger("seekforge.data")

# Written by ``seekforge data prepare`` into its output folder, last (see prepare.py).
PREPARED_FORMAT = "seekforge-prepared-v1"
PREPARED_REPORT = "report.json"
PREPARED_STATE_DIR = "_state"

COMPRESSIONS = (".gz", ".zst", ".zstd", ".bz2", ".xz")
FORMATS = (".jsonl", ".ndjson", ".json", ".txt", ".md", ".parquet", ".arrow", ".csv", ".tsv")
# Warn about the first few malformed records per file only: a broken 10 GB file must not
# flood the terminal, and the total is in the stats anyway.
_MAX_WARNINGS_PER_FILE = 5


class ReadError(ValueError):
    """An input file cannot be read as asked. The message names the file (and line/field)."""


@dataclass
class Document:
    """One document. ``id`` is stable across runs; ``meta`` holds the record's other fields."""

    text: str
    source: str
    id: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)  # one per line of a corpus: slots make creating it cheaper
class Record:
    """One record of a data file as parsed, before any field of it is interpreted.

    ``where`` names it in messages and is the stable document id: ``path:line`` for line-based
    files, ``path[i]`` for JSON arrays, ``path#i`` for tables. ``row`` is the 1-based line number
    (line-based files) or element/row number. An unparsable record has ``value`` None and
    ``error`` saying why ("invalid JSON (...)").
    """

    path: Path
    where: str
    row: int
    value: Any = None
    error: str | None = None


@dataclass
class ReadStats:
    """Counters filled in while reading (pass one to ``iter_documents(stats=...)``)."""

    files: int = 0
    docs: int = 0
    bytes: int = 0  # UTF-8 bytes of the yielded text
    empty: int = 0  # records whose text was empty/null (skipped)
    malformed: int = 0  # unparsable lines/records (skipped unless strict)
    decode_errors: int = 0  # lines with invalid UTF-8 (replaced with U+FFFD)
    skipped_files: list[str] = field(default_factory=list)  # unsupported files inside folders
    problems: list[str] = field(default_factory=list)  # first few messages, for reports

    def problem(self, message: str, limit: int = 50) -> None:
        if len(self.problems) < limit:
            self.problems.append(message)


# --------------------------------------------------------------------------- path expansion


def _split_ext(path: Path) -> tuple[str, str]:
    """``a/b.jsonl.gz`` -> (".jsonl", ".gz"); ``a/b.csv`` -> (".csv", "")."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSIONS else ""
    if comp:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), comp


def is_supported_file(path: Path) -> bool:
    fmt, _ = _split_ext(path)
    return fmt in FORMATS


def is_hf_dataset_dir(path: Path) -> bool:
    """A folder written by ``datasets`` ``save_to_disk`` (Dataset or DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def is_prepared_dir(path: Path) -> bool:
    """A folder written (completely or partly) by ``seekforge data prepare``."""
    return (path / PREPARED_STATE_DIR).is_dir() or _read_prepared_report(path) is not None


def _read_prepared_report(path: Path) -> dict[str, Any] | None:
    report = path / PREPARED_REPORT
    if not report.is_file():
        return None
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == PREPARED_FORMAT else None


def _is_hidden(rel: Path) -> bool:
    # ``.x`` (editor/atomic-write temp files) and ``_x`` (Spark/_SUCCESS, our _state) are not data.
    return any(part.startswith((".", "_")) for part in rel.parts)


def _walk_folder(folder: Path, stats: ReadStats | None) -> Iterator[tuple[str, Path]]:
    """Yield (kind, path) for every readable thing under ``folder``, in sorted order."""
    if is_prepared_dir(folder):
        yield "prepared", folder
        return
    if is_hf_dataset_dir(folder):
        yield "hf", folder
        return
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        # Sorted in place so os.walk descends deterministically; special folders are leaves.
        # A folder's own files come first, then its sub-folders (as os.walk visits them).
        for name in sorted(files):
            path = root_path / name
            if _is_hidden(path.relative_to(folder)):
                continue
            if is_supported_file(path):
                yield "file", path
            elif stats is not None:
                stats.skipped_files.append(str(path))
        dirs.sort()
        keep_dirs = []
        for d in dirs:
            sub = root_path / d
            if _is_hidden(sub.relative_to(folder)):
                continue
            if is_prepared_dir(sub):
                yield "prepared", sub
            elif is_hf_dataset_dir(sub):
                yield "hf", sub
            else:
                keep_dirs.append(d)
        dirs[:] = keep_dirs


def expand_inputs(
    inputs: str | Path | Iterable[str | Path], stats: ReadStats | None = None
) -> list[tuple[str, Path]]:
    """Inputs (files, folders, globs) -> ordered list of (kind, path); kind is file/hf/prepared.

    Raises FileNotFoundError for a path or glob that matches nothing, and ReadError for a file
    whose format is not supported (inside folders such files are skipped and listed in stats).
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[tuple[str, Path]] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.exists():
            matches = [path]
        elif any(c in text for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(text), recursive=True))]
            if not matches:
                raise FileNotFoundError(f"input pattern {text!r} matches no files")
        else:
            raise FileNotFoundError(f"input {text!r} does not exist")
        for m in matches:
            if m.is_dir():
                out.extend(_walk_folder(m, stats))
            elif is_supported_file(m):
                out.append(("file", m))
            elif len(matches) == 1:
                raise ReadError(
                    f"{m}: unsupported file type; expected one of {', '.join(FORMATS)} "
                    f"(optionally compressed with {', '.join(COMPRESSIONS)}), a folder, or a glob"
                )
            elif stats is not None:
                stats.skipped_files.append(str(m))
    return out


# --------------------------------------------------------------------------- opening files


def open_binary(path: Path) -> BinaryIO:
    """Open a possibly compressed file for binary reading (decompressing on the fly)."""
    _, comp = _split_ext(path)
    if comp == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if comp in (".zst", ".zstd"):
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - closed via the stream reader below
        # The zstd reader is a raw stream without line iteration; buffering adds it.
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    if comp == ".bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if comp == ".xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _iter_lines(path: Path, stats: ReadStats | None) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without the newline); invalid UTF-8 is replaced."""
    with open_binary(path) as raw:
        for lineno, bline in enumerate(raw, 1):
            if lineno == 1 and bline.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM (Windows editors)
                bline = bline[3:]
            try:
                line = bline.decode("utf-8")
            except UnicodeDecodeError:
                line = bline.decode("utf-8", errors="replace")
                if stats is not None:
                    stats.decode_errors += 1
            yield lineno, line.rstrip("\r\n")


# --------------------------------------------------------------------------- record -> text


def _as_text(value: Any, joiner: str) -> str | None:
    """A field value as text: strings as-is, null as empty, lists of strings joined."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return joiner.join(value)
    return None


def _record_text(record: Any, text_fields: Sequence[str], joiner: str, where: str) -> tuple[str | None, str]:
    """Join ``text_fields`` of a record. Returns (text or None if malformed, problem message).

    A missing field raises ReadError at once: that is a wrong ``text_fields`` setting (or wrong
    file), not one bad record, and every other record would fail the same way.
    """
    if not isinstance(record, dict):
        return None, f"{where}: expected a JSON object, got {type(record).__name__}"
    parts = []
    for name in text_fields:
        if name not in record:
            keys = ", ".join(repr(k) for k in list(record)[:20]) or "(none)"
            raise ReadError(
                f"{where}: record has no text field {name!r}; its keys are {keys}. "
                "Choose the field(s) with text_fields"
            )
        value = _as_text(record[name], joiner)
        if value is None:
            return None, f"{where}: field {name!r} is a {type(record[name]).__name__}, expected a string"
        if value:
            parts.append(value)
    return joiner.join(parts), ""


def _meta(record: dict[str, Any], text_fields: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in text_fields}


class _Reporter:
    """Counts and reports malformed records of one file (raise when strict)."""

    def __init__(self, path: Path, strict: bool, stats: ReadStats | None):
        self.path, self.strict, self.stats, self.count = path, strict, stats, 0

    def bad(self, message: str) -> None:
        if self.strict:
            raise ReadError(message + " (strict mode; drop --strict to skip such records)")
        self.count += 1
        if self.stats is not None:
            self.stats.malformed += 1
            self.stats.problem(message)
        if self.count <= _MAX_WARNINGS_PER_FILE:
            log.warning("skipping malformed record: %s", message)
        elif self.count == _MAX_WARNINGS_PER_FILE + 1:
            log.warning("%s: more malformed records; further warnings suppressed", self.path)


# --------------------------------------------------------------------------- per-format records


def _jsonl_records(path: Path, stats: ReadStats | None) -> Iterator[Record]:
    """One record per non-blank line."""
    for lineno, line in _iter_lines(path, stats):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield Record(path, where, lineno, json.loads(line))
        except json.JSONDecodeError as e:
            yield Record(path, where, lineno, error=f"invalid JSON ({e.msg} at column {e.colno})")


def _json_records(path: Path, stats: ReadStats | None) -> Iterator[Record]:
    """A JSON array (or ``{"data": [...]}``); a ``.json`` file that is really JSON lines is read as such."""
    with open_binary(path) as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8-sig"))  # -sig: drop a UTF-8 BOM (Windows editors)
    except UnicodeDecodeError as e:
        raise ReadError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: it is JSON lines named .json
            yield from _jsonl_records(path, stats)
            return
        raise ReadError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        # {"data": [...]} / {"train": [...]}: accept a single list-valued key, nothing cleverer.
        lists = [k for k, v in data.items() if isinstance(v, list)]
        data = data[lists[0]] if len(lists) == 1 else [data]
    if not isinstance(data, list):
        raise ReadError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, value in enumerate(data):
        yield Record(path, f"{path}[{i}]", i + 1, value)


def _text_line_records(path: Path, stats: ReadStats | None) -> Iterator[Record]:
    for lineno, line in _iter_lines(path, stats):
        if line.strip():
            yield Record(path, f"{path}:{lineno}", lineno, {"text": line})


ColumnCheck = Callable[[Path, Sequence[str]], None]


def _table_records(path: Path, rows: Iterable[dict[str, Any]], first_row: int = 0) -> Iterator[Record]:
    for i, row in enumerate(rows, first_row):
        yield Record(path, f"{path}#{i}", i + 1, row)


def _csv_records(path: Path, delimiter: str, check: ColumnCheck | None) -> Iterator[Record]:
    csv.field_size_limit(sys.maxsize)  # documents are often longer than the 128 KiB default
    with open_binary(path) as raw:
        f = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None:
            return  # empty file
        if check is not None:
            check(path, reader.fieldnames)
        for i, row in enumerate(reader):
            if None in row:  # more cells than header columns
                yield Record(path, f"{path}:{reader.line_num}", i + 1,
                             error="row has more cells than the header")
                continue
            yield Record(path, f"{path}#{i}", i + 1, row)


def _parquet_records(path: Path, check: ColumnCheck | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(open_binary(path))
    except Exception as e:  # pyarrow raises its own ArrowInvalid for corrupt files
        raise ReadError(f"{path}: cannot read as parquet ({e})") from None
    if check is not None:
        check(path, pf.schema_arrow.names)
    row = 0
    # Batches keep memory bounded on multi-GB files; all columns are read so meta is complete.
    for batch in pf.iter_batches(batch_size=1024):
        rows = batch.to_pylist()
        yield from _table_records(path, rows, row)
        row += len(rows)


def _arrow_records(path: Path, check: ColumnCheck | None) -> Iterator[Record]:
    import pyarrow as pa

    try:
        with open_binary(path) as f:
            buf = pa.py_buffer(f.read())
        try:
            table = pa.ipc.open_file(buf).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_stream(buf).read_all()
    except pa.ArrowInvalid as e:
        raise ReadError(f"{path}: cannot read as an Arrow IPC file or stream ({e})") from None
    if check is not None:
        check(path, table.column_names)
    row = 0
    for batch in table.to_batches(max_chunksize=1024):
        rows = batch.to_pylist()
        yield from _table_records(path, rows, row)
        row += len(rows)


def _hf_records(path: Path, check: ColumnCheck | None) -> Iterator[Record]:
    try:
        import datasets
    except ImportError:
        raise ReadError(f"{path}: a Hugging Face datasets folder; pip install datasets") from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        splits = [(name, loaded[name]) for name in loaded]
    else:
        splits = [("", loaded)]
    for split, ds in splits:
        where = path / split if split else path
        if check is not None:
            check(where, ds.column_names)
        row = 0
        for batch in ds.iter(batch_size=1024):
            n = len(next(iter(batch.values()))) if batch else 0
            yield from _table_records(where, ({k: v[i] for k, v in batch.items()} for i in range(n)), row)
            row += n


def _file_records(path: Path, stats: ReadStats | None, check: ColumnCheck | None = None) -> Iterator[Record]:
    """The records of one data file (text files: one ``{"text": line}`` per non-blank line)."""
    fmt, _ = _split_ext(path)
    if fmt in (".jsonl", ".ndjson"):
        return _jsonl_records(path, stats)
    if fmt == ".json":
        return _json_records(path, stats)
    if fmt in (".txt", ".md"):
        return _text_line_records(path, stats)
    if fmt == ".parquet":
        return _parquet_records(path, check)
    if fmt == ".arrow":
        return _arrow_records(path, check)
    return _csv_records(path, "\t" if fmt == ".tsv" else ",", check)


# --------------------------------------------------------------------------- records -> documents


def _check_columns(path: Path, columns: Sequence[str], text_fields: Sequence[str]) -> None:
    missing = [f for f in text_fields if f not in columns]
    if missing:
        raise ReadError(
            f"{path}: no column {missing[0]!r}; its columns are {', '.join(repr(c) for c in columns)}. "
            "Choose the column(s) with text_fields"
        )


def _records_to_docs(records: Iterable[Record], source: str, text_fields: Sequence[str], joiner: str,
                     rep: _Reporter) -> Iterator[Document]:
    for rec in records:
        if rec.error is not None:
            rep.bad(f"{rec.where}: {rec.error}")
            continue
        text, problem = _record_text(rec.value, text_fields, joiner, rec.where)
        if text is None:
            rep.bad(problem)
            continue
        yield Document(text, source, rec.where, _meta(rec.value, text_fields))


def _read_txt(path: Path, source: str, txt_mode: str, stats: ReadStats | None) -> Iterator[Document]:
    if txt_mode == "file":
        text = "\n".join(line for _, line in _iter_lines(path, stats))
        yield Document(text, source, str(path), {})
        return
    if txt_mode == "lines":  # one document per non-blank line (Wikipedia dumps, CC-style text)
        for rec in _text_line_records(path, stats):
            yield Document(rec.value["text"], source, rec.where, {})
        return
    # paragraphs: blocks separated by one or more blank (whitespace-only) lines
    block: list[str] = []
    start = 0
    for lineno, line in _iter_lines(path, stats):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield Document("\n".join(block), source, f"{path}:{start}", {})
            block = []
    if block:
        yield Document("\n".join(block), source, f"{path}:{start}", {})


def prepared_shards(folder: Path) -> list[Path]:
    """The shard files of a finished ``data prepare`` output folder, in order."""
    report = _read_prepared_report(folder)
    if report is None:
        raise ReadError(
            f"{folder}: this `seekforge data prepare` output is unfinished (no {PREPARED_REPORT} yet); "
            "re-run the same prepare command to finish it before reading it"
        )
    return [folder / s["file"] for s in report.get("shards", [])]


def _read_prepared(folder: Path, rep: _Reporter, stats: ReadStats | None) -> Iterator[Document]:
    for shard in prepared_shards(folder):
        if shard.name.endswith(".parquet"):
            rows: Iterable[tuple[str, dict[str, Any]]] = (
                (f"{shard}#{i}", r) for i, r in enumerate(_parquet_rows(shard))
            )
        else:
            rows = ((f"{shard}:{n}", json.loads(line)) for n, line in _iter_lines(shard, stats) if line)
        for where, record in rows:
            text = record.get("text")
            if not isinstance(text, str):
                rep.bad(f"{where}: prepared record without a string 'text'")
                continue
            meta = {k: v for k, v in record.items() if k not in ("text", "source", "id")}
            yield Document(text, str(record.get("source", folder.name)), str(record.get("id", where)), meta)


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


# --------------------------------------------------------------------------- public entry point


def iter_documents(
    inputs: str | Path | Iterable[str | Path],
    *,
    text_fields: Sequence[str] = ("text",),
    joiner: str = "\n\n",
    txt_mode: Literal["file", "paragraphs", "lines"] = "file",
    strict: bool = False,
    stats: ReadStats | None = None,
    source: str | None = None,
    skip_empty: bool = True,
) -> Iterator[Document]:
    """Yield documents from files, folders, globs, HF ``save_to_disk`` and prepare outputs.

    ``text_fields``: field/column names whose values are joined with ``joiner`` into the text.
    ``source``: the name put on every document (default: the file stem, or the folder name for
    dataset folders; prepared outputs keep their recorded source). ``strict``: raise ReadError
    on the first malformed record instead of logging and counting it in ``stats``.
    """
    if isinstance(text_fields, str):
        text_fields = (text_fields,)
    if not text_fields:
        raise ValueError("text_fields must name at least one field")
    if txt_mode not in ("file", "paragraphs", "lines"):
        raise ValueError(f"txt_mode must be 'file', 'paragraphs' or 'lines', got {txt_mode!r}")
    for kind, path in expand_inputs(inputs, stats):
        rep = _Reporter(path, strict, stats)
        if stats is not None:
            stats.files += 1
        name = source or (path.name if kind != "file" else path.name.split(".")[0])
        if kind == "prepared":
            docs: Iterator[Document] = _read_prepared(path, rep, stats)
        elif kind == "file" and _split_ext(path)[0] in (".txt", ".md"):
            docs = _read_txt(path, name, txt_mode, stats)
        else:
            def check(where: Path, columns: Sequence[str]) -> None:
                _check_columns(where, columns, text_fields)

            records = _hf_records(path, check) if kind == "hf" else _file_records(path, stats, check)
            docs = _records_to_docs(records, name, text_fields, joiner, rep)
        for doc in docs:
            if skip_empty and not doc.text.strip():
                if stats is not None:
                    stats.empty += 1
                continue
            if stats is not None:
                stats.docs += 1
                stats.bytes += len(doc.text.encode("utf-8"))
            yield doc


def iter_records(
    inputs: str | Path | Iterable[str | Path], *, stats: ReadStats | None = None
) -> Iterator[Record]:
    """Yield the raw records of files, folders, globs, HF ``save_to_disk`` and prepare outputs.

    A record is a parsed JSON value (JSON lines, a JSON array or ``{"data": [...]}``), a table
    row as a dict (parquet, Arrow, CSV/TSV, datasets folders) or ``{"text": line}`` for each
    non-blank line of a text file; compressed files and a UTF-8 BOM are handled as in
    :func:`iter_documents`. Unparsable records are yielded with ``error`` set, for the caller to
    report or skip; what a record must contain is the caller's business.
    """
    for kind, path in expand_inputs(inputs, stats):
        if stats is not None:
            stats.files += 1
        if kind == "hf":
            yield from _hf_records(path, None)
        elif kind == "prepared":
            for shard in prepared_shards(path):
                yield from _file_records(shard, stats)
        else:
            yield from _file_records(path, stats)
