"""Structured output and tool calls driven by the official ``openai`` client against the real server.

The model is the random-weight tiny model: whatever shape comes back is guaranteed by the grammar
constraint, not learned."""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel

from seekforge.infer import EngineConfig

from .conftest import run_server

openai = pytest.importorskip("openai")


class Weather(BaseModel):
    city: Literal["Paris", "北京"]
    rain: bool
    days: int


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "required": ["city", "days"], "additionalProperties": False,
                   "properties": {"city": {"enum": ["Paris", "北京"]}, "days": {"type": "integer"}}}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"utc": {"type": "boolean"}},
                                       "required": ["utc"]}}}
ASK = [{"role": "user", "content": "北京明天天气怎么样?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    # The whole context of the tiny model: its 512-token vocabulary spells the tool list out long.
    with run_server(tiny_model_dir, EngineConfig(max_batch=4, max_len=512, queue_size=16)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=120)


def test_parse_with_a_pydantic_model(client) -> None:
    done = 0
    for seed in range(3):
        out = client.chat.completions.parse(model="tiny-chat", messages=ASK, response_format=Weather,
                                            max_tokens=120, seed=seed)
        choice = out.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(choice.message.parsed, Weather)
            assert Weather.model_validate_json(choice.message.content) == choice.message.parsed
            done += 1
    assert done >= 2


def test_json_object_streamed_and_completions(client) -> None:
    stream = client.chat.completions.create(model="tiny-chat", messages=ASK, stream=True, max_tokens=80,
                                            seed=1, response_format={"type": "json_object"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if chunks[-1].choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    assert text.lstrip().startswith("{")
    out = client.completions.create(model="tiny-chat", prompt="id:", max_tokens=20, seed=0,
                                    extra_body={"guided_regex": r"[0-9]{3}-[a-z]{2}"})
    assert out.choices[0].finish_reason == "stop" and re.fullmatch(r"[0-9]{3}-[a-z]{2}", out.choices[0].text)


def test_tool_call_round_trip_required(client) -> None:
    first = client.chat.completions.create(model="tiny-chat", messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL],
                                           tool_choice="required", max_tokens=120, seed=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and all(c.type == "function" and c.id for c in calls)
    for c in calls:
        args = json.loads(c.function.arguments)
        if c.function.name == "get_weather":
            assert args["city"] in ("Paris", "北京") and isinstance(args["days"], int)
        else:
            assert c.function.name == "get_time" and isinstance(args["utc"], bool)
    # The next turn: the assistant's calls and the tool results go back in.
    messages = ASK + [choice.message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": "晴, 25°C"} for c in calls]
    second = client.chat.completions.create(model="tiny-chat", messages=messages, tool_choice="none",
                                            tools=[WEATHER_TOOL, TIME_TOOL], max_tokens=5, seed=0)
    assert second.choices[0].message.tool_calls is None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + len(calls) * 5


def test_named_tool_and_no_parallel_calls(client) -> None:
    out = client.chat.completions.create(
        model="tiny-chat", messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], max_tokens=60, seed=3,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False)
    calls = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls"
    assert len(calls) == 1 and calls[0].function.name == "get_time"
    assert isinstance(json.loads(calls[0].function.arguments)["utc"], bool)


def test_streamed_tool_calls_assembled_by_the_client(client) -> None:
    kw = dict(model="tiny-chat", messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required",
              max_tokens=120, seed=0)
    whole = client.chat.completions.create(**kw).choices[0]
    with client.chat.completions.stream(**kw) as stream:  # the client's own delta accumulator
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    got = [(c.function.name, c.function.arguments) for c in final.message.tool_calls]
    assert got == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert all(json.loads(args) is not None for _, args in got)


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"guided_regex": "(ab"}, "guided_regex"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
])
def test_bad_structured_requests_are_400(server, extra, param) -> None:
    r = httpx.post(server.api + "/chat/completions", timeout=30,
                   json={"model": "tiny-chat", "messages": ASK, "max_tokens": 4, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_parser_reads_the_template_tool_format(server) -> None:
    """``tool_choice="auto"`` output is parsed the same way: feed the template's own rendering of an
    assistant tool-call turn through the engine's incremental decoder, token by token."""
    from seekforge.infer.detok import IncrementalDecoder
    from seekforge.serve.tools import ToolCallParser, ToolFormat

    tok = server.engine.tokenizer
    calls = [{"id": "a", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}},
             {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": '{"utc": true}'}}]
    head = tok.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(ASK + [{"role": "assistant", "content": "好的", "tool_calls": calls}],
                                   tokenize=False)
    ids = tok(full[len(head):], add_special_tokens=False)["input_ids"]
    parser, decoder = ToolCallParser(ToolFormat.of(tok)), IncrementalDecoder(tok)
    streamed: dict[int, str] = {}
    for t in ids:
        delta = parser.feed(decoder.push(t), [t])
        for d in delta.tool_calls:
            streamed[d["index"]] = streamed.get(d["index"], "") + d["function"]["arguments"]
    parser.feed(decoder.flush(), [])
    assert "".join(parser.content) == "好的"
    expected = [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert [(c.name, c.arguments) for c in parser.calls] == expected
    assert streamed == {0: '{"city": "北京"}', 1: '{"utc": true}'}
    assert parser.finish_reason("stop") == "tool_calls" and parser.finish_reason("length") == "length"


def test_auto_tools_and_streamed_completions_schema(client) -> None:
    auto = client.chat.completions.create(model="tiny-chat", messages=ASK, tools=[WEATHER_TOOL], max_tokens=8,
                                          seed=0, n=2)
    for c in auto.choices:  # the random model rarely calls; either way the answer is well-formed
        assert c.finish_reason in ("stop", "length", "tool_calls")
        assert c.message.content is not None or c.message.tool_calls
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    stream = client.completions.create(model="tiny-chat", prompt="JSON:", max_tokens=60, seed=2, stream=True,
                                       extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                           "name": "ok", "schema": schema, "strict": True}}})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert isinstance(json.loads(text)["ok"], bool)


def test_tokenizer_without_tool_tokens_answers_400(tmp_path, monkeypatch) -> None:
    """A tokenizer from before the tool-call tokens (ids 10-15 reserved) still chats; tools are a 400."""
    import torch

    import seekforge.tokenizer.train as train
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    old = [train.BOS, train.EOS, train.PAD, train.SYSTEM, train.USER, train.ASSISTANT, train.END_OF_TURN,
           train.FIM_BEGIN, train.FIM_HOLE, train.FIM_END] + [f"<|reserved_{i}|>" for i in range(6)]
    monkeypatch.setattr(train, "special_tokens", lambda num_reserved=0: old)
    tok = load_tokenizer(train.train_tokenizer(["the model learns 我们用数据训练"] * 50, vocab_size=300,
                                               out_dir=tmp_path / "tok"))
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", dtype=torch.float32, vocab_size=len(tok))
    model_dir = save_model(model, tmp_path / "old", tokenizer=tok)
    with run_server(model_dir, EngineConfig(max_batch=1, max_len=256)) as s:
        body = {"model": "tiny-chat", "messages": ASK, "max_tokens": 3}
        assert httpx.post(s.api + "/chat/completions", json=body, timeout=60).status_code == 200
        r = httpx.post(s.api + "/chat/completions", json={**body, "tools": [WEATHER_TOOL]}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        assert "tool-call tokens" in r.json()["error"]["message"]
