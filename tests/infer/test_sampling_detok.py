"""Sampler and detokenizer units: filters, penalties, exact speculative sampling, UTF-8, stop strings."""

from __future__ import annotations

import pytest
import torch

from seekforge.infer.detok import IncrementalDecoder, StopMatcher, token_pieces
from seekforge.infer.sampling import InvalidParam, PenaltyState, SamplingParams, make_generator, sample


def _sample(logits, params, seeds=None, draft=None, penalties=None):
    B = logits.shape[0]
    gens = [make_generator(s, logits.device) for s in (seeds or [0] * B)]
    state = penalties or PenaltyState(B, logits.shape[1], logits.device)
    return sample(logits, params, gens, torch.arange(B), state, draft=draft)


def test_filters_that_keep_one_token_equal_greedy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=1.5, top_k=1), SamplingParams(temperature=1.0, top_p=1e-6),
              SamplingParams(temperature=2.0, min_p=1.0), SamplingParams(temperature=0.0)]
    res, _ = _sample(logits, params, seeds=[1, 2, 3, 4])
    assert res.tokens.tolist() == logits.argmax(-1).tolist()


def test_inverse_cdf_sampling_matches_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(4000, -1).clone()
    res, _ = _sample(logits, [SamplingParams(temperature=1.0)] * 4000, seeds=list(range(4000)))
    freq = torch.bincount(res.tokens, minlength=5).float() / 4000
    assert freq[4] == 0  # a zero-probability token is never drawn
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_speculative_point_mass_draft_keeps_the_distribution_exact() -> None:
    # Accept d with p(d), else sample p without d: the result must still be distributed as p.
    probs = torch.tensor([0.1, 0.6, 0.3])
    n = 4000
    logits = probs.log().expand(n, -1).clone()
    draft = torch.full((n,), 2)
    res, accepted = _sample(logits, [SamplingParams(temperature=1.0)] * n, seeds=list(range(n)), draft=draft)
    freq = torch.bincount(res.tokens, minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=0.03), freq
    assert abs(accepted.float().mean().item() - 0.3) < 0.03
    assert bool((res.tokens[accepted] == 2).all())
    # Greedy rows accept exactly when the draft is the argmax.
    res, accepted = _sample(probs.log().expand(2, -1).clone(), [SamplingParams(temperature=0)] * 2,
                            draft=torch.tensor([1, 0]))
    assert accepted.tolist() == [True, False] and res.tokens.tolist() == [1, 1]


def test_penalties_change_the_choice() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0, -1.0]])
    state = PenaltyState(1, 4, torch.device("cpu"))
    p = SamplingParams(temperature=0, frequency_penalty=1.0)
    state.reset(0, [], p)
    state.update(torch.tensor([0]), torch.tensor([0]))  # token 0 was generated once
    res, _ = _sample(logits, [p], penalties=state)
    assert res.tokens.item() == 1
    rep = SamplingParams(temperature=0, repetition_penalty=2.0)
    state.reset(0, [0, 1], rep)  # both in the prompt: 3/2 = 1.5 < 0.0? no -> token 0 still best
    res, _ = _sample(logits, [rep], penalties=state)
    assert res.tokens.item() == 0
    state.reset(0, [0], rep)  # only token 0 penalised: 1.5 < 2.9
    res, _ = _sample(logits, [rep], penalties=state)
    assert res.tokens.item() == 1


def test_logit_bias_moves_only_its_rows_and_tokens() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    top = logits.argmax(-1).tolist()
    params = [SamplingParams(temperature=0.0, logit_bias={7: 100.0}),  # forced
              SamplingParams(temperature=0.0),  # untouched in the same batch
              SamplingParams(temperature=0.0, logit_bias={top[2]: -100.0})]  # banned
    res, _ = _sample(logits, params)
    second = logits[2].clone()
    second[top[2]] = -1e9
    assert res.tokens.tolist() == [7, top[1], second.argmax().item()]
    for bad in ({-1: 1.0}, {3: 100.5}, {3: float("nan")}, {"3": 1.0}):
        with pytest.raises(InvalidParam, match="logit_bias"):
            SamplingParams(logit_bias=bad).validate()


def test_logprobs_are_the_raw_model_distribution() -> None:
    logits = torch.randn(2, 30)
    params = [SamplingParams(temperature=0.5, top_k=3, logprobs=2), SamplingParams(temperature=0)]
    res, _ = _sample(logits, params)
    lp = logits.log_softmax(-1)
    got = res.logprobs[0]
    assert abs(got.logprob - lp[0, got.token_id].item()) < 1e-5
    assert [i for i, _ in got.top] == lp[0].topk(2).indices.tolist()
    assert res.logprobs[1] is None


def test_incremental_decode_never_splits_chinese(tokenizer_dir) -> None:
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    text = "我们用数据训练一个语言模型，它学会预测下一个词元。Mixed 中英文 text 😀!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(t) for t in ids]
    pieces[-1] += dec.flush()
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert any(p == "" for p in pieces)  # some token did end inside a character (held back)
    assert "".join(token_pieces(tok, ids)) == text


def test_stop_matcher_across_pieces_and_holdback() -> None:
    m = StopMatcher(["\n\nUser:", "END"])
    out = []
    for piece in ["Hello", " wor", "ld\n", "\nUs", "er: more"]:
        text, stopped = m.feed(piece)
        out.append(text)
        if stopped:
            break
    assert "".join(out) == "Hello world" and stopped
    assert out[2] == "ld"  # "\n" held back: it may start "\n\nUser:"
    m = StopMatcher(["END"])
    assert m.feed("the EN") == ("the ", False)
    assert m.feed("D") == ("", True)
    m = StopMatcher(["END"])
    assert m.feed("EN") == ("", False) and m.feed("ough") == ("ENough", False)
