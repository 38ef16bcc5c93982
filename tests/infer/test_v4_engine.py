"""The one engine on DeepSeek-V4: window + compressed caches give the same greedy tokens as the
full forward, with continuous batching, chunked prefill and slots reused by later requests."""

from __future__ import annotations

import pytest
import torch

from seekforge.infer import Engine, EngineConfig

from .test_engine import greedy, reference_greedy


@pytest.fixture(scope="module")
def v4_model(random_v4):
    return random_v4()


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    # shorter than a CSA block, inside the window, across HCA blocks (16) and past the window (16)
    return [torch.randint(3, 512, (n,), generator=gen).tolist() for n in (3, 9, 21, 37)]


def test_greedy_equals_full_forward_with_batching(v4_model, tokenizer_dir) -> None:
    from seekforge.tokenizer import load_tokenizer

    prompts, lengths = _prompts(), [30, 12, 25, 18]  # decoding crosses more blocks and the window
    with Engine(v4_model, load_tokenizer(tokenizer_dir), EngineConfig(max_batch=3, max_len=96)) as eng:
        results = eng.generate(prompts, [greedy(n) for n in lengths])  # 4 requests on 3 slots
        for prompt, res, n in zip(prompts, results, lengths):
            assert res.token_ids == reference_greedy(v4_model, prompt, n)
        assert eng.free_slots() == 3


def test_chunked_prefill_equals_full_forward(v4_model, tokenizer_dir) -> None:
    from seekforge.tokenizer import load_tokenizer

    prompt = _prompts()[3]
    cfg = EngineConfig(max_batch=1, max_len=96, prefill_chunk=7)  # 37 tokens in 6 chunks
    with Engine(v4_model, load_tokenizer(tokenizer_dir), cfg) as eng:
        assert eng.generate([prompt], [greedy(10)])[0].token_ids == reference_greedy(v4_model, prompt, 10)


def test_chunked_prefill_while_other_rows_decode(v4_model, tokenizer_dir) -> None:
    """Prompts prefilled 5 tokens per loop turn in slots that earlier requests used, while the
    others decode: continued chunks and decode steps share the caches."""
    from seekforge.tokenizer import load_tokenizer

    prompts, lengths = _prompts(), [14, 20, 9, 12]
    cfg = EngineConfig(max_batch=2, max_len=96, prefill_chunk=5)
    with Engine(v4_model, load_tokenizer(tokenizer_dir), cfg) as eng:
        results = eng.generate(prompts, [greedy(n) for n in lengths])
        for prompt, res, n in zip(prompts, results, lengths):
            assert res.token_ids == reference_greedy(v4_model, prompt, n)


def _count_body_calls(monkeypatch, model) -> list[int]:
    """One whole-model pass per forward_cached call proves a chunk is not run token by token."""
    calls, body = [0], type(model).body

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return body(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "body", counted)
    return calls


# Chunks of one token, across CSA (4), HCA (16) and window (16) boundaries, and longer than the window.
@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 17, 40])
def test_continued_chunks_equal_full_forward(v4_model, monkeypatch, chunk) -> None:
    ids = torch.randint(3, 512, (2, 70), generator=torch.Generator().manual_seed(chunk))
    with torch.no_grad():
        full = v4_model(ids).logits
    calls = _count_body_calls(monkeypatch, v4_model)
    cache = v4_model.new_cache(num_slots=3, max_len=96)
    slots, outs = torch.tensor([2, 0]), []
    for start in range(0, 70, chunk):
        starts = torch.tensor([start, start])
        outs.append(v4_model.forward_cached(ids[:, start:start + chunk], cache, slots, starts).logits)
    assert calls[0] == len(outs)
    assert (torch.cat(outs, dim=1) - full).abs().max().item() < 1e-5


def test_rows_at_different_positions_in_one_call(v4_model, monkeypatch) -> None:
    """Three rows continue together: two after prefixes of 20 and 33 tokens, one restarting at 0 in
    a slot that held a 12-token sequence: the stale keys in its ring sit at positions inside the new
    queries' windows and must not be seen."""
    gen = torch.Generator().manual_seed(11)
    seqs = [torch.randint(3, 512, (1, 60), generator=gen) for _ in range(4)]
    cache = v4_model.new_cache(num_slots=3, max_len=96)
    slot = torch.tensor
    v4_model.forward_cached(seqs[0][:, :20], cache, slot([0]), slot([0]))
    v4_model.forward_cached(seqs[1][:, :33], cache, slot([1]), slot([0]))
    v4_model.forward_cached(seqs[3][:, :8], cache, slot([2]), slot([0]))  # the earlier sequence
    v4_model.forward_cached(seqs[3][:, 8:12], cache, slot([2]), slot([8]))
    rows, starts = [seqs[0], seqs[1], seqs[2]], [20, 33, 0]
    calls = _count_body_calls(monkeypatch, v4_model)
    for T in (15, 9):  # two calls: the first one's cache writes must serve the second
        ids = torch.cat([s[:, p:p + T] for s, p in zip(rows, starts)])
        before = calls[0]
        out = v4_model.forward_cached(ids, cache, slot([0, 1, 2]), slot(starts)).logits
        assert calls[0] == before + 1
        for b, (seq, p) in enumerate(zip(rows, starts)):
            with torch.no_grad():
                full = v4_model(seq[:, :p + T]).logits[0, p:]
            assert (out[b] - full).abs().max().item() < 1e-5, (b, p)
        starts = [p + T for p in starts]


def test_cache_is_smaller_than_the_sequence(v4_model) -> None:
    """Per layer: n_win window keys + one entry per block, not one key per token."""
    cache = v4_model.new_cache(num_slots=1, max_len=4096)
    cfg = v4_model.config
    full = 4096 * cfg.head_dim * cfg.num_hidden_layers * 4  # fp32 keys for every position, every layer
    assert cache.nbytes() < full / 3
