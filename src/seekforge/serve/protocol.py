"""OpenAI request parsing and response shapes for the server (no HTTP here, just dicts).

Parsing is strict on purpose: a wrong type or range answers 400 naming the field (OpenAI's
``{"error": {"message", "type", "param", "code"}}``) instead of being silently ignored — a typo'd
``max_token`` that does nothing is the kind of bug users spend a day on. Unknown fields are
ignored, as OpenAI and vLLM do, because clients send many optional fields we need not act on.
"""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from seekforge.infer import Completion, SamplingParams, TokenLogprob
from seekforge.infer.detok import token_pieces
from seekforge.infer.sampling import InvalidParam


class APIError(Exception):
    """An error answered in OpenAI's shape with HTTP ``status``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


_MISSING = object()


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None,
          lo: float | None = None, hi: float | None = None) -> Any:
    """``body[name]`` checked against ``kind`` and the range [lo, hi]; ``default`` when absent/null."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise bad(name, f"'{name}' must be {names}, got {type(value).__name__}", code="invalid_type")
    if lo is not None and value < lo or hi is not None and value > hi:
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise bad(name, f"'{name}' must be {rng}, got {value}")
    return value


def _stop_list(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise bad("stop", "'stop' must be a string or a list of strings", code="invalid_type")


def _int_list(body: dict[str, Any], name: str) -> list[int]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise bad(name, f"'{name}' must be a list of integers", code="invalid_type")
    return value


def _logit_bias(body: dict[str, Any], vocab_size: int) -> dict[int, float]:
    """OpenAI's ``logit_bias``: a JSON object of token id (as a decimal string) -> bias in [-100, 100]."""
    raw = body.get("logit_bias")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad("logit_bias", "'logit_bias' must be an object mapping token ids to biases",
                  code="invalid_type")
    out: dict[int, float] = {}
    for key, value in raw.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise bad("logit_bias", f"'logit_bias' keys must be token ids (integers >= 0), got {key!r}")
        tid = int(key)
        if tid >= vocab_size:
            raise bad("logit_bias", f"'logit_bias' token id {tid} is not in the vocabulary [0, {vocab_size})",
                      code="invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise bad("logit_bias", f"'logit_bias' values must be numbers between -100 and 100, got "
                      f"{value!r} for token {key}")
        out[tid] = float(value)
    return out


def sampling_params(body: dict[str, Any], *, chat: bool, vocab_size: int) -> SamplingParams:
    """The SamplingParams of a chat or completions request (OpenAI fields + vLLM extras)."""
    if chat:
        max_tokens = field(body, "max_completion_tokens", int, None, lo=1)
        max_tokens = field(body, "max_tokens", int, max_tokens, lo=1)
        if field(body, "logprobs", bool, False):
            logprobs = field(body, "top_logprobs", int, 0, lo=0, hi=20)
        else:
            if body.get("top_logprobs"):
                raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
            logprobs = None
    else:
        max_tokens = field(body, "max_tokens", int, 16, lo=0)
        logprobs = field(body, "logprobs", int, None, lo=0, hi=20)
    stop_ids = _int_list(body, "stop_token_ids")
    if any(not 0 <= t < vocab_size for t in stop_ids):
        raise bad("stop_token_ids", f"'stop_token_ids' must be in [0, {vocab_size})")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=field(body, "temperature", float, 1.0, lo=0.0, hi=2.0),
        top_p=field(body, "top_p", float, 1.0, lo=0.0, hi=1.0),
        top_k=field(body, "top_k", int, 0, lo=-1),
        min_p=field(body, "min_p", float, 0.0, lo=0.0, hi=1.0),
        repetition_penalty=field(body, "repetition_penalty", float, 1.0, lo=0.0, hi=10.0),
        presence_penalty=field(body, "presence_penalty", float, 0.0, lo=-2.0, hi=2.0),
        frequency_penalty=field(body, "frequency_penalty", float, 0.0, lo=-2.0, hi=2.0),
        stop=_stop_list(body),
        stop_token_ids=stop_ids,
        ignore_eos=field(body, "ignore_eos", bool, False),
        seed=field(body, "seed", int, None),
        logprobs=logprobs,
        logit_bias=_logit_bias(body, vocab_size),
    )
    if params.top_p == 0.0:
        raise bad("top_p", "'top_p' must be > 0")
    try:
        params.validate()
    except InvalidParam as e:
        raise bad(e.param, str(e)) from None
    return params


ROLES = ("system", "developer", "user", "assistant", "tool")


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' must be a non-empty list", code="invalid_type")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(f"messages[{i}].role",
                      f"messages[{i}]: role must be system, developer, user, assistant or tool")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise bad(f"messages[{i}].content", "only text content parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", "content must be a string or a list of text parts")
        role = "system" if m["role"] == "developer" else m["role"]
        message: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = _tool_calls(i, m["tool_calls"])
        if role == "tool" and m.get("tool_call_id") is not None:
            if not isinstance(m["tool_call_id"], str):
                raise bad(f"messages[{i}].tool_call_id", "tool_call_id must be a string")
            message["tool_call_id"] = m["tool_call_id"]
        out.append(message)
    return out


def _tool_calls(i: int, calls: Any) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` (from a previous response), checked for the template."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise bad(where, f"{where} must be a list", code="invalid_type")
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)
                and isinstance(fn.get("arguments", ""), str)):
            raise bad(f"{where}[{j}]", f"{where}[{j}] must be {{\"type\": \"function\", \"function\": "
                      "{\"name\": str, \"arguments\": str}}")
        out.append({"id": c.get("id"), "type": "function",
                    "function": {"name": fn["name"], "arguments": fn.get("arguments", "")}})
    return out


def completion_prompts(body: dict[str, Any]) -> list[str | list[int]]:
    """``prompt``: str | list[str] | list[int] | list[list[int]] -> a list of prompts."""
    prompt = body.get("prompt")
    is_ids = lambda x: isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool)  # noqa: E731
                                                          for t in x)
    if isinstance(prompt, str):
        return [prompt]
    if is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        return list(prompt)
    raise bad("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of "
              "token-id lists (non-empty)", code="invalid_type")


# --- responses ------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet (printable unicode stand-ins for the 256 bytes)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


@dataclass
class TokenText:
    """Per-server cache of token id -> (text, bytes) for logprob responses."""

    tokenizer: Any

    def __post_init__(self) -> None:
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            table = _byte_decoder()
            if isinstance(piece, str) and piece and all(c in table for c in piece):
                raw = [table[c] for c in piece]  # byte-level BPE: the token's exact bytes
            else:
                raw = list(text.encode("utf-8"))
            hit = self._cache[token_id] = (text, raw)
        return hit


def chat_logprobs(lps: list[TokenLogprob | None], tt: TokenText) -> dict[str, Any]:
    content = []
    for lp in lps:
        if lp is None:
            continue
        text, raw = tt(lp.token_id)
        top = [{"token": tt(i)[0], "logprob": v, "bytes": tt(i)[1]} for i, v in lp.top]
        content.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(lps: list[TokenLogprob | None], ids: list[int], pieces: list[str], tt: TokenText,
                        offset: int = 0) -> dict[str, list]:
    """The legacy completions shape: parallel lists; the first prompt token has logprob None."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for tid, lp, piece in zip(ids, lps, pieces):
        out["tokens"].append(tt(tid)[0])
        out["token_logprobs"].append(None if lp is None else lp.logprob)
        out["top_logprobs"].append(None if lp is None else {tt(i)[0]: v for i, v in lp.top} or None)
        out["text_offset"].append(offset)
        offset += len(piece)
    return out


def echo_logprobs(c: Completion, tokenizer: Any, tt: TokenText,
                  generated_pieces: list[str]) -> dict[str, list]:
    prompt_pieces = token_pieces(tokenizer, c.prompt_ids)
    lps = c.prompt_logprobs or [None] * len(c.prompt_ids)
    head = completion_logprobs(lps, c.prompt_ids, prompt_pieces, tt)
    start = len("".join(prompt_pieces))
    tail = completion_logprobs(c.logprobs, c.token_ids, generated_pieces, tt, offset=start)
    return {k: head[k] + tail[k] for k in head}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
