"""The engine against a full-forward reference: continuous batching, chunked prefill, stops,
seeds, cancellation, back-pressure, prompt logprobs and MTP speculation (tiny random model)."""

from __future__ import annotations

import time

import pytest
import torch

from seekforge.infer import Engine, EngineConfig, InvalidParam, QueueFull, SamplingParams

PROMPTS = ["Hello world", "我们用数据训练", "the model learns to predict the next token", "x"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    with Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=3, max_len=128, queue_size=8)) as eng:
        yield eng


def reference_greedy(model, ids: list[int], n: int) -> list[int]:
    """Plain full-sequence forward, no cache: the ground truth for greedy decoding."""
    x = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(x).logits[0, -1].argmax())
            out.append(t)
            x = torch.cat([x, torch.tensor([[t]])], dim=1)
    return out


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **kw)


def test_batched_greedy_matches_reference(engine) -> None:
    # 4 prompts of different lengths on 3 slots: one request joins when another leaves.
    res = engine.generate(PROMPTS, [greedy(12), greedy(20), greedy(6), greedy(16)])
    for prompt, r, n in zip(PROMPTS, res, [12, 20, 6, 16]):
        assert r.token_ids == reference_greedy(engine.model, engine.encode(prompt), n)
        assert r.finish_reason == "length" and r.usage["completion_tokens"] == n
    assert engine.free_slots() == 3


def test_request_joining_a_running_batch(engine) -> None:
    ids = engine.encode(PROMPTS[2])
    first = engine.submit(PROMPTS[0], greedy(40))
    it = iter(first)
    next(it), next(it)  # `first` is decoding when the second arrives
    second = engine.submit(ids, greedy(10))
    assert second.result(timeout=30).token_ids == reference_greedy(engine.model, ids, 10)
    assert first.result(timeout=30).finish_reason == "length"


def test_chunked_prefill_matches(tiny_model_dir) -> None:
    cfg = EngineConfig(max_batch=2, max_len=128, prefill_chunk=5)
    with Engine.from_pretrained(tiny_model_dir, cfg) as eng:
        ids = eng.encode(" ".join(PROMPTS))  # long enough for several 5-token chunks with any tokenizer
        assert len(ids) > 10
        assert eng.generate([ids], greedy(8))[0].token_ids == reference_greedy(eng.model, ids, 8)


def test_seeded_sampling_is_independent_of_the_batch(engine) -> None:
    p = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, top_k=40, seed=123, repetition_penalty=1.1,
                       presence_penalty=0.3, ignore_eos=True)
    alone = engine.generate([PROMPTS[0]], p)[0].token_ids
    batched = engine.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2]],
                              [SamplingParams(max_tokens=30, seed=5), p, SamplingParams(max_tokens=7)])
    assert batched[1].token_ids == alone
    assert engine.generate([PROMPTS[0]], p.replace(seed=124))[0].token_ids != alone


def test_stop_string_and_stop_token(engine) -> None:
    ref = engine.generate([PROMPTS[0]], greedy(30))[0]
    full = engine.tokenizer.decode(ref.token_ids, skip_special_tokens=True)
    # A 3-character stop string from the middle of the reference text (tokens are ~1-2 chars, so it
    # spans token boundaries); the output must end right before its first occurrence.
    i = next(i for i in range(len(full) // 3, len(full) - 3) if "\ufffd" not in full[i:i + 3])
    stop = full[i:i + 3]
    res = engine.generate([PROMPTS[0]], greedy(30, stop=[stop]))[0]
    assert res.finish_reason == "stop" and stop not in res.text
    assert res.text == full[:full.index(stop)]
    assert len(res.token_ids) < 30
    # Stop token id: generation ends at its first occurrence, and the token has no text.
    sid = ref.token_ids[5]
    res = engine.generate([PROMPTS[0]], greedy(30, stop_token_ids=[sid]))[0]
    assert res.token_ids == ref.token_ids[:ref.token_ids.index(sid) + 1]
    assert res.finish_reason == "stop"


def test_prompt_logprobs_match_the_full_forward(engine) -> None:
    ids = engine.encode(PROMPTS[2])
    res = engine.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=1))[0]
    assert res.token_ids == [] and res.prompt_logprobs[0] is None
    with torch.no_grad():
        lp = engine.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    want = [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    got = [x.logprob for x in res.prompt_logprobs[1:]]
    assert got == pytest.approx(want, abs=1e-4)
    assert [x.top[0][0] for x in res.prompt_logprobs[1:]] == lp[:-1].argmax(-1).tolist()


def test_cancel_frees_the_slot_and_queue_back_pressure(tiny_model_dir) -> None:
    with Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=1, max_len=128, queue_size=1)) as eng:
        running = eng.submit("a", greedy(120))
        waiting = eng.submit("b", greedy(5))
        with pytest.raises(QueueFull):
            eng.submit("c", greedy(5))
        running.cancel()
        assert running.result(timeout=10).finish_reason == "cancelled"
        assert waiting.result(timeout=10).finish_reason == "length"  # it got the freed slot
        deadline = time.monotonic() + 5
        while eng.free_slots() != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert eng.free_slots() == 1 and eng.num_running() == 0
        with pytest.raises(InvalidParam):
            eng.submit(list(range(5, 133)), greedy(1))  # 128 prompt tokens: no room to generate
        with pytest.raises(InvalidParam):
            eng.submit("a", SamplingParams(max_tokens=-1))
        res = eng.generate(["a"], SamplingParams(max_tokens=None, temperature=0, ignore_eos=True))[0]
        assert res.finish_reason == "length" and len(res.token_ids) == 128 - len(eng.encode("a"))


def test_speculative_greedy_is_unchanged_and_reports_acceptance(tiny_model_dir, monkeypatch) -> None:
    cfg = EngineConfig(max_batch=3, max_len=128, speculative=True)
    with Engine.from_pretrained(tiny_model_dir, cfg) as eng:
        refs = [reference_greedy(eng.model, eng.encode(p), 25) for p in PROMPTS[:3]]
        # 1) the random MTP head: (almost) every draft rejected, output must still be exact.
        res = eng.generate(PROMPTS[:3], greedy(25))
        assert [r.token_ids for r in res] == refs
        # 2) a draft that is right except at every 3rd position: exercises acceptance, bonus tokens
        #    and the recovery after a rejection (one prompt at a time, so the oracle knows which).
        current: dict[str, object] = {}

        def oracle(out, next_ids, start: int):
            n, ref = current["n"], current["ref"]
            for t in range(next_ids.shape[1]):
                pos = start + t + 2  # the position this row of logits predicts
                if 0 <= pos - n < len(ref) and pos % 3:
                    out.logits[0, t, ref[pos - n]] += 1e4
            return out

        # The first draft comes from the prompt (mtp_forward_cached), later ones from the engine's
        # decode-time drafter (mtp_decode_step, possibly compiled): steer both.
        real_prompt, real_step = eng.model.mtp_forward_cached, eng._mtp_decode
        monkeypatch.setattr(eng.model, "mtp_forward_cached", lambda h, ids, c, sl, start, depth=1: oracle(
            real_prompt(h, ids, c, sl, start, depth), ids, int(start[0])))
        monkeypatch.setattr(eng, "_mtp_decode", lambda h, ids, c, sl, pos, length, depth=1: oracle(
            real_step(h, ids, c, sl, pos, length, depth), ids, int(pos[0, 0])))
        before = (eng.stats.draft_tokens_total, eng.stats.accepted_tokens_total)
        for p, ref in zip(PROMPTS[:3], refs):
            current.update(n=len(eng.encode(p)), ref=ref)
            assert eng.generate([p], greedy(25))[0].token_ids == ref
        drafts = eng.stats.draft_tokens_total - before[0]
        accepted = eng.stats.accepted_tokens_total - before[1]
        assert 0.3 < accepted / drafts < 0.95, (accepted, drafts)
        assert drafts < 3 * 24  # accepted drafts made it take fewer steps than tokens


def test_burst_of_prompts_is_prefilled_in_one_padded_forward(engine, monkeypatch) -> None:
    calls = []
    real = engine._prefill_group
    monkeypatch.setattr(engine, "_prefill_group", lambda group: calls.append(len(group)) or real(group))
    params = [greedy(6, prompt_logprobs=0), greedy(9), greedy(4)]
    with engine._cv:  # hold the engine back until all three are queued: they arrive as one burst
        handles = [engine.submit(p, sp) for p, sp in zip(PROMPTS[:3], params)]
    results = [h.result(timeout=30) for h in handles]
    assert calls == [3]
    for prompt, r, p in zip(PROMPTS, results, params):
        assert r.token_ids == reference_greedy(engine.model, engine.encode(prompt), p.max_tokens)
    ids = engine.encode(PROMPTS[0])
    with torch.no_grad():
        lp = engine.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    got = [x.logprob for x in results[0].prompt_logprobs[1:]]
    assert got == pytest.approx([lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)], abs=1e-4)


def test_compiled_decode_matches_the_reference(tiny_model_dir) -> None:
    # compile=True: one torch.compile'd decode graph for batch 1 and for 2+ (different prompt lengths,
    # so rows sit at different positions and attention masks differ per row). Greedy output must equal
    # the full-forward reference token for token, alone and with requests joining and leaving.
    # With speculative=True the compiled graphs are the [B, 2] verification step and the MTP drafter.
    for speculative in (False, True):
        cfg = EngineConfig(max_batch=2, max_len=64, compile=True, speculative=speculative)
        with Engine.from_pretrained(tiny_model_dir, cfg) as eng:
            res = eng.generate(PROMPTS[:3], [greedy(10), greedy(14), greedy(6)])
            alone = eng.generate([PROMPTS[3]], greedy(8))[0]
            for prompt, r, n in zip(PROMPTS, [*res, alone], [10, 14, 6, 8]):
                assert r.token_ids == reference_greedy(eng.model, eng.encode(prompt), n)
            assert (eng.stats.acceptance_rate is not None) == speculative


def test_engine_threads(tiny_model_dir) -> None:
    with pytest.raises(InvalidParam, match="threads"):
        Engine.from_pretrained(tiny_model_dir, EngineConfig(threads=0))
    before = torch.get_num_threads()
    seen = []
    with Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=1, max_len=32, threads=1)) as eng:
        # The engine thread runs every torch op of the engine with ITS thread count; the caller's
        # setting is untouched (loading ran single-threaded and restored it).
        step = eng._decode
        eng._decode = lambda *a: (seen.append(torch.get_num_threads()), step(*a))[1]
        eng.generate(["hi"], greedy(3))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def test_compile_failure_is_a_clear_error(tiny_model_dir, monkeypatch) -> None:
    # A machine without a C++ compiler fails inside inductor with a long trace; the engine must say
    # what failed and what to do instead.
    def broken(fn, **kw):
        def run(*a, **k):
            raise OSError("cannot find a C++ compiler\n<long inductor trace>")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    expected = r"compile=True: .*OSError: cannot find a C\+\+ compiler\)\. On CPU"
    with pytest.raises(RuntimeError, match=expected):
        Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=1, max_len=32, compile=True))


def test_dsa_model_greedy_matches_the_full_forward(tokenizer_dir, tmp_path) -> None:
    # DeepSeek-V3.2 sparse attention (index_topk 16): prompts and generations longer than k, so prefill
    # and decode select tokens from the indexer's key cache; batched, speculative or not. (compile=True
    # gives the same tokens too, checked once: it costs minutes on a loaded 2-core machine.)
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model_dir = save_model(load_model("tiny-dsa", device="cpu"), tmp_path / "dsa",
                           tokenizer=load_tokenizer(tokenizer_dir))
    prompts = [" ".join(PROMPTS), PROMPTS[2], PROMPTS[0]]
    for speculative in (False, True):
        cfg = EngineConfig(max_batch=2, max_len=128, speculative=speculative)
        with Engine.from_pretrained(model_dir, cfg) as eng:
            assert len(eng.encode(prompts[0])) > eng.model.config.index_topk
            res = eng.generate(prompts, [greedy(24), greedy(30), greedy(20)])
            for prompt, r, n in zip(prompts, res, [24, 30, 20]):
                assert r.token_ids == reference_greedy(eng.model, eng.encode(prompt), n)
