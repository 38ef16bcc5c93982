"""Request limits of the server: body size (checked before parsing), JSON nesting depth, ``n`` and
``max_tokens`` against what the engine can hold.

* :class:`BodyLimit` is a plain ASGI middleware. A ``Content-Length`` over the limit is answered with
  413 before a byte of the body is read; a body without one (chunked) is counted while it streams in
  and refused as soon as it passes the limit, so a 20 MB upload costs at most ``limit`` bytes of
  memory and never reaches JSON parsing or the tokenizer.
* :func:`parse_json` turns a body into a dict; invalid UTF-8, invalid JSON and nesting deeper than
  :data:`MAX_DEPTH` are 400s. (Python's decoder recurses per level: without the depth check a
  50,000-level array raises ``RecursionError``, a 500.)
"""

from __future__ import annotations

import json
from typing import Any

from seekforge.serve.protocol import APIError

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64  # JSON Schemas in response_format/tools are the deepest legitimate values (a handful)


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body too large: the limit is {limit} bytes (--max-body-bytes).",
                         code="request_too_large")


def _error_response(err: APIError) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps(err.body()).encode()
    start = {"type": "http.response.start", "status": err.status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (413, OpenAI's error shape)."""

    def __init__(self, app: Any, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > self.max_bytes:
            start, body = _error_response(BodyTooLarge(self.max_bytes))
            await send(start)
            await send(body)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Read the body here, counting as it streams in, so an oversized one is refused after at most
        # max_bytes and the app never sees it; the app then gets the body in one message.
        parts, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            parts.append(message.get("body", b""))
            seen += len(parts[-1])
            if seen > self.max_bytes:
                start, body = _error_response(BodyTooLarge(self.max_bytes))
                await send(start)
                await send(body)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as servers do

        await self.app(scope, replay, send)


def _depth_ok(value: Any, limit: int) -> bool:
    """Iteratively check that containers nest at most ``limit`` levels."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body -> a JSON object, or a 400 naming what is wrong."""
    try:
        text = raw.decode("utf-8") if raw else "null"
    except UnicodeDecodeError as e:
        raise APIError(400, f"The request body is not valid UTF-8 (byte {e.start}).",
                       code="invalid_json") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"Invalid JSON body: {e}", code="invalid_json") from None
    except RecursionError:
        body = None
        depth_error = True
    else:
        depth_error = not _depth_ok(body, MAX_DEPTH)
    if depth_error:
        raise APIError(400, f"The JSON body nests deeper than {MAX_DEPTH} levels.", code="invalid_json")
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def check_n(n: int, max_batch: int, param: str = "n") -> None:
    """``n`` choices decode together; more than the engine's cache slots could never run at once."""
    if n > max_batch:
        raise APIError(400, f"'{param}' is {n} but this server decodes at most {max_batch} sequences at once "
                       f"(--max-batch); ask for n <= {max_batch}.", param=param, code="invalid_value")


def check_max_tokens(max_tokens: int | None, max_len: int) -> None:
    """A ``max_tokens`` larger than the whole context can never be honoured: 400. One that only
    exceeds the room left after the prompt is clamped by the engine (the answer then ends with
    ``finish_reason: "length"``)."""
    if max_tokens is not None and max_tokens > max_len:
        raise APIError(400, f"'max_tokens' is {max_tokens} but the model's context is {max_len} tokens "
                       "(prompt included).", param="max_tokens", code="invalid_value")
