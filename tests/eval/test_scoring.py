"""The scorers against a plain full forward: prefix reuse in the MLA cache (kept between batches),
padding, multi-token continuations and deduplicated rows change nothing."""

from __future__ import annotations

import torch

from seekforge.eval.scoring import SeekforgeScorer, TokenPair, TransformersScorer


def reference(model, pairs: list[TokenPair]) -> list[list[float]]:
    out = []
    with torch.no_grad():
        for p in pairs:
            ids = torch.tensor([p.tokens])
            lp = model(ids).logits[0].float().log_softmax(-1)
            n = len(p.tokens)
            out.append([lp[i - 1, p.tokens[i]].item() for i in range(n - p.n_scored, n)])
    return out


def test_seekforge_scorer_equals_full_forward(sf_model_dir):
    from seekforge.model import load_model

    model = load_model(str(sf_model_dir), device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, 512, (40,), generator=g).tolist()
    pairs = []
    for i in range(7):  # rows of different lengths after a shared prefix; 1- and 3-token continuations
        tail = torch.randint(3, 512, (5 + 3 * i,), generator=g).tolist()
        pairs += [TokenPair(prefix + tail + [c], 1, False) for c in (10, 11)]  # same row, two targets
        pairs.append(TokenPair(prefix + tail + [12, 13, 14], 3, False))
    pairs.append(TokenPair(torch.randint(3, 512, (30,), generator=g).tolist(), 29, False))  # no shared prefix
    scorer = SeekforgeScorer(model, 4096, batch_size=4, name="t")
    got = scorer.score(pairs)
    assert scorer.cached == prefix  # the shared prefix stayed in slot 0 between batches
    want = reference(model, pairs)
    assert [len(x) for x in got] == [len(x) for x in want]
    assert max(abs(a - b) for x, y in zip(got, want) for a, b in zip(x, y)) < 1e-4


def test_transformers_scorer_equals_full_forward(llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    pairs = [
        TokenPair(torch.randint(3, 512, (10 + 7 * i,), generator=g).tolist(), 1 + i % 3, False)
        for i in range(5)
    ]
    got = TransformersScorer(model, 4096, batch_size=3, name="t").score(pairs)
    want = reference(model, pairs)
    assert max(abs(a - b) for x, y in zip(got, want) for a, b in zip(x, y)) < 1e-4


def test_plan_batches_covers_every_row_once_and_cuts_padding():
    from seekforge.eval.scoring import BATCH_OVERHEAD_TOKENS, plan_batches

    lengths = [400, 30, 35, 410, 32, 28, 390, 33]
    batches = plan_batches(lengths, max_rows=8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 8 for b in batches)
    assert [sorted(b) for b in batches] == [[0, 3, 6], [1, 2, 4, 5, 7]]  # long ones apart from short ones
    cost = sum(len(b) * max(lengths[i] for i in b) + BATCH_OVERHEAD_TOKENS for b in batches)
    assert cost < len(lengths) * max(lengths) + BATCH_OVERHEAD_TOKENS  # less than one padded batch
    assert sorted(len(b) for b in plan_batches([50] * 10, max_rows=4)) == [2, 4, 4]  # the row limit holds


def test_forward_cached_without_logits_gives_the_same_hidden(sf_model_dir):
    from seekforge.model import load_model

    model = load_model(str(sf_model_dir), device="cpu", dtype=torch.float32).eval()
    ids = torch.randint(3, 512, (2, 9), generator=torch.Generator().manual_seed(1))
    outs = []
    for with_logits in (True, False):
        cache = model.new_cache(2, 16)
        slots, start = torch.arange(2), torch.zeros(2)
        outs.append(model.forward_cached(ids, cache, slots, start, with_logits=with_logits))
    assert outs[1].logits.shape == (2, 9, 0)
    torch.testing.assert_close(outs[1].hidden, outs[0].hidden)
    torch.testing.assert_close(model.lm_head(outs[1].hidden), outs[0].logits)


def test_v4_dir_scores_on_seekforges_model_like_transformers(v4_model_dir):
    """A DeepSeek-V4 directory is scored by seekforge's own V4 module (full forward per batch: its
    compressed cache shares no prefix) and gives transformers' DeepseekV4ForCausalLM's numbers."""
    from transformers import AutoModelForCausalLM

    from seekforge.eval.models import open_model
    from seekforge.model.v4 import DeepseekV4ForCausalLM

    m = open_model(str(v4_model_dir), device="cpu", dtype="float32", batch_size=3)
    assert m.info["kind"] == "seekforge" and type(m.scorer) is TransformersScorer
    assert type(m.scorer.model) is DeepseekV4ForCausalLM
    g = torch.Generator().manual_seed(0)
    # lengths below and above tiny-v4's sliding window and compression rates (16)
    pairs = [TokenPair(torch.randint(3, 512, (8 + 13 * i,), generator=g).tolist(), 1 + i % 3, False)
             for i in range(6)]
    got = m.scorer.score(pairs)
    hf = AutoModelForCausalLM.from_pretrained(str(v4_model_dir), dtype=torch.float32).eval()
    theirs = TransformersScorer(hf, 4096, batch_size=3, name="hf").score(pairs)
    assert [len(x) for x in got] == [len(x) for x in theirs]
    assert max(abs(a - b) for x, y in zip(got, theirs) for a, b in zip(x, y)) < 1e-4
    assert max(abs(a - b) for x, y in zip(got, reference(hf, pairs)) for a, b in zip(x, y)) < 1e-4
