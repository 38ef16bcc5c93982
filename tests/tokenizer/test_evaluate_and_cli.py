"""``tokenizer eval`` numbers on hand-checkable text, and the ``tokenizer train/eval`` commands."""

from __future__ import annotations

import argparse
import json

import pytest

from seekforge.data.text import LanguageIdentifier
from seekforge.tokenizer import load_tokenizer, train_tokenizer
from seekforge.tokenizer.evaluate import evaluate, format_table, measure


def _parser() -> argparse.ArgumentParser:
    from seekforge.tokenizer import cli

    parser = argparse.ArgumentParser(prog="seekforge")
    cli.register(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture(scope="module")
def one_merge_tok(tmp_path_factory):
    """A tokenizer whose only merge is ``aa`` (16 specials + 256 bytes + 1 merge = 273)."""
    return train_tokenizer(["aaaa"] * 10, 273, tmp_path_factory.mktemp("t") / "tok")


def test_line_languages_are_the_ones_data_prepare_assigns(one_merge_tok):
    lines = ["今天天气很好 ok", "The weather is nice 好", "Погода хорошая", "12345 !!!", "",
             "用 PyTorch 训练模型"]  # 6 Han characters vs 7 Latin letters: mostly Chinese text
    expected = ["zh", "en", "other", "other", "other", "zh"]
    assert [LanguageIdentifier()(line) for line in lines] == expected  # data prepare's detector
    mixed = "用 PyTorch 训练模型"
    report = measure(one_merge_tok, [mixed])
    assert report.langs["zh"].bytes == len(mixed.encode("utf-8")) and report.langs["en"].bytes == 0


def test_eval_numbers_on_known_text(tmp_path, one_merge_tok):
    # One document "aaaa\n中文" (the .txt reader drops the final newline):
    # "aaaa\n" -> aa|aa|\n: 5 bytes / 3 tokens; "中文" -> 6 single-byte tokens: 6 / 6.
    f = tmp_path / "known.txt"
    f.write_text("aaaa\n中文\n", encoding="utf-8")
    res = evaluate(one_merge_tok, [f])
    r = res["files"][str(f)]["tokenizer"]
    assert r["total"]["bytes"] == 11 and r["total"]["tokens"] == 9 and r["total"]["chars"] == 7
    assert r["en"] == {"bytes": 5, "chars": 5, "tokens": 3, "bytes_per_token": pytest.approx(5 / 3, abs=1e-4),
                       "chars_per_token": pytest.approx(5 / 3, abs=1e-4)}
    assert r["zh"]["tokens"] == 6 and r["zh"]["bytes_per_token"] == 1.0
    assert "other" not in r


def test_eval_compare_side_by_side(tmp_path, one_merge_tok, tokenizer_dir):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"body": t}) for t in ["aaaa aaaa", "床前明月光，疑是地上霜。"]),
                 encoding="utf-8")
    res = evaluate(tokenizer_dir, [f], compare=one_merge_tok, text_fields=["body"])
    per = res["files"][str(f)]
    # The 512-token BPE trained on Tang poems compresses the poem line better than bytes-only.
    assert per["tokenizer"]["zh"]["bytes_per_token"] > per["compare"]["zh"]["bytes_per_token"] == 1.0
    table = format_table(res)
    assert table.startswith("| file | lang | MB | bytes/token (tokenizer) | bytes/token (compare) |")
    assert "| docs.jsonl | zh |" in table


def test_eval_errors(tmp_path, tokenizer_dir):
    with pytest.raises(FileNotFoundError):
        evaluate(tokenizer_dir, [tmp_path / "nope.txt"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(tmp_path / "no_tok", [tmp_path])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="no documents"):
        evaluate(tokenizer_dir, [empty])


def test_cli_train_and_eval(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    lines = [{"content": f"第{i}行：机器学习 machine learning {i * 37}"} for i in range(200)]
    data.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    out = tmp_path / "tok"
    args = _parser().parse_args(["tokenizer", "train", "--input", str(data), "--vocab-size", "400", "--out",
                                 str(out), "--text-field", "content", "--set", "min_frequency=3"])
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    tok = load_tokenizer(out)
    assert 300 < len(tok) <= 400
    assert json.loads((out / "seekforge_tokenizer.json").read_text())["min_frequency"] == 3  # --set applied
    report = tmp_path / "eval.json"
    args = _parser().parse_args(["tokenizer", "eval", "--tokenizer", str(out), str(data), "--text-field",
                                 "content", "--json", str(report)])
    assert args.func(args) == 0
    assert "| data.jsonl | total |" in capsys.readouterr().out
    assert json.loads(report.read_text())["files"][str(data)]["tokenizer"]["total"]["tokens"] > 0


def test_cli_train_unknown_text_field(tmp_path):
    from seekforge.data.readers import ReadError

    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hello"}\n')
    args = _parser().parse_args(["tokenizer", "train", "--input", str(data), "--vocab-size", "300", "--out",
                                 str(tmp_path / "tok"), "--text-field", "body"])
    with pytest.raises(ReadError, match="no text field 'body'"):
        args.func(args)
    assert not (tmp_path / "tok").exists()


def test_cli_config_errors(tmp_path):
    from seekforge.config import ConfigError

    args = _parser().parse_args(["tokenizer", "train", "--input", "x", "--out", str(tmp_path / "t"),
                                 "--set", "vocab_sise=100"])
    with pytest.raises(ConfigError, match="vocab_size"):
        args.func(args)


def test_cli_train_reads_fine_tuning_files_by_their_format(tmp_path, capsys):
    alpaca = [{"instruction": f"问题{i}", "input": "", "output": f"回答 zebrafish {i}"} for i in range(30)]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca, ensure_ascii=False), encoding="utf-8")
    share = [{"conversations": [{"from": "human", "value": f"q {i}"}, {"from": "gpt", "value": "platypus"}]}
             for i in range(20)]
    share.append({"conversations": [{"from": "gpt", "value": "wrong order"}]})  # invalid: skipped, counted
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in share), encoding="utf-8")
    out = tmp_path / "tok"
    args = _parser().parse_args(["tokenizer", "train", "--input", str(tmp_path / "alpaca.json"),
                                 str(tmp_path / "chat.jsonl"), "--vocab-size", "400", "--out", str(out)])
    assert args.func(args) == 0
    assert "1 malformed records skipped" in capsys.readouterr().out
    assert json.loads((out / "seekforge_tokenizer.json").read_text())["train_docs"] == 50
    tok = load_tokenizer(out)
    # words that occur only in the answers were learned: each is one token
    assert len(tok(" zebrafish", add_special_tokens=False)["input_ids"]) == 1
    assert len(tok("platypus", add_special_tokens=False)["input_ids"]) == 1  # starts its line
