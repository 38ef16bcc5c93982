"""``seekforge data augment``: EDA offline; back-translation and paraphrase through real endpoints
(``seekforge serve`` on the tiny model, a scripted ASGI server); filters, report, cache, bad input."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from seekforge.cli import main
from seekforge.data.augment_eda import EDA, EDAConfig, tokenize
from seekforge.data.augment_run import Similarity, VariantChecks, judge_variant

EN = "The quick model learns to answer a hard question quickly. It is very good."
ZH = "我们需要一个简单的方法来解决这个问题，这非常重要。"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _augment(*argv: str) -> None:
    assert main(["data", "augment", *argv]) == 0


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_eda_operations_en_and_zh():
    eda = EDA(EDAConfig(sr=0.3, ri=0.3, rs=0.3, rd=0.3))
    for text, lang in ((EN, "en"), (ZH, "zh")):
        assert "".join(tokenize(text, lang)) == text  # tokens rebuild the text exactly
        words = [t for t in tokenize(text, lang) if t.strip() and t not in ".，。"]
        for op in ("sr", "ri", "rs", "rd"):
            out = eda.variant(text, op, random.Random(1), lang)
            assert out != text, (lang, op)
            got = [t for t in tokenize(out, lang) if t.strip() and t not in ".，。"]
            if op == "ri":
                assert len(got) > len(words)
            elif op == "rd":
                assert len(got) < len(words)
            elif op == "rs":
                assert sorted(got) == sorted(words)
            else:  # sr: same length, some words replaced by a synonym from the table
                assert len(got) == len(words)
                changed = [(a, b) for a, b in zip(words, got) if a != b]
                table = eda.synonyms[lang]
                assert changed and all(b.lower() in table.get(a.lower(), []) for a, b in changed)
    # deterministic for a seed, and a line break survives every operation
    two = "first line is good\nsecond line is bad"
    assert eda.variant(two, "rd", random.Random(5)) == eda.variant(two, "rd", random.Random(5))
    assert all("\n" in eda.variant(two, op, random.Random(3)) for op in ("sr", "ri", "rs", "rd"))


def test_variant_checks():
    sim = Similarity()
    checks = VariantChecks()
    assert judge_variant(EN, EN.upper(), checks, sim) == "unchanged"
    assert judge_variant(EN, EN.replace("good", "fine"), checks, sim) is None
    long_en = " ".join(EN.split() * 3) + " and so the story of the model goes on for a while longer"
    assert judge_variant(long_en, long_en + " extra", checks, sim) == "too_similar"
    assert judge_variant(EN, "Short.", checks, sim) == "length_ratio"
    assert judge_variant(ZH, "We need a simple method to solve this problem; it matters.", checks, sim) == (
        "language_changed"
    )
    assert judge_variant(ZH, "", checks, sim) == "empty"
    assert sim.jaccard(ZH, ZH) == 1.0 and sim.jaccard(EN, ZH) < 0.1


def test_eda_cli_keeps_labels_and_answers(tmp_path):
    data = _write_jsonl(
        tmp_path / "cls.jsonl",
        [
            {"text": EN, "label": "positive"},
            {"text": ZH, "label": "neutral", "id": "zh-1"},
        ],
    )
    out = tmp_path / "out"
    _augment("--method", "eda", "--input", str(data), "--out", str(out), "--n", "4", "--sr",
             "0.3", "--ri", "0.3", "--rs", "0.3", "--rd", "0.3", "--seed", "7")
    rows = _rows(out / "augmented.jsonl")
    rep = _report(out)
    assert rep["complete"] is True and rep["records_in"] == 2 and rep["variants_made"] == 8
    assert rep["kept"] == len(rows) == 8 - sum(rep["dropped"].values()) and rep["kept"] >= 6
    assert rep["requests"] == 0 and rep["cache_hits"] == 0 and rep["failed"] == 0
    by_source = {r["source_id"]: r["label"] for r in rows}
    assert by_source == {f"{data}:1": "positive", "zh-1": "neutral"}  # labels follow their text
    assert {r["augment_method"] for r in rows} <= {"eda:sr", "eda:ri", "eda:rs", "eda:rd"}
    assert all(r["text"] not in (EN, ZH) for r in rows)
    # the same command again: the same output (seeded per record)
    _augment("--method", "eda", "--input", str(data), "--out", str(out), "--n", "4", "--sr",
             "0.3", "--ri", "0.3", "--rs", "0.3", "--rd", "0.3", "--seed", "7")
    assert _rows(out / "augmented.jsonl") == rows

    # SFT records: prompts change, answers are kept; the output is what `seekforge sft` reads
    from seekforge.finetune.datasets import DatasetSpec, load_examples

    sft = tmp_path / "sft.json"
    sft.write_text(
        json.dumps(
            [
                {
                    "instruction": "Explain why the quick model is very good at answering a hard question.",
                    "input": "",
                    "output": "ANSWER-1",
                },
                {"instruction": "请用简单的方法解释这个重要的问题。", "input": "", "output": "答案二"},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    out2 = tmp_path / "out2"
    _augment("--method", "eda", "--input", str(sft), "--out", str(out2), "--n", "3", "--rs",
             "0.3", "--sr", "0", "--ri", "0", "--rd", "0", "--keep-original")
    rows = _rows(out2 / "augmented.jsonl")
    assert [r["augment_method"] for r in rows[:2]] == ["original", "original"]
    assert {r["output"] for r in rows} == {"ANSWER-1", "答案二"}
    assert all(r["source_id"] == f"{sft}[{0 if r['output'] == 'ANSWER-1' else 1}]" for r in rows)
    examples, _ = load_examples([DatasetSpec(str(out2), out2 / "augmented.jsonl", "auto")])
    assert len(examples) == len(rows)


def test_eda_on_chats_changes_user_turns_only(tmp_path):
    chats = [
        {
            "conversations": [
                {"from": "human", "value": EN},
                {"from": "gpt", "value": "A1"},
                {"from": "human", "value": ZH},
                {"from": "gpt", "value": "A2"},
            ],
            "system": "S",
        },
    ]
    data = _write_jsonl(tmp_path / "chat.jsonl", chats)
    out = tmp_path / "out"
    _augment("--method", "eda", "--input", str(data), "--out", str(out), "--n", "3", "--rs",
             "0.3", "--sr", "0", "--ri", "0", "--rd", "0")
    rows = _rows(out / "augmented.jsonl")
    assert len(rows) == 3
    for r in rows:
        turns = r["conversations"]
        assert [t["value"] for t in turns[1::2]] == ["A1", "A2"] and r["system"] == "S"
        assert (turns[0]["value"], turns[2]["value"]) != (EN, ZH)  # the user turns were swapped around
        assert sorted(re.findall(r"\w+", turns[0]["value"])) == sorted(re.findall(r"\w+", EN))
        assert r["augment_method"] == "eda:rs"
    out2 = tmp_path / "out2"  # --target response: only the answers change
    _augment("--method", "eda", "--input", str(data), "--out", str(out2), "--n", "1", "--target",
             "response", "--rd", "0.5", "--sr", "0", "--ri", "0", "--rs", "0", "--length-ratio",
             "0.01", "10", "--allow-language-change")
    rep = _report(out2)
    assert rep["variants_made"] == 1  # answers "A1"/"A2" are one word each: deletion keeps one word
    assert rep["dropped"] == {"unchanged": 1}


def test_bad_input_is_named(tmp_path, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"text": EN}])
    out = str(tmp_path / "out")

    def err(*argv: str) -> str:
        assert main(["data", "augment", *argv]) == 2
        return capsys.readouterr().err

    assert "--rd: EDA rates must be in [0, 1], got 1.5" in err(
        "--method", "eda", "--input", str(data), "--out", out, "--rd", "1.5"
    )
    assert "--sr: EDA rates must be in [0, 1], got -0.1" in err(
        "--method", "eda", "--input", str(data), "--out", out, "--sr", "-0.1"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": EN}) + "\n{not json\n", encoding="utf-8")
    assert f"{bad}:2: invalid JSON" in err("--method", "eda", "--input", str(bad), "--out", out)
    assert "needs a model: pass --endpoint" in err(
        "--method", "paraphrase", "--input", str(data), "--out", out
    )
    assert "does not exist" in err("--method", "eda", "--input", str(tmp_path / "nope.jsonl"), "--out", out)
    sft = _write_jsonl(
        tmp_path / "sft.jsonl", [{"instruction": "hi", "output": "hello"}, {"instruction": "hey"}]
    )
    assert f"{sft}:2: missing field: 'output'" in err("--method", "eda", "--input", str(sft), "--out", out)
    assert not (tmp_path / "out" / "augmented.jsonl").exists()


def test_paraphrase_and_backtranslate_through_seekforge_serve(tiny_endpoint, tmp_path, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"text": EN, "label": 1}, {"text": ZH, "label": 0}])
    out = tmp_path / "para"
    common = [
        "--input",
        str(data),
        "--n",
        "2",
        "--endpoint",
        tiny_endpoint.url,
        "--api-key",
        tiny_endpoint.api_key,
        "--model",
        "tiny-chat",
        "--max-tokens",
        "12",
        "--concurrency",
        "4",
    ]
    # The tiny model's words are random: keep every non-empty variant to check the plumbing.
    loose = ["--allow-language-change", "--length-ratio", "0.01", "100", "--max-similarity", "1"]
    assert main(["data", "augment", "--method", "paraphrase", "--out", str(out), *common, *loose]) == 0
    rep = _report(out)
    assert rep["complete"] and rep["model"] == "tiny-chat" and rep["variants_made"] == 4
    assert rep["requests"] == 4 and rep["cache_hits"] == 0 and rep["failed"] == 0
    assert rep["prompt_tokens"] > 0 and rep["completion_tokens"] > 0
    rows = _rows(out / "augmented.jsonl")
    assert len(rows) == rep["kept"] == 4 - sum(rep["dropped"].values())
    assert all(
        r["augment_method"] == "paraphrase" and r["label"] == (1 if r["source_id"].endswith(":1") else 0)
        for r in rows
    )
    # the same command again: everything from the cache, zero calls, the same output
    assert main(["data", "augment", "--method", "paraphrase", "--out", str(out), *common, *loose]) == 0
    rep2 = _report(out)
    assert rep2["requests"] == 0 and rep2["cache_hits"] == 4 and _rows(out / "augmented.jsonl") == rows

    # a different run into the same folder is refused, naming the difference
    capsys.readouterr()
    assert main(["data", "augment", "--method", "paraphrase", "--out", str(out), *common, "--n", "3"]) == 2
    assert f"--out {out} holds a different run's cache and outputs" in capsys.readouterr().err
    assert "'n': 2" in json.dumps(json.loads((out / "run.json").read_text())["options"]).replace('"', "'")
    assert _rows(out / "augmented.jsonl") == rows  # the earlier run's output is untouched
    _augment("--method", "paraphrase", "--out", str(out), *common, *loose, "--n", "3",
             "--overwrite")
    rep3 = _report(out)  # the old cache went with --overwrite: all 6 requests are sent
    assert rep3["variants_made"] == 6 and rep3["requests"] == 6 and rep3["cache_hits"] == 0
    bt = tmp_path / "bt"
    assert main(["data", "augment", "--method", "backtranslate", "--out", str(bt), *common]) == 0
    rep = _report(bt)
    # two requests per variant (there and back), every drop counted
    assert rep["requests"] == 8 and rep["variants_made"] == 4
    assert rep["kept"] + sum(rep["dropped"].values()) == 4
    assert {r["augment_method"] for r in _rows(bt / "augmented.jsonl")} <= {
        "backtranslate:en-zh-en",
        "backtranslate:zh-en-zh",
    }


def test_backtranslate_filters_and_pivot(scripted_server, tmp_path):
    """A scripted translator: checks which prompts are sent and that the filters catch bad variants."""
    asked: list[str] = []

    def reply(body):
        text = body["messages"][0]["content"]
        asked.append(text)
        src = text.split("\n\n", 1)[1]
        if "翻译成中文" in text:  # en -> zh (the way back of a zh -> en -> zh trip)
            return {"EN-A": ZH.replace("简单", "容易"), "EN-B": ZH, "EN-C": "短"}.get(
                src, "Not Chinese text."
            )
        if "Japanese" in text:
            return "JA"
        return {ZH: "EN-A", ZH + "!": "EN-B", ZH + "?": "EN-C"}.get(src, src)

    server, url = scripted_server(reply)
    data = _write_jsonl(tmp_path / "d.jsonl", [{"text": ZH}, {"text": ZH + "!"}, {"text": ZH + "?"}])
    out = tmp_path / "out"
    _augment("--method", "backtranslate", "--input", str(data), "--out", str(out), "--n", "1",
             "--endpoint", url)
    rep = _report(out)
    assert rep["dropped"] == {"length_ratio": 1, "unchanged": 1} and rep["kept"] == 1
    (row,) = _rows(out / "augmented.jsonl")
    assert row["text"] == ZH.replace("简单", "容易") and row["augment_method"] == "backtranslate:zh-en-zh"
    assert any("into English" in a for a in asked)
    # --pivot: any language pair; the English answer of the way back is a language change
    out2 = tmp_path / "out2"
    _augment("--method", "backtranslate", "--input", str(data), "--out", str(out2), "--n", "1",
             "--pivot", "ja", "--endpoint", url)
    assert any("into Japanese" in a for a in asked)
    assert _report(out2)["dropped"] == {"language_changed": 3}
