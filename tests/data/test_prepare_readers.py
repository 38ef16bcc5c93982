"""seekforge.data.readers: every input format, compression, folders/globs, and bad input."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
from pathlib import Path

import pytest

from seekforge.data.readers import ReadError, ReadStats, iter_documents


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_jsonl_ids_meta_and_compression(tmp_path):
    import zstandard

    line = b'{"text": "\xe4\xbd\xa0\xe5\xa5\xbd", "url": "u"}\n'
    _write(tmp_path / "a.jsonl", line)
    _write(tmp_path / "b.jsonl.gz", gzip.compress(line))
    _write(tmp_path / "c.jsonl.zst", zstandard.ZstdCompressor().compress(line))
    _write(tmp_path / "d.jsonl.bz2", bz2.compress(line))
    docs = list(iter_documents(sorted(tmp_path.iterdir())))
    assert [d.text for d in docs] == ["你好"] * 4
    assert docs[0].id == f"{tmp_path / 'a.jsonl'}:1" and docs[0].meta == {"url": "u"}
    assert [d.source for d in docs] == ["a", "b", "c", "d"]


def test_txt_modes(tmp_path):
    f = _write(tmp_path / "t.txt", "first para\nline two\n\n\nsecond para\n")
    assert [d.text for d in iter_documents(f)] == ["first para\nline two\n\n\nsecond para"]
    paras = list(iter_documents(f, txt_mode="paragraphs"))
    assert [(d.text, d.id.rsplit(":", 1)[1]) for d in paras] == [("first para\nline two", "1"),
                                                                   ("second para", "5")]
    assert [d.text for d in iter_documents(f, txt_mode="lines")] == ["first para", "line two", "second para"]


def test_json_parquet_csv_and_multi_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write(tmp_path / "a.json", json.dumps([{"q": "问题", "a": "回答"}, {"q": "Q2", "a": None}]))
    pq.write_table(pa.table({"q": ["pq"], "a": ["row"]}), tmp_path / "b.parquet")
    _write(tmp_path / "c.csv", 'q,a\n"multi\nline",x\n')
    docs = list(iter_documents(tmp_path, text_fields=["q", "a"], joiner=" | "))
    assert [d.text for d in docs] == ["问题 | 回答", "Q2", "pq | row", "multi\nline | x"]
    assert docs[2].id.endswith("b.parquet#0")


def test_json_array_that_is_really_jsonl(tmp_path):
    f = _write(tmp_path / "x.json", '{"text": "one"}\n{"text": "two"}\n')
    assert [d.text for d in iter_documents(f)] == ["one", "two"]


def test_folder_glob_hidden_and_unsupported(tmp_path):
    _write(tmp_path / "d" / "b.jsonl", '{"text": "b"}\n')
    _write(tmp_path / "d" / "sub" / "a.txt", "a")
    _write(tmp_path / "d" / ".hidden.jsonl", '{"text": "no"}\n')
    _write(tmp_path / "d" / "notes.docx", "zz")
    stats = ReadStats()
    assert [d.text for d in iter_documents(tmp_path / "d", stats=stats)] == ["b", "a"]
    assert stats.skipped_files == [str(tmp_path / "d" / "notes.docx")]
    assert [d.text for d in iter_documents(str(tmp_path / "d" / "**" / "*.txt"))] == ["a"]
    with pytest.raises(FileNotFoundError, match="matches no files"):
        list(iter_documents(str(tmp_path / "*.nothing")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_documents(tmp_path / "missing.jsonl"))
    with pytest.raises(ReadError, match="unsupported file type"):
        list(iter_documents(tmp_path / "d" / "notes.docx"))


def test_hf_save_to_disk(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": ["x", "y"], "n": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["t"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    docs = list(iter_documents([tmp_path / "ds", tmp_path / "dd"]))
    assert [(d.text, d.source) for d in docs] == [("x", "ds"), ("y", "ds"), ("t", "dd")]
    assert docs[1].meta == {"n": 2}


def test_malformed_json_line_is_reported_with_file_and_line(tmp_path, caplog):
    f = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": "broken\n{"text": 5}\n{"text": "ok2"}\n')
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="seekforge.data"):
        docs = list(iter_documents(f, stats=stats))
    assert [d.text for d in docs] == ["ok", "ok2"]
    assert stats.malformed == 2
    assert f"{f}:2: invalid JSON" in stats.problems[0]
    assert "field 'text' is a int" in stats.problems[1]
    assert f"{f}:2" in caplog.text
    with pytest.raises(ReadError, match=rf"{f}:2: invalid JSON.*strict"):
        list(iter_documents(f, strict=True))


def test_missing_text_field_names_field_and_existing_keys(tmp_path):
    f = _write(tmp_path / "a.jsonl", '{"content": "x", "title": "t"}\n')
    expected = r"a.jsonl:1: record has no text field 'text'; its keys are 'content', 'title'"
    with pytest.raises(ReadError, match=expected):
        list(iter_documents(f))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(ReadError, match=r"no column 'text'; its columns are 'body'"):
        list(iter_documents(tmp_path / "b.parquet"))


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    f = _write(tmp_path / "a.jsonl", b'{"text": "caf\xe9"}\n')
    stats = ReadStats()
    assert [d.text for d in iter_documents(f, stats=stats)] == ["caf\ufffd"]
    assert stats.decode_errors == 1


def test_arrow_files_and_raw_records(tmp_path):
    import pyarrow as pa

    from seekforge.data.readers import iter_records

    table = pa.table({"text": ["甲", "乙"], "n": [1, 2]})
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    docs = list(iter_documents(tmp_path / "a.arrow"))
    assert [(d.text, d.meta, d.id.rsplit("/", 1)[-1]) for d in docs] == [("甲", {"n": 1}, "a.arrow#0"),
                                                                         ("乙", {"n": 2}, "a.arrow#1")]
    _write(tmp_path / "b.jsonl", '{"x": 1}\n\n{broken\n')
    recs = list(iter_records([tmp_path / "s.arrow", tmp_path / "b.jsonl"]))
    assert [(r.row, r.value) for r in recs[:3]] == [(1, {"text": "甲", "n": 1}), (2, {"text": "乙", "n": 2}),
                                                   (1, {"x": 1})]
    assert recs[3].row == 3 and recs[3].value is None and recs[3].error.startswith("invalid JSON")
