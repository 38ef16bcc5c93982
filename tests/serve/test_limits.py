"""Hardening: every hostile or impossible request is a 4xx in OpenAI's error shape, never a 500, and an
oversized body is refused before it is read."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

from seekforge.infer import EngineConfig, InvalidParam, SamplingParams
from seekforge.serve import ServerOptions
from seekforge.serve.safety import SafetyPolicy

from .conftest import run_server

MSGS = [{"role": "user", "content": "你好"}]
JSON = {"content-type": "application/json"}


def _error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    if param:
        assert err["param"] == param, err
    return err


def test_deeply_nested_json_is_a_400(server) -> None:
    deep = '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}"
    r = httpx.post(server.api + "/chat/completions", content=deep, headers=JSON)
    assert "nests deeper" in _error(r, 400, "invalid_json")["message"]
    schema: dict = {"type": "object"}
    for _ in range(100):  # valid JSON of moderate size, but a schema nested 100 levels deep
        schema = {"type": "object", "properties": {"a": schema}}
    body = {"messages": MSGS, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    _error(httpx.post(server.api + "/chat/completions", json=body), 400, "invalid_json")


def test_invalid_utf8_body_is_a_400(server) -> None:
    bad = b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'
    r = httpx.post(server.api + "/chat/completions", content=bad, headers=JSON)
    assert "UTF-8" in _error(r, 400, "invalid_json")["message"]


def _raw_request(port: int, head: str, chunks, limit_s: float = 20.0) -> tuple[int, bytes]:
    """Send ``head`` then body ``chunks`` until the server answers; (bytes of body sent, response).

    A reader thread takes the answer as soon as it comes: the server closes the connection with
    body bytes still unread, which resets it."""
    received: list[bytes] = []

    def read(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := s.recv(65536):
                received.append(data)

    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as s:
        reader = threading.Thread(target=read, args=(s,), daemon=True)
        s.sendall(head.encode())
        reader.start()
        for chunk in chunks:
            if received:
                break
            try:
                s.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        reader.join(timeout=limit_s)
    return sent, b"".join(received)


def test_oversized_bodies_are_refused_before_they_are_read(tiny_model_dir) -> None:
    limit = 1 << 20
    opts = ServerOptions(max_body_bytes=limit)
    with run_server(tiny_model_dir, EngineConfig(max_batch=1, max_len=64), opts) as s:
        port = int(s.url.rsplit(":", 1)[1])
        # A declared 20 MB body: 413 at once, none of it sent.
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {20 << 20}\r\n\r\n")
        sent, response = _raw_request(port, head, [])
        assert response.startswith(b"HTTP/1.1 413")
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
        # A chunked 20 MB body: refused once the limit is passed, long before the 20 MB are sent.
        head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n")
        piece = b" " * 65536
        chunks = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for _ in range(320))  # 20 MB
        sent, response = _raw_request(port, head, chunks)
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert sent < 10 << 20
        # Under the limit everything works as before.
        r = httpx.post(s.api + "/chat/completions", json={"messages": MSGS, "max_tokens": 2})
        assert r.status_code == 200


def test_logit_bias_is_validated_and_applied(server) -> None:
    url = server.api + "/chat/completions"
    for bias in ({"abc": 5}, {"-1": 5}, {"1.5": 5}, {"99999": 5}, {"3": 101}, {"3": "x"}, {"3": True}, [1]):
        _error(httpx.post(url, json={"messages": MSGS, "logit_bias": bias}), 400, param="logit_bias")
    eng = server.engine
    with pytest.raises(InvalidParam, match="logit_bias"):  # the engine checks the vocabulary too
        eng.submit("hi", SamplingParams(logit_bias={eng.vocab_size: 1.0}))
    prompt = eng.chat_prompt(MSGS)
    greedy = eng.generate([prompt], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    first = greedy.token_ids[0]
    # -100 bans the greedy token; +100 on another forces it (the server answers what the engine does).
    forced = 7 if first != 7 else 8
    for bias in ({first: -100.0}, {forced: 100.0}):
        want = eng.generate([prompt], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                     logit_bias=bias))[0]
        r = httpx.post(url, json={"messages": MSGS, "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                                  "logit_bias": {str(k): v for k, v in bias.items()}}).json()
        assert r["choices"][0]["message"]["content"] == want.text
    assert want.token_ids == [forced] * 4
    banned = eng.generate([prompt], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                   logit_bias={first: -100.0}))[0]
    assert banned.token_ids[0] != first


def test_unsupported_structured_output_and_tool_variants_are_400(server) -> None:
    url = server.api + "/chat/completions"
    TOOLS = [{"type": "function", "function": {"name": "f"}}]  # noqa: N806
    cases = [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": "json"}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": "x"}}},
         "response_format.json_schema"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
        ({"tools": "all"}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": "f"}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"guided_regex": "("}, "guided_regex"),
    ]
    for extra, param in cases:
        _error(httpx.post(url, json={"messages": MSGS, **extra}), 400, param=param)


def test_max_tokens_n_and_model_limits(server) -> None:
    url = server.api + "/chat/completions"
    _error(httpx.post(url, json={"messages": MSGS, "max_tokens": 10**12}), 400, "invalid_value", "max_tokens")
    _error(httpx.post(server.api + "/completions", json={"prompt": "hi", "max_tokens": 257}), 400,
           param="max_tokens")
    # Beyond what is left after the prompt (but within the context): clamped, ends with "length".
    r = httpx.post(url, json={"messages": MSGS, "max_tokens": 250, "ignore_eos": True}).json()
    n_prompt = len(server.engine.chat_prompt(MSGS))
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 256 - n_prompt
    err = _error(httpx.post(url, json={"messages": MSGS, "n": 5}), 400, "invalid_value", "n")
    assert "--max-batch" in err["message"]
    _error(httpx.post(url, json={"messages": MSGS, "n": 9}), 400, param="n")
    _error(httpx.post(url, json={"model": "nope", "messages": MSGS}), 400, "model_not_found", "model")
    _error(httpx.post(server.api + "/completions", json={"model": ["x"], "prompt": "hi"}), 400,
           "model_not_found", "model")


def test_disconnect_mid_stream_frees_the_slot_with_moderation_on(tiny_model_dir) -> None:
    """The moderation wrapper holds events back; a client that leaves still cancels its request."""
    policy = SafetyPolicy.from_dict({"categories": {"x": ["never-said-zzqq"]}, "hold_chars": 64})
    opts = ServerOptions(safety=policy)
    with run_server(tiny_model_dir, EngineConfig(max_batch=2, max_len=256), opts) as s:
        eng = s.engine
        body = {"messages": MSGS, "max_tokens": 200, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", s.api + "/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
            assert eng.num_running() == 1
        deadline = time.monotonic() + 10
        while (eng.num_running() or eng.free_slots() != 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert eng.num_running() == 0 and eng.free_slots() == 2
        assert eng.stats.requests_total["cancelled"] == 1
        # Token-id prompts are moderated as text; ids outside the vocabulary stay a 400 (found by fuzzing).
        for ids in ([-1], [10**30], [1, eng.vocab_size]):
            _error(httpx.post(s.api + "/completions", json={"prompt": ids}), 400, param="prompt")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/tokenize", "/v1/moderations"])
def test_non_object_bodies_are_400(server, path) -> None:
    for content in (b"", b"[]", b"null", b"3", b'"x"'):
        r = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and "error" in r.json(), (path, content, r.text)
