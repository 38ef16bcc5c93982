"""``TokenShards``: reading across shards, and clear errors for missing or corrupt directories."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seekforge.data.shards import ShardError, ShardWriter, TokenShards, read_manifest


@pytest.fixture()
def shard_dir(tmp_path):
    """Three documents of lengths 4, 3, 5 over two shards (shard_tokens=7), plus an empty val."""
    w = ShardWriter(tmp_path / "s", vocab_size=100, bos_token_id=0, shard_tokens=7)
    w.add("train", np.array([0, 1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9]), np.array([4, 3, 5]), np.array([6, 3, 8]))
    w.finish(eos_token_id=1)
    return tmp_path / "s"


def test_reader_views(shard_dir):
    ts = TokenShards(shard_dir, "train")
    assert (len(ts), ts.num_tokens, ts.num_bytes, len(ts.shards)) == (3, 12, 17, 2)
    assert ts.bos_token_id == 0 and ts.eos_token_id == 1 and ts.dtype == np.uint16
    assert [d.tolist() for d in ts.iter_docs()] == [[0, 1, 2, 3], [0, 4, 5], [0, 6, 7, 8, 9]]
    assert ts.doc(2).tolist() == [0, 6, 7, 8, 9] and ts.doc(-1).tolist() == [0, 6, 7, 8, 9]
    assert ts.doc_span(1) == (4, 7) and ts.doc_starts().tolist() == [0, 4, 7]
    assert ts.tokens(5, 9).tolist() == [4, 5, 0, 6]  # crosses the shard boundary at 7
    assert ts.tokens(3, 3).tolist() == []
    assert ts.bytes_per_token == pytest.approx(17 / 12)
    with pytest.raises(IndexError):
        ts.doc(3)
    with pytest.raises(IndexError):
        ts.tokens(10, 13)
    val = TokenShards(shard_dir, "val")
    assert (val.num_docs, val.num_tokens) == (0, 0) and list(val.iter_docs()) == []


def test_missing_and_corrupt(tmp_path, shard_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenShards(tmp_path / "nope")
    (tmp_path / "bare").mkdir()
    with pytest.raises(ShardError, match="has no manifest.json"):
        TokenShards(tmp_path / "bare")
    with pytest.raises(ShardError, match="no split 'test'; available: train, val"):
        TokenShards(shard_dir, "test")

    manifest = shard_dir / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(good[:40])
    with pytest.raises(ShardError, match="corrupt manifest"):
        read_manifest(shard_dir)
    manifest.write_text(json.dumps({**json.loads(good), "format": "other-v9"}))
    with pytest.raises(ShardError, match="format is 'other-v9'"):
        TokenShards(shard_dir)
    manifest.write_text(good)

    binary = shard_dir / "train-00001.bin"
    data = binary.read_bytes()
    binary.write_bytes(data[:-2])  # one token short
    with pytest.raises(ShardError, match="train-00001.bin: 8 bytes on disk.*truncated or corrupt"):
        TokenShards(shard_dir)
    binary.write_bytes(data)
    np.save(shard_dir / "train-00000.idx.npy", np.array([0, 4], dtype=np.int64))
    with pytest.raises(ShardError, match=r"train-00000.idx.npy: expected 3 int64 offsets ending at 7"):
        TokenShards(shard_dir)
    (shard_dir / "train-00000.idx.npy").unlink()
    with pytest.raises(ShardError, match=r"splits.train.shards\[0\].*is missing"):
        TokenShards(shard_dir)
