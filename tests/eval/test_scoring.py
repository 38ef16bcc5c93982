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
