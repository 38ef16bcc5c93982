"""SFT data with tool calls: sharegpt ``function_call``/``observation`` turns (as LLaMA-Factory writes
them) and OpenAI ``tool_calls``/``role: tool`` messages train the chat template's tool-call format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seekforge.finetune.datasets import load_examples, resolve_datasets
from seekforge.finetune.encode import IGNORE, ChatEncoder
from seekforge.tokenizer import load_tokenizer
from seekforge.tokenizer.train import TOOL_CALL_BEGIN, TOOL_CALLS_BEGIN, TOOL_OUTPUT, TOOL_SEP

TOOLS = [{"name": "get_weather", "description": "weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
SHAREGPT = {"conversations": [
    {"from": "human", "value": "北京天气?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "北京"}},
                                                  ensure_ascii=False)},
    {"from": "observation", "value": "晴"},
    {"from": "gpt", "value": "北京今天晴。"}], "tools": json.dumps(TOOLS, ensure_ascii=False)}
OPENAI = {"messages": [
    {"role": "user", "content": "北京天气?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "晴"},
    {"role": "assistant", "content": "北京今天晴。"}], "tools": [{"type": "function", "function": TOOLS[0]}]}


def trained_runs(tok, enc) -> list[str]:
    runs, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            cur.append(t)
        elif cur:
            runs, cur = runs + [tok.decode(cur)], []
    return runs + ([tok.decode(cur)] if cur else [])


@pytest.mark.parametrize("row", [SHAREGPT, OPENAI], ids=["sharegpt", "openai"])
def test_tool_calls_are_trained_in_the_template_format(tokenizer_dir: Path, tmp_path: Path, row) -> None:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([row], ensure_ascii=False), encoding="utf-8")
    examples, report = load_examples(resolve_datasets(str(path), None), None)
    assert not report.bad and len(examples) == 1
    ex = examples[0]
    assert ex.tools and ex.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(ex.messages[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "北京"}
    tok = load_tokenizer(tokenizer_dir)
    enc = ChatEncoder(tok, 512).encode(ex)
    full = tok.decode(enc.input_ids)
    assert "get_weather" in full.split(TOOL_CALLS_BEGIN)[0]  # the tool list is in the prompt
    assert f"{TOOL_OUTPUT}晴" in full
    runs = trained_runs(tok, enc)
    assert len(runs) == 2  # the call turn and the final answer; tool output and prompt are not trained
    assert runs[0].startswith(f"{TOOL_CALLS_BEGIN}{TOOL_CALL_BEGIN}get_weather{TOOL_SEP}")
    assert runs[0].endswith(tok.eos_token) and runs[1] == "北京今天晴。" + tok.eos_token


def test_bad_function_call_is_a_bad_row(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "not json"},
                             {"from": "observation", "value": "y"}, {"from": "gpt", "value": "z"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([row, SHAREGPT], ensure_ascii=False), encoding="utf-8")
    examples, report = load_examples(resolve_datasets(str(path), None), None)
    assert len(examples) == 1 and len(report.bad) == 1 and "bad tool call" in report.bad[0].reason
