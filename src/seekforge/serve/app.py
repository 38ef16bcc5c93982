"""The OpenAI-compatible HTTP server: FastAPI routes over :class:`seekforge.infer.Engine` instances.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (with ``echo`` + ``logprobs``
for log-likelihood eval harnesses), ``GET /v1/models``, ``GET /health``, ``GET /metrics``
(Prometheus), ``POST /tokenize``, ``POST /detokenize``, ``POST /v1/moderations`` (with a
``--safety`` policy, see ``safety.py``) and the web chat page at ``/``; with :mod:`seekforge.serve.ops`
also ``GET /ready``, ``POST /v1/feedback`` and the ``/admin/`` API. Bodies pass the size limit of
``limits.py`` before any route reads them; ``schemas.py`` describes them in ``/openapi.json``.

Request handlers never touch torch: they submit to the engine (thread-safe) and await its event
stream, so one slow generation never blocks the event loop. A client that disconnects mid-stream
ends the response generator, whose ``finally`` cancels the request and frees its cache slot.

Layout: the routes are module-level functions on ``router``; everything they need lives in one
:class:`ServerState` on ``app.state.server`` (a registry of model id -> :class:`ServedModel`, the
options, the rate-limit buckets, the HTTP counters). :func:`create_app` only builds that state and
wires the router, error handlers and middleware to it. The registry holds one or more model
versions; routing between them, the admin API and the request log live in :mod:`seekforge.serve.ops`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from seekforge.infer import (
    Completion,
    Engine,
    EngineClosed,
    InvalidParam,
    QueueFull,
    RequestHandle,
    SamplingParams,
    StreamEvent,
)
from seekforge.serve import limits as L
from seekforge.serve import protocol as P
from seekforge.serve import safety as S
from seekforge.serve import schemas
from seekforge.serve import tools as T
from seekforge.serve.metrics import HttpStats, render_metrics
from seekforge.serve.ops import OpsOptions, ServeOps, record_blocked, track_handles
from seekforge.serve.ops import install as install_ops

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerOptions:
    api_keys: list[str] = field(default_factory=list)  # empty = no authentication
    rate_limit: float = 0.0  # requests per minute per API key (or client address); 0 = off
    rate_burst: int = 10
    ping_seconds: float = 10.0  # SSE comment while a request waits (keeps proxies from timing out)
    max_n: int = 8
    ops: OpsOptions = field(default_factory=OpsOptions)  # versions, routes, canaries, admin, logs
    safety: S.SafetyPolicy | None = None  # --safety FILE: input/output moderation
    max_body_bytes: int = L.DEFAULT_MAX_BODY_BYTES  # larger bodies get 413 before they are read


class TokenBucket:
    """Per-key token buckets: ``burst`` requests at once, refilled at ``per_minute / 60`` per second."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate, self.burst = per_minute / 60.0, max(1, burst)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds until a request would be allowed."""
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self.buckets[key] = (tokens - 1.0, now)
                return 0.0
            self.buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def _sse(obj: Any) -> str:
    # ensure_ascii=False: Chinese travels as UTF-8, not \\u escapes; each event is one whole string,
    # so a multi-byte character is never split across network writes.
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


@dataclass
class _Choice:
    """Everything streamed for one choice, gathered for a non-streaming response."""

    text: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    lps: list = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # text per generated token (for text_offset)
    finish: str | None = None
    tool_parser: T.ToolCallParser | None = None  # set when the request has tools

    def add(self, ev) -> None:
        if self.tool_parser is not None:
            self.tool_parser.feed(ev.text, ev.token_ids)
        self.text.append(ev.text)
        if ev.token_ids:
            self.pieces += [ev.text] + [""] * (len(ev.token_ids) - 1)
        elif self.pieces:
            self.pieces[-1] += ev.text
        self.ids += ev.token_ids
        self.lps += ev.logprobs
        if ev.finish_reason is not None:
            self.finish = ev.finish_reason


async def _merged(handles: list[RequestHandle], ping: float) -> AsyncIterator[tuple[int, Any]]:
    """Events of several requests as ``(choice index, event)``; ``(-1, None)`` as an idle ping."""
    if len(handles) == 1:
        async for ev in handles[0].stream(ping):
            yield (0, ev) if ev is not None else (-1, None)
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, h: RequestHandle) -> None:
        async for ev in h.stream():
            await queue.put((i, ev))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    left = len(handles)
    try:
        while left:
            try:
                i, ev = await asyncio.wait_for(queue.get(), ping)
            except asyncio.TimeoutError:
                yield -1, None
                continue
            if ev.finish_reason is not None:
                left -= 1
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()


# --- the state the routes read -----------------------------------------------------------------------
@dataclass
class ServedModel:
    """One model the server answers for: its engine and the per-tokenizer logprob text cache."""

    engine: Engine
    token_text: P.TokenText
    inflight: int = 0  # HTTP requests being answered (a hot swap drains this to 0 before freeing the engine)
    spec: Any = None  # the VersionSpec it was loaded from, when known

    @classmethod
    def of(cls, engine: Engine) -> ServedModel:
        return cls(engine, P.TokenText(engine.tokenizer))

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer


@dataclass
class ServerState:
    """Everything the routes read, kept on ``app.state.server``.

    ``models`` maps each version's id to what serves it; ``ops`` holds the routes over them and picks
    the version of a request (:meth:`ServeOps.resolve`). ``default`` is the version or route used
    when a request names none (its version is the one ``/health``, ``/tokenize`` and ``/detokenize``
    describe).
    """

    models: dict[str, ServedModel]
    default: str
    options: ServerOptions
    http_stats: HttpStats = field(default_factory=HttpStats)
    bucket: TokenBucket | None = None
    started: int = field(default_factory=P.now)
    ops: ServeOps | None = None  # routes, canaries, request log, per-version metrics (seekforge.serve.ops)

    @property
    def default_model(self) -> ServedModel:
        """The version a request without ``"model"`` gets (a default route: its stable version)."""
        route = self.ops.routes.get(self.default) if self.ops is not None else None
        return self.models[route.stable if route is not None else self.default]


def server_state(request: Request) -> ServerState:
    return request.app.state.server


# --- errors, auth, rate limit, body -------------------------------------------------------------------
async def _api_error(_: Request, e: P.APIError) -> JSONResponse:
    retry = str(int(getattr(e, "retry_after", 1)) + 1)
    headers = {"Retry-After": retry} if e.status in (429, 503) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return JSONResponse(P.APIError(e.status_code, str(e.detail), kind).body(), status_code=e.status_code)


async def _count_requests(request: Request, call_next: Callable) -> Response:
    response = await call_next(request)
    server_state(request).http_stats.add(request.url.path, response.status_code)
    return response


def check_auth(request: Request) -> str:
    """Return the rate-limit key; raise 401 for a missing/wrong key when keys are configured."""
    api_keys = server_state(request).options.api_keys
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if api_keys:
        if not key:
            raise P.APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                             code="invalid_api_key")
        if not any(secrets.compare_digest(key, k) for k in api_keys):
            raise P.APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return key or (request.client.host if request.client else "anonymous")


def check_rate(state: ServerState, key: str) -> None:
    if state.bucket is None:
        return
    wait = state.bucket.take(key)
    if wait > 0:
        err = P.APIError(429, f"Rate limit exceeded ({state.options.rate_limit:g} requests/min); retry in "
                         f"{wait:.1f} s.", type="rate_limit_error", code="rate_limit_exceeded")
        err.retry_after = wait
        raise err


async def read_json(request: Request) -> dict[str, Any]:
    return L.parse_json(await request.body())


async def _internal_error(_: Request, e: Exception) -> JSONResponse:
    # A bug, not the client's fault, but still answered in OpenAI's shape (clients parse it).
    return JSONResponse(P.APIError(500, f"internal error: {type(e).__name__}", "server_error").body(),
                        status_code=500)


async def generation_request(request: Request) -> tuple[ServerState, ServedModel, dict[str, Any]]:
    """The prologue of the generating endpoints: authenticate, rate-limit, parse the body, pick the model."""
    state = server_state(request)
    key = check_auth(request)
    check_rate(state, key)
    body = await read_json(request)
    return state, state.ops.resolve(body, key), body


async def constrained(engine: Engine, params: SamplingParams, constraint: Any, param: str) -> SamplingParams:
    """``params`` with ``constraint``, compiled now (off the event loop) so a bad schema, regex or tool
    schema is a 400 naming ``param``; the engine's compile cache makes the submit's compile a hit."""
    if constraint is None:
        return params
    try:
        await asyncio.to_thread(engine.constraints.compile, constraint)
    except InvalidParam as e:
        raise P.bad(param, f"'{param}': {e}") from None
    return params.replace(constraint=constraint)


def chat_tools(body: dict[str, Any], model: ServedModel) -> tuple[T.ToolRequest | None, T.ToolFormat | None]:
    """The request's tools and, when calls are possible (choice not "none"), the tokenizer's format."""
    req = T.parse_tools(body)
    if req is None or req.choice == "none":
        return req, None
    return req, T.require_format(model.tokenizer)


def submit_all(engine: Engine, prompts: list[Any], params: SamplingParams, n: int) -> list[RequestHandle]:
    """Submit ``n`` choices per prompt; engine refusals become 400/503 (nothing stays queued)."""
    handles: list[RequestHandle] = []
    try:
        for prompt in prompts:
            for i in range(n):
                # n > 1 with a seed: distinct but reproducible choices.
                p = params if n == 1 or params.seed is None else params.replace(seed=params.seed + i)
                handles.append(engine.submit(prompt, p))
    except InvalidParam as e:
        for h in handles:
            h.cancel()
        code = "context_length_exceeded" if "context" in str(e) else "invalid_value"
        raise P.APIError(400, str(e), param=e.param, code=code) from None
    except QueueFull as e:
        for h in handles:
            h.cancel()
        raise P.APIError(503, f"Server overloaded: {e}. Retry later.", type="server_error",
                         code="queue_full") from None
    except EngineClosed as e:
        raise P.APIError(503, str(e), type="server_error", code="shutting_down") from None
    track_handles(handles)
    return handles


# --- routes ------------------------------------------------------------------------------------------
router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    engine = server_state(request).default_model.engine
    return {"status": "ok", "model": engine.name, "running": engine.num_running(),
            "waiting": engine.num_waiting()}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    check_auth(request)
    state = server_state(request)
    versions = [{"id": name, "object": "model", "created": state.started, "owned_by": "seekforge",
                 "root": name, "parent": None, "max_model_len": m.engine.max_len, "permission": []}
                for name, m in list(state.models.items())]
    routes = [{"id": name, "object": "model", "created": state.started, "owned_by": "seekforge",
               "root": name, "parent": None, "permission": [], "route": r.to_dict(),
               "max_model_len": min(state.models[v].engine.max_len for v in r.weights if v in state.models)}
              for name, r in list(state.ops.routes.items())]
    # The default first: clients that take data[0] (the chat page) then use what a bare request gets.
    data = sorted(versions + routes, key=lambda m: m["id"] != state.default)
    return {"object": "list", "data": data}


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    state = server_state(request)
    text = render_metrics(state.default_model.engine, state.http_stats) + state.ops.metrics.render()
    return PlainTextResponse(text,
                             media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    check_auth(request)
    engine = server_state(request).default_model.engine
    body = await read_json(request)
    if "messages" in body:
        ids = engine.chat_prompt(P.chat_messages(body),
                                 add_generation_prompt=P.field(body, "add_generation_prompt", bool, True))
    elif isinstance(body.get("prompt"), str):
        special = P.field(body, "add_special_tokens", bool, True)
        ids = engine.encode(body["prompt"], add_special_tokens=special)
    else:
        raise P.APIError(400, "send 'prompt' (a string) or 'messages'", param="prompt")
    return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_len}


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    check_auth(request)
    engine = server_state(request).default_model.engine
    body = await read_json(request)
    ids = P._int_list(body, "tokens")
    if any(not 0 <= t < engine.vocab_size for t in ids):
        raise P.APIError(400, f"token ids must be in [0, {engine.vocab_size})", param="tokens")
    return {"prompt": engine.tokenizer.decode(ids, skip_special_tokens=False)}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state, model, body = await generation_request(request)
    engine = model.engine
    messages = P.chat_messages(body)
    params = P.sampling_params(body, chat=True, vocab_size=engine.vocab_size)
    n = P.field(body, "n", int, 1, lo=1, hi=state.options.max_n)
    L.check_n(n, engine.config.max_batch)
    L.check_max_tokens(params.max_tokens, engine.max_len)
    tool_req, tool_fmt = chat_tools(body, model)
    constraint, param = T.request_constraint(body)
    if tool_req is not None and tool_fmt is not None and tool_req.constrained:
        constraint, param = T.tool_constraint(tool_req, tool_fmt), "tools"
    params = await constrained(engine, params, constraint, param)
    # "none" still shows the tools when the template can render them (the model knows, but may not call).
    show_tools = tool_req is not None and T.ToolFormat.of(model.tokenizer) is not None
    try:
        prompt = engine.chat_prompt(messages, tools=tool_req.template_tools if show_tools else None)
    except Exception as e:  # template errors (e.g. a role the template rejects) are the client's
        raise P.APIError(400, f"could not apply the chat template: {e}", param="messages") from None
    stream = P.field(body, "stream", bool, False)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
    safety = state.options.safety
    await S.check_input(safety, [m["content"] for m in messages], "messages")
    try:
        handles = submit_all(engine, [prompt], params, n)
    except P.APIError as e:
        if e.param == "prompt":
            e.param = "messages"
        raise
    rid, created = P.new_id("chatcmpl"), P.now()
    ping = state.options.ping_seconds
    if stream:
        return _stream_chat(model, handles, rid, created, params, include_usage, len(prompt), ping, tool_fmt,
                            safety)
    choices = [_Choice(tool_parser=T.ToolCallParser(tool_fmt) if tool_fmt else None) for _ in handles]
    await _collect(handles, choices, ping, safety)
    out = []
    for i, c in enumerate(choices):
        lp = P.chat_logprobs(c.lps, model.token_text) if params.logprobs is not None else None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(c.text)}
        finish = c.finish
        if c.tool_parser is not None:
            message["content"] = "".join(c.tool_parser.content) or None
            if c.tool_parser.calls:
                message["tool_calls"] = [call.to_dict() for call in c.tool_parser.calls]
            finish = c.tool_parser.finish_reason(finish)
        out.append({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model.name,
                         "choices": out, "system_fingerprint": None,
                         "usage": P.usage(len(prompt), sum(len(c.ids) for c in choices))})


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state, model, body = await generation_request(request)
    engine, tok = model.engine, model.tokenizer
    prompts = P.completion_prompts(body)
    params = P.sampling_params(body, chat=False, vocab_size=engine.vocab_size)
    params = await constrained(engine, params, *T.request_constraint(body))
    echo = P.field(body, "echo", bool, False)
    if echo and params.logprobs is not None:
        params = params.replace(prompt_logprobs=params.logprobs)
    if params.max_tokens == 0 and not echo:
        raise P.bad("max_tokens", "'max_tokens' must be >= 1 unless 'echo' is true")
    n = P.field(body, "n", int, 1, lo=1, hi=state.options.max_n)
    L.check_n(n, engine.config.max_batch)
    L.check_max_tokens(params.max_tokens, engine.max_len)
    stream = P.field(body, "stream", bool, False)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
    safety = state.options.safety
    # Token-id prompts are checked as text; out-of-vocabulary ids are left for submit's 400.
    texts = [p if isinstance(p, str) else tok.decode(p) if all(0 <= t < engine.vocab_size for t in p) else ""
             for p in prompts]
    await S.check_input(safety, texts, "prompt")
    handles = submit_all(engine, prompts, params, n)
    rid, created = P.new_id("cmpl"), P.now()
    ping = state.options.ping_seconds
    if stream:
        return _stream_completion(model, handles, rid, created, params, include_usage, echo, ping, safety)
    choices = [_Choice() for _ in handles]
    await _collect(handles, choices, ping, safety)
    out = []
    for i, (h, c) in enumerate(zip(handles, choices)):
        text = "".join(c.text)
        prompt_text = tok.decode(h.prompt_ids, skip_special_tokens=False) if echo else ""
        lp = None
        if params.logprobs is not None:
            if echo:
                comp = Completion(h.id, h.prompt_ids, text, c.ids, c.finish or "stop", c.lps,
                                  h.prompt_logprobs, None, 0.0)
                lp = P.echo_logprobs(comp, tok, model.token_text, c.pieces)
            else:
                lp = P.completion_logprobs(c.lps, c.ids, c.pieces, model.token_text)
        out.append({"index": i, "text": prompt_text + text, "logprobs": lp, "finish_reason": c.finish})
    n_prompt = sum(len(h.prompt_ids) for h in handles[::n])
    return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model.name,
                         "choices": out, "system_fingerprint": None,
                         "usage": P.usage(n_prompt, sum(len(c.ids) for c in choices))})


@router.post("/v1/moderations")
async def moderations(request: Request) -> dict[str, Any]:
    """OpenAI's moderation endpoint over the ``--safety`` policy (404 when the server has none)."""
    state = server_state(request)
    check_rate(state, check_auth(request))
    if state.options.safety is None:
        raise P.APIError(404, "This server has no content-safety policy (start it with --safety FILE).",
                         "not_found_error", code="not_found")
    return await S.moderation_response(state.options.safety, await read_json(request))


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The web chat page."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


# --- gathering and streaming engine events ----------------------------------------------------------------
async def _collect(handles: list[RequestHandle], choices: list[_Choice], ping: float,
                   safety: S.SafetyPolicy | None = None) -> None:
    try:
        async for i, ev in S.moderated(safety, handles, _merged(handles, ping), stream=False):
            if ev is None:
                continue
            if ev.error:
                raise P.APIError(500, f"generation failed: {ev.error}", type="server_error")
            choices[i].add(ev)
    finally:  # the client went away (or an error): stop whatever still runs
        for h in handles:
            h.cancel()


def _stream(model_name: str, handles: list[RequestHandle], rid: str, created: int, object_: str,
            opening: list[dict[str, Any]], choice: Callable[[int, StreamEvent], dict[str, Any] | None],
            include_usage: bool, n_prompt: int, ping: float,
            safety: S.SafetyPolicy | None = None) -> StreamingResponse:
    """The SSE loop of both endpoints; they differ only in what goes into a chunk.

    ``opening``: choices sent before any token (chat: the assistant role; completions: the echoed
    prompt). ``choice(i, event)``: the chunk's choice for an engine event, or None for nothing
    worth a chunk. Then the usage chunk (``stream_options.include_usage``) and ``[DONE]``.
    """
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return _sse({"id": rid, "object": object_, "created": created, "model": model_name,
                     "system_fingerprint": None, "choices": choices, **extra})

    async def gen() -> AsyncIterator[str]:
        n_out = 0
        try:
            for c in opening:
                yield chunk([c])
            async for i, ev in S.moderated(safety, handles, _merged(handles, ping)):
                if ev is None:
                    yield ": ping\n\n"
                    continue
                if ev.error:
                    yield _sse(P.APIError(500, f"generation failed: {ev.error}", "server_error").body())
                    break
                n_out += len(ev.token_ids)
                c = choice(i, ev)
                if c is not None:
                    yield chunk([c])
            if include_usage:
                yield chunk([], usage=P.usage(n_prompt, n_out))
            yield "data: [DONE]\n\n"
        finally:
            for h in handles:
                h.cancel()

    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _stream_chat(model: ServedModel, handles: list[RequestHandle], rid: str, created: int,
                 params: SamplingParams, include_usage: bool, n_prompt: int,
                 ping: float, tool_fmt: T.ToolFormat | None = None,
                 safety: S.SafetyPolicy | None = None) -> StreamingResponse:
    parsers = [T.ToolCallParser(tool_fmt) for _ in handles] if tool_fmt is not None else None

    def choice(i: int, ev: StreamEvent) -> dict[str, Any] | None:
        lp = P.chat_logprobs(ev.logprobs, model.token_text) if params.logprobs is not None else None
        delta: dict[str, Any] = {"content": ev.text} if ev.text else {}
        finish = ev.finish_reason
        if parsers is not None:  # tool-call markers route the text into content or call deltas
            parsed = parsers[i].feed(ev.text, ev.token_ids)
            delta = {"content": parsed.content} if parsed.content else {}
            if parsed.tool_calls:
                delta["tool_calls"] = parsed.tool_calls
            finish = parsers[i].finish_reason(finish)
        if not (delta or (lp and lp["content"]) or finish):
            return None
        return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}

    opening = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None} for i in range(len(handles))]
    return _stream(model.name, handles, rid, created, "chat.completion.chunk", opening, choice, include_usage,
                   n_prompt * len(handles), ping, safety)


def _stream_completion(model: ServedModel, handles: list[RequestHandle], rid: str, created: int,
                       params: SamplingParams, include_usage: bool, echo: bool,
                       ping: float, safety: S.SafetyPolicy | None = None) -> StreamingResponse:
    def choice(i: int, ev: StreamEvent) -> dict[str, Any] | None:
        lp = None
        if params.logprobs is not None and ev.token_ids:
            pieces = [ev.text] + [""] * (len(ev.token_ids) - 1)
            lp = P.completion_logprobs(ev.logprobs, ev.token_ids, pieces, model.token_text)
        if not (ev.text or lp or ev.finish_reason):
            return None
        return {"index": i, "text": ev.text, "logprobs": lp, "finish_reason": ev.finish_reason}

    tok = model.tokenizer
    opening = [{"index": i, "text": tok.decode(h.prompt_ids, skip_special_tokens=False), "logprobs": None,
                "finish_reason": None} for i, h in enumerate(handles)] if echo else []
    return _stream(model.name, handles, rid, created, "text_completion", opening, choice, include_usage,
                   sum(len(h.prompt_ids) for h in handles), ping, safety)


# --- the app -------------------------------------------------------------------------------------------
def create_app(engine: Engine | dict[str, Engine], options: ServerOptions | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (model id ``engine.name``) or several versions ``{id: engine}``
    with the routes, canaries and admin API of ``options.ops`` (see :mod:`seekforge.serve.ops`)."""
    opts = options or ServerOptions()
    engines = engine if isinstance(engine, dict) else {engine.name: engine}
    if not engines:
        raise ValueError("create_app: no model to serve")
    for name, e in engines.items():
        e.name = name  # responses name the version ("model" field, x-seekforge-model header)
    app = FastAPI(title="seekforge", docs_url="/docs", redoc_url=None)
    default = opts.ops.default_model or next(iter(opts.ops.routes), None) or next(iter(engines))
    app.state.server = ServerState(
        models={name: ServedModel.of(e) for name, e in engines.items()}, default=default, options=opts,
        bucket=TokenBucket(opts.rate_limit, opts.rate_burst) if opts.rate_limit > 0 else None)
    app.state.server.ops = ServeOps(app.state.server, opts.ops)
    if default not in engines and default not in app.state.server.ops.routes:
        raise ValueError(f"--default-model {default}: not a version or route")
    install_ops(app)
    if opts.safety is not None:  # blocked requests count in the per-version metrics and request log
        state = app.state.server
        opts.safety.on_block(lambda where, _categories: record_blocked(state, where))
        state.ops.metrics.watch_classifier(opts.safety.classifier)
    app.add_exception_handler(P.APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.middleware("http")(_count_requests)
    app.add_middleware(L.BodyLimit, max_bytes=opts.max_body_bytes)
    app.include_router(router)
    schemas.document(app)  # request bodies and error shapes in /openapi.json
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
