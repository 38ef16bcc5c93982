"""The OpenAI surface, driven by the official ``openai`` client and raw HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import torch

from seekforge.infer import EngineConfig, SamplingParams
from seekforge.serve import ServerOptions

from .conftest import run_server

MSGS = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "用中文介绍一下你自己"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=60)


def test_models_health_and_tokenize(server, client) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = httpx.post(server.url + "/tokenize", json={"prompt": "你好，世界"}).json()
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 256
    back = httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}).json()["prompt"]
    assert back.endswith("你好，世界")
    chat = httpx.post(server.url + "/tokenize", json={"messages": MSGS}).json()
    assert chat["tokens"] == server.engine.chat_prompt(MSGS)


def test_chat_non_streaming_equals_the_engine(server, client) -> None:
    r = client.chat.completions.create(model="tiny-chat", messages=MSGS, max_tokens=12, temperature=0,
                                       logprobs=True, top_logprobs=3)
    prompt = server.engine.chat_prompt(MSGS)
    want = server.engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0))[0]
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content == want.text
    assert c.finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == len(want.prompt_ids)
    assert r.usage.completion_tokens == len(want.token_ids)
    assert len(c.logprobs.content) == len(want.token_ids)
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in c.logprobs.content)


def test_chat_streaming_chunks_and_usage(server, client) -> None:
    full = client.chat.completions.create(model="tiny-chat", messages=MSGS, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(model="tiny-chat", messages=MSGS, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1
    # Raw SSE: every event is one `data:` line of valid UTF-8 JSON, ending with [DONE].
    body = {"model": "tiny-chat", "messages": MSGS, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read()
    events = [e for e in raw.decode("utf-8").split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert e.startswith("data: ") and json.loads(e[6:])["object"] == "chat.completion.chunk"


def test_completions_logprobs_and_echo_for_eval_harnesses(server, client) -> None:
    prompt = "the model learns to predict"
    r = client.completions.create(model="tiny-chat", prompt=prompt, max_tokens=0, echo=True, logprobs=1,
                                  temperature=0)
    lp = r.choices[0].logprobs
    ids = server.engine.encode(prompt)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None
    with torch.no_grad():
        ref = server.engine.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    want = [ref[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
    assert lp.text_offset == sorted(lp.text_offset) and r.choices[0].text.endswith(prompt)
    # Token-id prompts (lm-eval sends these), generation with logprobs, several prompts at once.
    r = client.completions.create(model="tiny-chat", prompt=[ids, ids[:3]], max_tokens=5, logprobs=2,
                                  temperature=0)
    assert len(r.choices) == 2
    c = r.choices[0]
    assert len(c.logprobs.tokens) == 5 and all(len(t) <= 2 for t in c.logprobs.top_logprobs)
    greedy = server.engine.generate([ids], SamplingParams(max_tokens=5, temperature=0))[0]
    assert c.text == greedy.text
    # Streaming completions end with [DONE] and carry the same text.
    s = client.completions.create(model="tiny-chat", prompt=prompt, max_tokens=6, temperature=0, stream=True)
    text = "".join(ch.choices[0].text for ch in s if ch.choices)
    full = client.completions.create(model="tiny-chat", prompt=prompt, max_tokens=6, temperature=0)
    assert text == full.choices[0].text


def test_completions_streaming_echo_logprobs_and_usage(server, client) -> None:
    """Streamed text completions: the echoed prompt first, then the same tokens, logprobs, finish
    reason and usage as the non-streamed answer (the SSE loop is shared with chat)."""
    prompt = "the model learns to predict"
    kw = dict(model="tiny-chat", prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    r = client.completions.create(**kw)
    full = r.choices[0]
    chunks = list(client.completions.create(stream=True, echo=True, stream_options={"include_usage": True},
                                            **kw))
    first = chunks[0].choices[0]
    assert first.text.endswith(prompt) and first.logprobs is None and first.finish_reason is None
    body = [c.choices[0] for c in chunks[1:] if c.choices]
    assert "".join(c.text for c in body) == full.text
    assert sum((c.logprobs.tokens for c in body if c.logprobs), []) == full.logprobs.tokens
    lps = sum((c.logprobs.token_logprobs for c in body if c.logprobs), [])
    assert lps == pytest.approx(full.logprobs.token_logprobs, abs=1e-4)
    assert [c.finish_reason for c in body if c.finish_reason] == [full.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert {c.object for c in chunks} == {"text_completion"} and len({c.id for c in chunks}) == 1


def test_concurrent_streaming_clients(server) -> None:
    def ask(i: int, out: dict) -> None:
        c = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": f"第{i}个问题"}]
        s = c.chat.completions.create(model="tiny-chat", messages=msgs,
                                      max_tokens=16, temperature=0.8, seed=i, stream=True)
        out[i] = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)

    together: dict[int, str] = {}
    threads = [threading.Thread(target=ask, args=(i, together)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    alone: dict[int, str] = {}
    for i in (0, 5):
        ask(i, alone)
    assert sorted(together) == list(range(8))
    assert together[0] == alone[0] and together[5] == alone[5]  # seeds reproduce under batching


def test_n_choices_streamed_and_not(server, client) -> None:
    kw = dict(model="tiny-chat", messages=MSGS, max_tokens=10, temperature=1.0, seed=7, n=2)
    full = client.chat.completions.create(**kw)
    assert [c.index for c in full.choices] == [0, 1]
    assert full.choices[0].message.content != full.choices[1].message.content  # seeds 7 and 8
    texts = ["", ""]
    finished = set()
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1} and texts == [c.message.content for c in full.choices]


def test_client_disconnect_cancels_and_frees_the_slot(server) -> None:
    eng = server.engine
    cancelled_before = eng.stats.requests_total["cancelled"]
    body = {"model": "tiny-chat", "messages": MSGS, "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert eng.num_running() == 1
    deadline = time.monotonic() + 10
    while (eng.num_running() or eng.free_slots() != eng.config.max_batch) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert eng.num_running() == 0 and eng.free_slots() == eng.config.max_batch
    assert eng.stats.requests_total["cancelled"] == cancelled_before + 1


def test_metrics(server, client) -> None:
    client.chat.completions.create(model="tiny-chat", messages=MSGS, max_tokens=3)
    text = httpx.get(server.url + "/metrics").text
    for name in ("seekforge:num_requests_running", "seekforge:num_requests_waiting",
                 "seekforge:generation_tokens_total", "seekforge:time_to_first_token_seconds_bucket",
                 "seekforge:generation_tokens_per_second", 'http_requests_total{path="/v1/chat/completions"'):
        assert name in text, name
    name = "seekforge:time_to_first_token_seconds_count"
    count = next(line for line in text.splitlines() if line.startswith(name))
    assert int(count.split()[-1]) >= 1


def _error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    if param:
        assert err["param"] == param
    return err


def test_invalid_requests_answer_400(server) -> None:
    url = server.api + "/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    _error(httpx.post(url, json={"model": "gpt-4", "messages": msgs}), 400, "model_not_found", "model")
    r = httpx.post(url, json={"model": "tiny-chat", "messages": msgs, "max_tokens": -1})
    _error(r, 400, param="max_tokens")
    _error(httpx.post(url, json={"messages": msgs, "temperature": "hot"}), 400, "invalid_type", "temperature")
    _error(httpx.post(url, json={"messages": msgs, "top_p": 1.5}), 400, param="top_p")
    _error(httpx.post(url, json={"messages": []}), 400, param="messages")
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    _error(r, 400, "invalid_json")
    long = [{"role": "user", "content": "数据 " * 400}]
    _error(httpx.post(url, json={"messages": long}), 400, "context_length_exceeded", "messages")
    cmpl = server.api + "/completions"
    _error(httpx.post(cmpl, json={"prompt": [1, 2, 99999]}), 400, param="prompt")
    _error(httpx.post(cmpl, json={"prompt": "hi", "max_tokens": 0}), 400, param="max_tokens")
    _error(httpx.get(server.url + "/v1/nope"), 404)


def test_api_key_and_rate_limit(tiny_model_dir) -> None:
    opts = ServerOptions(api_keys=["sk-good"], rate_limit=60.0, rate_burst=2)
    with run_server(tiny_model_dir, EngineConfig(max_batch=1, max_len=128), opts) as s:
        url = s.api + "/chat/completions"
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        _error(httpx.post(url, json=body), 401, "invalid_api_key")
        _error(httpx.post(url, json=body, headers={"Authorization": "Bearer sk-bad"}), 401, "invalid_api_key")
        assert httpx.get(s.url + "/health").status_code == 200  # public
        c = openai.OpenAI(base_url=s.api, api_key="sk-good", max_retries=0)
        c.chat.completions.create(model="tiny-chat", **body)
        c.chat.completions.create(model="tiny-chat", **body)
        with pytest.raises(openai.RateLimitError):  # burst of 2 used up; refill is 1/s
            c.chat.completions.create(model="tiny-chat", **body)


def test_full_queue_answers_503(tiny_model_dir) -> None:
    with run_server(tiny_model_dir, EngineConfig(max_batch=1, max_len=256, queue_size=1)) as s:
        long = SamplingParams(max_tokens=250, temperature=0, ignore_eos=True)
        held = [s.engine.submit("a", long), s.engine.submit("b", long)]  # one running, one waiting
        try:
            body = {"messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(s.api + "/chat/completions", json=body)
            _error(r, 503, "queue_full")
            assert "retry-after" in r.headers
        finally:
            for h in held:
                h.cancel()
