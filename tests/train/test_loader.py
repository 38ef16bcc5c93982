"""Packed rows: deterministic, complete, rank-sharded, resumable; eval rows tile the val tokens once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seekforge.data.shards import TokenShards
from seekforge.train.loader import PackedRows, PretrainLoader, eval_batches, make_eval_set


def test_rows_are_deterministic_and_cover_each_epoch_once(tiny_shards):
    shards = TokenShards(tiny_shards, "train")
    a, b = PackedRows(shards, 64, seed=3), PackedRows(shards, 64, seed=3)
    n = a.rows_in_epoch(0)
    assert np.array_equal(a.rows(0, 20), b.rows(0, 20))
    assert not np.array_equal(a.rows(0, 20), PackedRows(shards, 64, seed=4).rows(0, 20))
    # every epoch-0 token (after the offset) appears exactly once: same multiset as the stream
    epoch0 = a.rows(0, n)
    lay = a._layout(0)
    stream = np.concatenate([shards.doc(int(d)) for d in lay.doc_order]).astype(np.int64)
    expect = stream[lay.offset: lay.offset + n * 64]
    assert np.array_equal(np.sort(epoch0.ravel()), np.sort(expect))
    # documents keep their BOS: the number of BOS tokens equals the number of docs that start inside
    bos = shards.bos_token_id
    assert (epoch0 == bos).sum() == (expect == bos).sum() > 0
    # the next epoch is a different order and cut
    assert not np.array_equal(a.rows(n, 5), epoch0[:5])
    assert a.locate(n) == (1, 0)


def test_unshuffled_rows_follow_the_stream(tiny_shards):
    shards = TokenShards(tiny_shards, "train")
    rows = PackedRows(shards, 32, seed=0, shuffle=False)
    assert np.array_equal(rows.row(2), shards.tokens(64, 96).astype(np.int64))


def test_rank_shares_partition_the_global_batch(tiny_shards):
    shards = TokenShards(tiny_shards, "train")
    rows = PackedRows(shards, 64, seed=0)
    single = PretrainLoader(rows, micro_batch_size=4, grad_accum=2)
    ranks = [PretrainLoader(rows, micro_batch_size=4, grad_accum=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        one = torch.cat([b["input_ids"] for b in single.next_step()])
        two = torch.cat([ld.next_step()[0]["input_ids"] for ld in ranks])
        assert torch.equal(one, two)
    assert single.position == ranks[0].position == 24


def test_loader_state_resumes_exactly_and_rejects_other_settings(tiny_shards):
    shards = TokenShards(tiny_shards, "train")
    a = PretrainLoader(PackedRows(shards, 64, seed=0), 4, 2)
    for _ in range(5):
        a.next_step()
    b = PretrainLoader(PackedRows(shards, 64, seed=0), 4, 2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_step()[1]["input_ids"], b.next_step()[1]["input_ids"])
    c = PretrainLoader(PackedRows(shards, 32, seed=0), 4, 2)
    with pytest.raises(ValueError, match="seq_len"):
        c.load_state_dict(a.state_dict())


def test_too_little_data_is_a_clear_error(tiny_shards):
    shards = TokenShards(tiny_shards, "val")
    with pytest.raises(ValueError, match="fewer than 2 rows"):
        PackedRows(shards, shards.num_tokens, seed=0)


def test_eval_rows_score_every_non_special_token_once(tiny_shards, tokenizer_dir):
    from seekforge.tokenizer import load_tokenizer

    shards = TokenShards(tiny_shards, "val")
    tok = load_tokenizer(tokenizer_dir)
    es = make_eval_set(shards, None, tok, list(tok.all_special_ids))
    assert es.num_bytes == shards.num_bytes and es.num_tokens == shards.num_tokens
    targets = []
    for ids, labels in eval_batches(es, seq_len=50, batch_size=3):
        assert ids.shape[1] == 50
        targets.append(labels[:, 1:][labels[:, 1:] != -100])
    scored = torch.cat(targets)
    stream = torch.from_numpy(shards.tokens(1, shards.num_tokens).astype(np.int64))
    expect = stream[~torch.isin(stream, torch.tensor(es.special_ids))]
    assert torch.equal(scored, expect)
    # the bytes of exactly those tokens' text are the manifest's bytes (byte-level BPE round-trips)
    text = tok.decode(expect.tolist(), skip_special_tokens=True)
    assert len(text.encode("utf-8")) == es.num_bytes


def test_partial_eval_counts_the_bytes_of_the_documents_it_reads(tiny_shards, tokenizer_dir):
    from seekforge.tokenizer import load_tokenizer

    shards = TokenShards(tiny_shards, "val")
    tok = load_tokenizer(tokenizer_dir)
    es = make_eval_set(shards, shards.num_tokens // 2, tok)
    starts = list(shards.doc_starts()) + [shards.num_tokens]
    assert es.num_tokens in starts and es.num_tokens <= shards.num_tokens // 2
    n_docs = starts.index(es.num_tokens)
    expect = sum(len(tok.decode(shards.doc(d).tolist(), skip_special_tokens=True).encode())
                 for d in range(n_docs))
    assert es.num_bytes == expect
    rows = sum(ids.shape[0] for ids, _ in eval_batches(es, 64, 1000))
    assert rows == math.ceil((es.num_tokens - 1) / 63)
    with pytest.raises(ValueError, match="tokenizer"):
        make_eval_set(shards, shards.num_tokens // 2, None)
