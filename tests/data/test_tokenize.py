"""``data tokenize``: shard format, determinism across worker counts, train/val split, bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from seekforge.data.shards import TokenShards
from seekforge.data.tokenize import _is_val, tokenize_to_shards
from seekforge.tokenizer import load_tokenizer


def _docs(n: int = 300) -> list[str]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(f"第{i}篇：春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。{i * 7}")
        elif i % 3 == 1:
            out.append(f"Document {i}: the quick brown fox jumps over the lazy dog {i * 13}.\n\tIndented.")
        else:
            out.append(f"mixed 混合 text {i} 😀\r\nwith <|eos|> and <|user|> written as plain text")
    return out


@pytest.fixture()
def corpus(tmp_path):
    docs = _docs()
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": t, "n": i}, ensure_ascii=False) for i, t in enumerate(docs)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, docs


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_shard_format_and_content(tmp_path, corpus, tokenizer_dir):
    path, docs = corpus
    m = tokenize_to_shards(path, tokenizer_dir, tmp_path / "out", val_fraction=0.1, workers=0)
    assert m["format"] == "seekforge-tokens-v1" and m["dtype"] == "uint16" and m["vocab_size"] == 512
    assert m["bos_token_id"] == 0 and m["eos_token_id"] == 1 and m["val_split"] == "hash"
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()  # self-describing
    tok = load_tokenizer(tokenizer_dir)
    expect_val = [t for t in docs if _is_val(t, 0.1)]
    expect_train = [t for t in docs if not _is_val(t, 0.1)]
    assert 10 <= len(expect_val) <= 60  # ~30 expected
    for split, texts in (("train", expect_train), ("val", expect_val)):
        info = m["splits"][split]
        assert info["docs"] == len(texts)
        assert info["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        ts = TokenShards(tmp_path / "out", split)
        assert (ts.num_docs, ts.num_tokens, ts.num_bytes) == (info["docs"], info["tokens"], info["bytes"])
        raw = np.fromfile(tmp_path / "out" / info["shards"][0]["file"], dtype="<u2")
        idx = np.load(tmp_path / "out" / info["shards"][0]["index"])
        assert idx.dtype == np.int64 and len(idx) == info["docs"] + 1 and idx[-1] == len(raw)
        assert (raw[idx[:-1]] == tok.bos_token_id).all() and (raw == tok.bos_token_id).sum() == info["docs"]
        for i, text in enumerate(texts):  # input order kept; special-looking strings stay plain text
            assert tok.decode(ts.doc(i)[1:].tolist()) == text
        assert not np.isin(raw, [tok.eos_token_id, tok.convert_tokens_to_ids("<|user|>")]).any()


def test_deterministic_across_workers_and_runs(tmp_path, corpus, tokenizer_dir):
    path, _ = corpus
    kw = dict(val_fraction=0.1, batch_bytes=2000)  # many small batches, so order handling matters
    tokenize_to_shards(path, tokenizer_dir, tmp_path / "w0", workers=0, **kw)
    tokenize_to_shards(path, tokenizer_dir, tmp_path / "w2", workers=2, **kw)
    tokenize_to_shards(path, tokenizer_dir, tmp_path / "w2b", workers=2, **kw)
    a, b, c = _files(tmp_path / "w0"), _files(tmp_path / "w2"), _files(tmp_path / "w2b")
    assert a.keys() == b.keys() and all(a[k] == b[k] == c[k] for k in a)


def test_shards_are_cut_at_shard_tokens(tmp_path, corpus, tokenizer_dir):
    path, docs = corpus
    m = tokenize_to_shards(path, tokenizer_dir, tmp_path / "out", val_fraction=0.0, workers=0,
                           shard_tokens=2000)
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 3 and all(s["tokens"] <= 2000 for s in shards)
    assert sum(s["docs"] for s in shards) == len(docs) and m["splits"]["val"]["docs"] == 0
    ts = TokenShards(tmp_path / "out")
    whole = np.concatenate([ts.doc(i) for i in range(len(ts))])
    assert (ts.tokens(0, ts.num_tokens) == whole).all()


def test_explicit_val_inputs(tmp_path, corpus, tokenizer_dir):
    path, docs = corpus
    val = tmp_path / "val.txt"
    val.write_text("held out 文本", encoding="utf-8")
    m = tokenize_to_shards(path, tokenizer_dir, tmp_path / "out", val_inputs=[val], workers=0)
    assert m["val_split"] == "inputs" and m["splits"]["train"]["docs"] == len(docs)
    assert m["splits"]["val"]["docs"] == 1 and m["splits"]["val"]["bytes"] == len("held out 文本".encode())


def test_tiny_corpus_gets_a_tail_val_split(tmp_path, tokenizer_dir):
    text = "one long document 一篇很长的文章。 " * 200
    f = tmp_path / "single.txt"
    f.write_text(text, encoding="utf-8")
    m = tokenize_to_shards(f, tokenizer_dir, tmp_path / "out", val_fraction=0.1, workers=0)
    assert m["val_split"] == "tail"
    train, val = TokenShards(tmp_path / "out", "train"), TokenShards(tmp_path / "out", "val")
    assert val.num_docs == 1 and val.doc(0)[0] == 0
    assert abs(val.num_tokens - 0.1 * (train.num_tokens + val.num_tokens)) < 3
    assert train.num_bytes + val.num_bytes == len(text.rstrip("\n").encode("utf-8"))
    tok = load_tokenizer(tokenizer_dir)
    rejoined = tok.decode(train.doc(0)[1:].tolist() + val.doc(0)[1:].tolist())
    assert rejoined == text.rstrip("\n")


def test_uint32_when_vocab_is_large(tmp_path):
    from seekforge.data.shards import ShardWriter, token_dtype

    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    w = ShardWriter(tmp_path / "big", 129280, 0)
    ids = np.array([0, 70000, 129279, 0, 5], dtype=np.int64)
    w.add("train", ids, np.array([3, 2]), np.array([10, 2]))
    m = w.finish()
    assert m["dtype"] == "uint32"
    ts = TokenShards(tmp_path / "big")
    assert ts.doc(0).tolist() == [0, 70000, 129279] and ts.doc(1).tolist() == [0, 5]
    with pytest.raises(ValueError, match="token id 129280 >= vocab_size"):
        ShardWriter(tmp_path / "x", 129280, 0).add("train", np.array([129280]), np.array([1]), np.array([1]))


def test_bad_inputs(tmp_path, corpus, tokenizer_dir):
    from seekforge.data.readers import ReadError

    path, _ = corpus
    with pytest.raises(FileNotFoundError, match="tokenizer directory .* does not exist"):
        tokenize_to_shards(path, tmp_path / "no_tok", tmp_path / "out")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no documents found"):
        tokenize_to_shards(empty, tokenizer_dir, tmp_path / "out", workers=0)
    with pytest.raises(ReadError, match="no text field 'body'"):
        tokenize_to_shards(path, tokenizer_dir, tmp_path / "out", text_fields=["body"], workers=0)
    with pytest.raises(FileNotFoundError):
        tokenize_to_shards(tmp_path / "missing.jsonl", tokenizer_dir, tmp_path / "out", workers=0)
    with pytest.raises(ValueError, match="val_fraction"):
        tokenize_to_shards(path, tokenizer_dir, tmp_path / "out", val_fraction=1.5)
    broken = tmp_path / "broken_tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken_tok/tokenizer.json: could not load"):
        tokenize_to_shards(path, broken, tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()  # failures leave no output behind


def _parser() -> argparse.ArgumentParser:
    from seekforge.data import tokenize

    parser = argparse.ArgumentParser(prog="seekforge")
    tokenize.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli(tmp_path, corpus, tokenizer_dir, capsys):
    path, docs = corpus
    cfg = tmp_path / "tok.yaml"
    cfg.write_text("val_fraction: 0.5\nworkers: 0\n")
    args = _parser().parse_args(["data", "tokenize", str(cfg), "--input", str(path), "--tokenizer",
                                 str(tokenizer_dir), "--out", str(tmp_path / "out"), "--val-fraction", "0.2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "uint16" in out and "bytes/token" in out
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["val_fraction"] == 0.2  # the flag beats the YAML file
    assert m["splits"]["val"]["docs"] == sum(_is_val(t, 0.2) for t in docs)
    with pytest.raises(SystemExit):  # --val and --val-fraction exclude each other
        _parser().parse_args(["data", "tokenize", "--val", "x", "--val-fraction", "0.1"])
