"""SFT data: formats, the dataset_info.json registry, validation with row numbers, template vars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seekforge.finetune.datasets import DataError, detect_format, load_examples, resolve_datasets


def write(path: Path, rows, jsonl: bool = False) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def load(data, **kw):
    examples, report = load_examples(
        resolve_datasets(data, kw.pop("dataset_dir", None), **kw.pop("spec", {})),
        kw.pop("template_vars", None),
    )
    return examples, report


def test_shared_alpaca_demos_load(sft_dir: Path):
    for name in ("alpaca_en_demo", "alpaca_zh_demo"):
        examples, report = load(str(sft_dir / f"{name}.json"))
        assert report.rows == len(json.loads((sft_dir / f"{name}.json").read_text(encoding="utf-8")))
        assert len(examples) == report.used > 900
        assert [m["role"] for m in examples[0].messages] == ["user", "assistant"]


def test_alpaca_input_system_history(tmp_path: Path):
    f = write(
        tmp_path / "a.json",
        [
            {
                "instruction": "Translate",
                "input": "你好",
                "output": "Hello",
                "system": "Be brief",
                "history": [["hi", "hey"]],
            }
        ],
    )
    (ex,), _ = load(str(f))
    assert ex.messages == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "Translate\n你好"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_sharegpt_openai_and_text_are_detected(tmp_path: Path):
    share = write(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "S"}],
        jsonl=True,
    )
    openai = write(
        tmp_path / "o.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ],
        jsonl=True,
    )
    text = tmp_path / "t.txt"
    text.write_text("first document\nsecond document\n", encoding="utf-8")
    (s,), _ = load(str(share))
    assert s.messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    (o,), _ = load(str(openai))
    assert o.messages[0] == {"role": "user", "content": "q"}
    t, _ = load(str(text))
    assert [x.text for x in t] == ["first document", "second document"] and t[0].is_text
    assert detect_format([{"text": "x"}], "w") == "text"


def test_bad_rows_are_reported_with_file_and_row(tmp_path: Path, caplog):
    rows = [
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no answer"},
        {"instruction": "empty", "output": "   "},
        {"messages": "oops"},
    ]
    f = write(tmp_path / "bad.jsonl", rows, jsonl=True)
    with f.open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    examples, report = load(str(f), spec={"formatting": "alpaca"})
    assert len(examples) == 1 and report.rows == 5
    where = {(Path(b.file).name, b.row) for b in report.bad}
    assert where == {("bad.jsonl", 2), ("bad.jsonl", 3), ("bad.jsonl", 4), ("bad.jsonl", 5)}
    kinds = report.reasons()
    assert kinds["missing field"] == 2 and kinds["empty field"] == 1 and kinds["invalid JSON"] == 1
    assert "bad.jsonl:2" in caplog.text


def test_wrong_roles_and_no_usable_rows(tmp_path: Path):
    rows = [
        {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
    ]
    f = write(tmp_path / "roles.json", rows)
    with pytest.raises(DataError) as e:
        load(str(f))
    msg = str(e.value)
    assert "no usable examples" in msg and "roles.json:1: wrong role" in msg
    assert "roles.json:2: wrong role" in msg and "'robot'" in msg and "roles.json:3: empty answer" in msg


def test_registry_like_llama_factory(tmp_path: Path):
    write(
        tmp_path / "chat.json",
        [{"msgs": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
    )
    write(tmp_path / "inst.json", [{"q": "question", "a": "answer"}])
    registry = {
        "my_chat": {
            "file_name": "chat.json",
            "formatting": "sharegpt",
            "columns": {"messages": "msgs"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        },
        "my_inst": {"file_name": "inst.json", "columns": {"prompt": "q", "response": "a"}},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(registry), encoding="utf-8")
    examples, report = load("my_chat,my_inst", dataset_dir=tmp_path)
    assert report.per_dataset == {"my_chat": 1, "my_inst": 1}
    assert examples[1].messages == [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "answer"},
    ]


@pytest.mark.parametrize(
    "entry, expect",
    [
        ({"file_name": "x.json", "format": "sharegpt"}, "unknown key 'format'.* Did you mean 'formatting'"),
        (
            {"file_name": "x.json", "formatting": "sharegtp"},
            "unknown format 'sharegtp'.*did you mean 'sharegpt'",
        ),
        ({"file_name": "x.json", "columns": {"promt": "q"}}, "unknown key 'promt'.*Did you mean 'prompt'"),
        (
            {"file_name": "x.json", "formatting": "sharegpt", "tags": {"role": "r"}},
            "unknown key 'role'.*role_tag",
        ),
        ({"hf_hub_url": "org/data"}, "works offline"),
        ({"file_name": "x.json", "ranking": True}, "preference data"),
    ],
)
def test_registry_typos_are_errors(tmp_path: Path, entry, expect):
    write(tmp_path / "x.json", [{"instruction": "q", "output": "a"}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}), encoding="utf-8")
    with pytest.raises(DataError, match=expect):
        load("d", dataset_dir=tmp_path)


def test_unknown_dataset_lists_registered_names(tmp_path: Path):
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"alpaca_zh": {"file_name": "a.json"}}), encoding="utf-8"
    )
    with pytest.raises(DataError, match="Did you mean 'alpaca_zh'.*Datasets in"):
        load("alpaca_zhh", dataset_dir=tmp_path)


def test_template_vars(sft_dir: Path):
    ident = str(sft_dir / "identity.json")
    with pytest.raises(DataError, match=r"\{\{author\}\}, \{\{name\}\}.*template_vars\.author"):
        load(ident)
    examples, _ = load(ident, template_vars={"name": "Forge", "author": "Ada"})
    answers = " ".join(e.messages[-1]["content"] for e in examples)
    assert (
        "{{" not in answers and answers.count("Forge") > 50 and "Ada" in answers and "我是 Forge" in answers
    )


def test_compressed_and_bom_files_load_through_the_one_reader(tmp_path: Path):
    import gzip

    import zstandard

    alpaca = [{"instruction": "问", "output": "答"}, {"instruction": "q", "output": "a"}]
    jsonl = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in alpaca).encode("utf-8")
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(jsonl))
    array = json.dumps(alpaca, ensure_ascii=False).encode("utf-8")
    (tmp_path / "b.json.zst").write_bytes(zstandard.ZstdCompressor().compress(array))
    (tmp_path / "c.json").write_bytes(b"\xef\xbb\xbf" + array)  # a UTF-8 BOM, as Windows editors write
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl)
    for name in ("a.jsonl.gz", "b.json.zst", "c.json", "d.jsonl"):
        examples, report = load(str(tmp_path / name))
        assert report.rows == 2 and not report.bad, name
        assert [m["content"] for m in examples[0].messages] == ["问", "答"]
        assert examples[1].source == f"{name}:2"


def test_a_folder_is_read_recursively_and_bad_rows_name_their_own_file(tmp_path: Path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write(tmp_path / "d" / "a.json", [{"instruction": "q", "output": "a"}])
    rows = [{"instruction": "q2"}, {"instruction": "q3", "output": "a3"}]
    write(tmp_path / "d" / "sub" / "b.jsonl", rows, jsonl=True)
    examples, report = load(str(tmp_path / "d"))
    assert [e.source for e in examples] == ["a.json:1", "b.jsonl:2"]
    assert [(Path(b.file).name, b.row) for b in report.bad] == [("b.jsonl", 1)]
