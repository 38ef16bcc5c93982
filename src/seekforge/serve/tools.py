"""Structured output and tool calls for the OpenAI-compatible server (request parsing + output parsing).

* ``response_format``: ``{"type": "text"}``, ``{"type": "json_object"}`` or ``{"type": "json_schema",
  "json_schema": {"name", "schema", "strict"}}`` becomes an engine :class:`Constraint`; so do vLLM's
  extra fields ``guided_json`` (a schema), ``guided_regex`` and ``guided_grammar`` (EBNF).
* ``tools`` / ``tool_choice`` / ``parallel_tool_calls``: the tools are rendered into the prompt by the
  chat template (``apply_chat_template(tools=...)``); with ``tool_choice`` ``"required"`` or a named
  function the output is constrained to the tool-call format with each function's parameter schema:

      <|tool_calls_begin|> (<|tool_call_begin|> NAME <|tool_sep|> ARGUMENTS <|tool_call_end|>)+
      <|tool_calls_end|> EOS

  (``"auto"`` leaves the model free; ``"none"`` asks for text). :class:`ToolCallParser` turns the
  engine's token stream back into ``message.tool_calls`` / streamed ``delta.tool_calls`` chunks.
  The format needs the tool-call special tokens of ``seekforge tokenizer train``; a tokenizer without
  them answers a tools request with 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from seekforge.infer import Constraint
from seekforge.serve.protocol import APIError, bad, new_id
from seekforge.tokenizer.train import (
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALLS_BEGIN,
    TOOL_CALLS_END,
    TOOL_SEP,
)

# OpenAI's rule for function names.
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Whitespace characters allowed between JSON tokens of tool arguments: the template renders arguments
# as given (compact or ", "/": " separated), so a few suffice and a model cannot pad its way past
# max_tokens (response_format allows more for indented output, see seekforge.infer.constraints).
MAX_WHITESPACE = 2


GUIDED = {"guided_json": Constraint.json_schema, "guided_regex": Constraint.regex,
          "guided_grammar": Constraint.grammar}


def request_constraint(body: dict[str, Any]) -> tuple[Constraint | None, str]:
    """The output constraint a request asks for and the field that asked (for error messages)."""
    asked = [k for k in ("response_format", *GUIDED) if body.get(k) is not None]
    if len(asked) > 1:
        raise bad(asked[1], f"send only one of {', '.join(asked)}")
    if not asked or asked[0] == "response_format":
        return response_format_constraint(body), "response_format"
    name = asked[0]
    try:
        return GUIDED[name](body[name]), name
    except ValueError as e:
        raise bad(name, f"'{name}': {e}") from None


def response_format_constraint(body: dict[str, Any]) -> Constraint | None:
    """The constraint of ``response_format`` (None for absent / ``text``); 400 naming the field."""
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise bad("response_format", "'response_format' must be an object with a 'type'", code="invalid_type")
    kind = rf["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint.json_object()
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise bad("response_format.json_schema",
                      "'response_format.json_schema' must be an object with 'name' and a 'schema' object")
        # A missing schema means "any JSON object", as OpenAI treats it.
        if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
            raise bad("response_format.json_schema.strict", "'strict' must be a boolean", code="invalid_type")
        return Constraint.json_schema(spec.get("schema") or {"type": "object"})
    raise bad("response_format.type", f"unknown response_format type {kind!r}; expected 'text', "
              "'json_object' or 'json_schema'")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class ToolRequest:
    """The parsed ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` of a chat request."""

    tools: list[Tool]
    choice: str  # "auto" | "none" | "required" | "function" (one named tool, in ``tools[0]``)
    parallel: bool
    template_tools: list[dict[str, Any]]  # what the chat template renders (all tools, OpenAI shape)

    @property
    def constrained(self) -> bool:
        return self.choice in ("required", "function")


def parse_tools(body: dict[str, Any]) -> ToolRequest | None:
    """Validate the tool fields; None when the request has no tools."""
    raw = body.get("tools")
    choice = body.get("tool_choice")
    if raw is None or raw == []:
        if choice not in (None, "none", "auto"):
            raise bad("tool_choice", "'tool_choice' needs 'tools'")
        return None
    if not isinstance(raw, list):
        raise bad("tools", "'tools' must be a list of function tools", code="invalid_type")
    tools = [_tool(i, t) for i, t in enumerate(raw)]
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise bad("tools", "tool function names must be unique")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad("parallel_tool_calls", "'parallel_tool_calls' must be a boolean", code="invalid_type")
    template_tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                        "parameters": t.parameters}} for t in tools]
    if choice is None or choice in ("auto", "none", "required"):
        return ToolRequest(tools, choice or "auto", parallel, template_tools)
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(name, str)):
        raise bad("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or "
                  "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    if name not in names:
        raise bad("tool_choice", f"'tool_choice' names the function {name!r}, which is not in 'tools' "
                  f"({', '.join(names)})")
    return ToolRequest([tools[names.index(name)]], "function", parallel, template_tools)


def _tool(i: int, t: Any) -> Tool:
    where = f"tools[{i}]"
    if not (isinstance(t, dict) and t.get("type", "function") == "function"
            and isinstance(t.get("function"), dict)):
        raise bad(where, f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}")
    fn = t["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise bad(f"{where}.function.name",
                  f"{where}.function.name must be 1-64 letters, digits, '_' or '-', got {name!r}")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise bad(f"{where}.function.parameters", f"{where}.function.parameters must be a JSON Schema of "
                  "type 'object'")
    desc = fn.get("description") or ""
    if not isinstance(desc, str):
        raise bad(f"{where}.function.description", f"{where}.function.description must be a string")
    return Tool(name, desc, params)


@dataclass(frozen=True)
class ToolFormat:
    """Token ids of the tool-call markers in one tokenizer."""

    calls_begin: int
    call_begin: int
    sep: int
    call_end: int
    calls_end: int

    @classmethod
    def of(cls, tokenizer: Any) -> ToolFormat | None:
        """The tokenizer's tool-call tokens, or None when it lacks any of them (older tokenizers)."""
        vocab = tokenizer.get_vocab()
        names = (TOOL_CALLS_BEGIN, TOOL_CALL_BEGIN, TOOL_SEP, TOOL_CALL_END, TOOL_CALLS_END)
        if any(n not in vocab for n in names):
            return None
        return cls(*(vocab[n] for n in names))


def require_format(tokenizer: Any) -> ToolFormat:
    fmt = ToolFormat.of(tokenizer)
    if fmt is None:
        raise APIError(400, "this model's tokenizer has no tool-call tokens (<|tool_call_begin|> ...); "
                       "tokenizers from `seekforge tokenizer train` have them", param="tools",
                       code="tools_not_supported")
    return fmt


def tool_constraint(req: ToolRequest, fmt: ToolFormat) -> Constraint:
    """One or more calls (one when ``parallel_tool_calls`` is false) of the allowed functions, each with
    arguments valid under its parameter schema (an xgrammar structural tag over special tokens)."""
    def token(tid: int) -> dict[str, Any]:
        return {"type": "token", "token": tid}

    calls = [{"type": "sequence", "elements": [
        token(fmt.call_begin), {"type": "const_string", "value": t.name}, token(fmt.sep),
        {"type": "json_schema", "json_schema": t.parameters, "max_whitespace_cnt": MAX_WHITESPACE},
        token(fmt.call_end)]} for t in req.tools]
    one = calls[0] if len(calls) == 1 else {"type": "or", "elements": calls}
    many = {"type": "repeat", "min": 1, "max": -1 if req.parallel else 1, "content": one}
    return Constraint.structural_tag({"type": "structural_tag", "format": {
        "type": "sequence", "elements": [token(fmt.calls_begin), many, token(fmt.calls_end)]}})


@dataclass
class ToolCall:
    id: str
    name: str = ""
    arguments: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParsedDelta:
    """What one engine event adds to a choice: content text and tool-call deltas (streaming shape)."""

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class ToolCallParser:
    """Splits one choice's event stream into content and tool calls.

    Feed every engine event (its text, then its token ids): text goes to whatever part is open, and the
    marker tokens switch parts. A call's first delta carries its id, type and name (sent when the
    <|tool_sep|> after the name arrives); later deltas carry argument text — the shape the ``openai``
    client accumulates by ``index``.
    """

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt = fmt
        self.state = "content"  # content | calls | name | arguments | done
        self.content: list[str] = []
        self.calls: list[ToolCall] = []

    def feed(self, text: str, token_ids: list[int]) -> ParsedDelta:
        out = ParsedDelta()
        self._text(text, out)
        f = self.fmt
        for tid in token_ids:
            if tid == f.calls_begin and self.state == "content":
                self.state = "calls"
            elif tid == f.call_begin and self.state in ("calls", "content"):
                self.calls.append(ToolCall(new_id("call")))
                self.state = "name"
            elif tid == f.sep and self.state == "name":
                call = self.calls[-1]
                out.tool_calls.append({"index": len(self.calls) - 1, "id": call.id, "type": "function",
                                       "function": {"name": call.name, "arguments": ""}})
                self.state = "arguments"
            elif tid == f.call_end and self.state in ("name", "arguments"):
                self.state = "calls"
            elif tid == f.calls_end:
                self.state = "done"
        return out

    def _text(self, text: str, out: ParsedDelta) -> None:
        if not text:
            return
        if self.state == "content":
            self.content.append(text)
            out.content += text
        elif self.state == "name":
            self.calls[-1].name += text
        elif self.state == "arguments":
            self.calls[-1].arguments += text
            index = len(self.calls) - 1
            if out.tool_calls and out.tool_calls[-1]["index"] == index:
                out.tool_calls[-1]["function"]["arguments"] += text
            else:
                out.tool_calls.append({"index": index, "function": {"arguments": text}})
        # Text between calls or after <|tool_calls_end|> is not part of any field.

    def finish_reason(self, reason: str | None) -> str | None:
        """OpenAI's ``tool_calls`` when the turn ended by stop after at least one call."""
        return "tool_calls" if reason == "stop" and self.calls else reason
