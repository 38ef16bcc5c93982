"""Running several model versions behind one server: routing, shadow traffic, canaries, request logs.

:class:`ServeOps` lives next to the routes' :class:`~seekforge.serve.app.ServerState` (``state.ops``)
and owns everything about *which* version answers and *how it went*:

- ``resolve``: the ``"model"`` of a request names a version or a route; a route picks its version
  from the request's ``user`` field, else the API key (sticky, see :mod:`seekforge.serve.routing`).
  The version's in-flight count goes up until the response's last byte, so a hot swap can drain it.
- ``ops_middleware``: wraps the two generating endpoints. It sets the ``x-seekforge-model`` header,
  follows the response body to its end (streams included) and then records one line in the request
  log (version, route, status, latency, TTFT, tokens), the Prometheus metrics and the canary window.
- Shadow traffic: a sampled request of a route with ``--shadow`` is replayed on the shadow version in
  a background task started after the live request was queued; the live response never waits for
  it. When both are done, the pair goes to the shadow log.
- ``swap_version``: load the new checkpoint, switch the registry to it (new requests go there), wait
  until the old engine has no request in flight, then close it.
- ``unload_version``: refuse a version that something still sends traffic to (:meth:`ServeOps.holders`)
  or the last one; else take it out of the registry and drain and close it as a swap does.

Log files are JSON lines, one object per request / event, appended and flushed line by line (an
append-only log cannot be written atomically as a whole; a crash loses at most the line being written).
The request log can rotate by size (:class:`JsonlLog`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from seekforge.serve import protocol as P
from seekforge.serve.canary import Breach, CanaryMonitor, CanaryPolicy, run_probe
from seekforge.serve.opsmetrics import OpsMetrics
from seekforge.serve.routing import Route, Shadow, VersionSpec

log = logging.getLogger("seekforge.serve")

GENERATING_PATHS = ("/v1/chat/completions", "/v1/completions")
MODEL_HEADER = "x-seekforge-model"


@dataclass
class OpsOptions:
    """The multi-version settings of a server (all optional; one model needs none of them)."""

    routes: dict[str, dict[str, float]] = field(default_factory=dict)  # route -> {version: weight}
    shadows: dict[str, Shadow] = field(default_factory=dict)  # route -> shadow version
    canaries: list[CanaryPolicy] = field(default_factory=list)
    default_model: str | None = None  # answers requests without "model" (default: first route, else version)
    admin_key: str | None = None  # None: the /admin/ API answers 403
    request_log: str | None = None  # jsonl, one line per generation request (+ feedback, probes, events)
    request_log_max_bytes: int | None = None  # rotate the request log at this size (None: never)
    request_log_keep: int = 5  # rotated request logs kept (requests.jsonl.1 ... .K)
    shadow_log: str | None = None  # jsonl, one line per shadowed request with both answers
    loader: Callable[[VersionSpec], Any] | None = None  # VersionSpec -> Engine (admin load / swap)
    drain_timeout_s: float = 600.0  # a swapped-out engine is closed after this even if still busy


class JsonlLog:
    """Append-only JSON-lines file, one ``write`` = one flushed line (thread-safe).

    With ``max_bytes``, a line that would take the file past that size first rotates it:
    ``FILE.{K-1}`` -> ``FILE.K`` ... ``FILE`` -> ``FILE.1`` (each an atomic ``os.replace``; the oldest
    beyond ``keep`` backups is overwritten), then a new ``FILE``. Rotation happens under the same lock
    as the writes and only between whole lines, so no line is torn, interleaved or lost, and every
    file holds at most ``max_bytes`` (a single longer line gets a file of its own). This is the
    scheme of Python's ``logging.handlers.RotatingFileHandler`` and logrotate's numbered backups.
    """

    def __init__(self, path: str | Path, max_bytes: int | None = None, keep: int = 5) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"{path}: the rotation size must be > 0 bytes, got {max_bytes}")
        if keep < 1:
            raise ValueError(f"{path}: keep at least 1 rotated file, got {keep}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.keep = max_bytes, keep
        # Binary: the size counted is the size on disk (UTF-8 bytes), with no newline translation.
        self.file = open(self.path, "ab")  # noqa: SIM115 (held for the server's life)
        self.size = self.file.tell()
        self.lock = threading.Lock()

    def backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            if self.file.closed:
                return
            if self.max_bytes is not None and self.size > 0 and self.size + len(line) > self.max_bytes:
                self._rotate()
            self.file.write(line)
            self.file.flush()
            self.size += len(line)

    def _rotate(self) -> None:
        """Shift the backups up by one and start a new file (called with the lock held)."""
        self.file.close()
        for i in range(self.keep - 1, 0, -1):
            if self.backup(i).exists():
                os.replace(self.backup(i), self.backup(i + 1))
        os.replace(self.path, self.backup(1))
        self.file = open(self.path, "ab")  # noqa: SIM115
        self.size = 0

    def files(self) -> list[Path]:
        """The backups, oldest first, then the current file (the order the lines were written in)."""
        backups = [self.backup(i) for i in range(self.keep, 0, -1) if self.backup(i).exists()]
        return backups + [self.path]

    def close(self) -> None:
        with self.lock:
            self.file.close()


@dataclass
class RequestRecord:
    """What the middleware learns about one generating request while it is answered."""

    path: str
    started: float = field(default_factory=time.perf_counter)
    served: Any = None  # the ServedModel that answers (None: refused before a version was picked)
    version: str | None = None
    route: str | None = None
    stream: bool = False
    handles: list[Any] = field(default_factory=list)
    shadow: tuple[Any, dict[str, Any]] | None = None  # (ServedModel, request body)
    live_text: list[str] = field(default_factory=list)
    response_id: str | None = None
    error: str | None = None
    blocked: str | None = None  # "input" / "output" when content moderation stopped the request


CURRENT: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("seekforge_request",
                                                                               default=None)
_ID = re.compile(rb'"id": ?"((?:chatcmpl|cmpl)-[^"]+)"')


def record_blocked(state: Any, stage: str) -> None:
    """The hook for content moderation: count the current request as blocked at ``stage``
    ("input" or "output") in ``seekforge_blocked_requests_total`` and in its request-log line."""
    rec = CURRENT.get()
    if rec is None or rec.version is None:
        state.ops.metrics.blocked(state.default, "", stage)
        return
    rec.blocked = stage
    state.ops.metrics.blocked(rec.version, rec.route or "", stage)


def track_handles(handles: list[Any]) -> None:
    """Called by the endpoints with the engine requests they submitted (for TTFT and token counts)."""
    rec = CURRENT.get()
    if rec is not None:
        rec.handles.extend(handles)


class ServeOps:
    """Routes, canaries, logs and metrics of one server (see the module docstring)."""

    def __init__(self, state: Any, options: OpsOptions) -> None:
        self.state, self.options = state, options
        self.lock = threading.Lock()
        self.routes: dict[str, Route] = {}
        for name, weights in options.routes.items():
            self.add_route(name, weights, shadow=options.shadows.get(name))
        for name in options.shadows:
            if name not in self.routes:
                raise ValueError(f"--shadow {name}: no route '{name}' (define it with --route)")
        self.canaries: dict[str, CanaryMonitor] = {}
        for policy in options.canaries:
            self.add_canary(policy)
        self.metrics = OpsMetrics(self._snapshot)
        self.request_log = JsonlLog(options.request_log, options.request_log_max_bytes,
                                    options.request_log_keep) if options.request_log else None
        self.shadow_log = JsonlLog(options.shadow_log) if options.shadow_log else None
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.answered_by: collections.OrderedDict[str, tuple[str, str | None]] = collections.OrderedDict()
        self.draining: list[Any] = []
        self.background: set[asyncio.Task] = set()
        self._probe_stop = threading.Event()
        self._probe_threads = [threading.Thread(target=self._probe_loop, args=(m,), daemon=True,
                                                name=f"seekforge-probe-{m.policy.route}")
                               for m in self.canaries.values() if m.policy.probe]
        for t in self._probe_threads:
            t.start()

    # --- configuration ----------------------------------------------------------------------------
    def check_versions(self, weights: dict[str, float], where: str) -> None:
        missing = [v for v in weights if v not in self.state.models]
        if missing:
            raise ValueError(f"{where}: unknown version(s) {', '.join(missing)}; loaded: "
                             f"{', '.join(self.state.models)}")

    def add_route(self, name: str, weights: dict[str, float], shadow: Shadow | None = None) -> Route:
        if name in self.state.models:
            raise ValueError(f"--route {name}: the name is already a model version")
        self.check_versions(weights, f"--route {name}")
        if shadow is not None:
            self.check_versions({shadow.version: 1.0}, f"--shadow {name}")
        route = Route(name, dict(weights), shadow=shadow)
        self.routes[name] = route
        return route

    def add_canary(self, policy: CanaryPolicy) -> None:
        route = self.routes.get(policy.route)
        if route is None:
            raise ValueError(f"--canary {policy.route}: no route '{policy.route}' (define it with --route)")
        if policy.version not in route.weights:
            raise ValueError(f"--canary {policy.route}: '{policy.version}' is not a version of the route "
                             f"({', '.join(route.weights)})")
        if policy.probe and not Path(policy.probe).is_file():
            raise FileNotFoundError(f"--canary {policy.route}: probe file {policy.probe} not found")
        others = [v for v in route.weights if v != policy.version]
        if not others:
            raise ValueError(f"--canary {policy.route}: the route needs a stable version besides the canary")
        route.canary = policy.version
        if route.stable == policy.version:
            route.stable = max(others, key=lambda v: route.weights[v])
        self.canaries[policy.route] = CanaryMonitor(policy)

    def public_names(self) -> list[str]:
        return list(self.state.models) + list(self.routes)

    # --- picking the version ----------------------------------------------------------------------
    def resolve(self, body: dict[str, Any], user_key: str) -> Any:
        """The ServedModel answering ``body``; counts it in flight and notes it for the middleware."""
        state = self.state
        name = body.get("model")
        if name is None:
            name = state.default
        if not isinstance(name, str) or name not in state.models and name not in self.routes:
            names = ", ".join(f"'{n}'" for n in self.public_names())
            raise P.APIError(400, f"The model '{name}' does not exist; this server serves {names}.",
                             param="model", code="model_not_found")
        route = self.routes.get(name)
        if route is not None:
            user = body.get("user")
            sticky = user if isinstance(user, str) and user else user_key
            version = route.pick(sticky)
        else:
            version = name
        with self.lock:
            served = state.models.get(version)
            if served is not None:
                served.inflight += 1
        if served is None:  # unloaded between the lookup and now (DELETE /admin/versions/...)
            raise P.APIError(400, f"The model '{version}' was just unloaded; this server serves "
                             f"{', '.join(repr(n) for n in self.public_names())}.", param="model",
                             code="model_not_found")
        rec = CURRENT.get()
        if rec is None:  # called outside the middleware (no request to follow): nothing to release later
            with self.lock:
                served.inflight -= 1
            return served
        rec.served, rec.version, rec.route = served, version, route.name if route else None
        rec.stream = body.get("stream") is True
        shadow = route.shadow if route is not None else None
        if shadow is not None and shadow.version in state.models and random.random() < shadow.fraction:
            rec.shadow = (state.models[route.shadow.version], body)
        return served

    def release(self, served: Any) -> None:
        with self.lock:
            served.inflight -= 1

    # --- after the response -----------------------------------------------------------------------
    def finish(self, rec: RequestRecord, status: int, completed: bool) -> None:
        """Account a finished (or abandoned) request: log line, metrics, canary window."""
        self.release(rec.served)
        latency = time.perf_counter() - rec.started
        firsts = [h.first_token_time - h.submitted for h in rec.handles if h.first_token_time is not None]
        ttft = min(firsts) if firsts else None
        tokens = sum(h.n_generated for h in rec.handles)
        if not completed and status < 400:
            status = 499  # the client went away before the end (nginx's code for it)
        failed = status >= 500 or rec.error is not None
        route = rec.route or ""
        self.metrics.request(rec.version, route, status if rec.error is None else 500, latency, ttft, tokens)
        if rec.response_id:
            with self.lock:
                self.answered_by[rec.response_id] = (rec.version, rec.route)
                while len(self.answered_by) > 100_000:
                    self.answered_by.popitem(last=False)
        if self.request_log is not None:
            self.request_log.write({
                "event": "request", "time": time.time(), "id": rec.response_id, "path": rec.path,
                "version": rec.version, "route": rec.route, "status": status, "stream": rec.stream,
                "latency_s": round(latency, 6), "ttft_s": None if ttft is None else round(ttft, 6),
                "completion_tokens": tokens, "error": rec.error, "blocked": rec.blocked})
        monitor = self.canaries.get(route)
        server_side = status >= 500 or status < 400  # 4xx (bad requests, disconnects) say nothing of it
        if monitor is not None and rec.version == monitor.policy.version and server_side:
            breach = monitor.observe(not failed, latency, ttft)
            if breach is not None:
                self.rollback(route, reason=breach.measure, breach=breach)

    # --- route changes ----------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"event": kind, "time": time.time(), **fields}
        self.events.append(record)
        if self.request_log is not None:
            self.request_log.write(record)
        log.warning("%s: %s", kind, json.dumps(fields, ensure_ascii=False))
        return record

    def rollback(self, route_name: str, reason: str = "admin", breach: Breach | None = None) -> Route:
        """All of the route's traffic to its stable version (idempotent for automatic breaches)."""
        route = self.routes[route_name]
        with route.lock:
            already = route.rolled_back and route.weights == {route.stable: 1.0}
            route.weights = {route.stable: 1.0}
            route.rolled_back = True
        if already and breach is not None:
            return route
        self.metrics.rollbacks.labels(route_name, reason).inc()
        self.event("rollback", route=route_name, to=route.stable, canary=route.canary, reason=reason,
                   detail=breach.describe() if breach else None)
        return route

    def promote(self, route_name: str, version: str | None) -> Route:
        route = self.routes[route_name]
        version = version or route.canary
        if version is None:
            raise ValueError("the route has no canary; name the version to promote")
        self.check_versions({version: 1.0}, f"promote {route_name}")
        with route.lock:
            route.weights = {version: 1.0}
            route.stable, route.canary, route.rolled_back = version, None, False
        self.canaries.pop(route_name, None)
        self.event("promote", route=route_name, version=version)
        return route

    def set_weights(self, route_name: str, weights: dict[str, float]) -> Route:
        self.check_versions(weights, f"route {route_name}")
        route = self.routes.get(route_name)
        if route is None:
            route = self.add_route(route_name, weights)
        else:
            route.set_weights(weights)
            with route.lock:
                if route.stable not in weights:
                    route.stable = max(weights, key=lambda v: weights[v])
                route.rolled_back = False
        self.event("weights", route=route_name, weights=weights)
        return route

    # --- versions ---------------------------------------------------------------------------------
    async def load_version(self, spec: VersionSpec) -> Any:
        from seekforge.serve.app import ServedModel

        if self.options.loader is None:
            raise ValueError("this server was started without a loader; versions cannot be loaded")
        if spec.name in self.state.models or spec.name in self.routes:
            raise ValueError(f"'{spec.name}' already exists; swap it instead")
        engine = await asyncio.to_thread(self.options.loader, spec)
        served = ServedModel.of(engine)
        served.spec = spec
        with self.lock:
            self.state.models[spec.name] = served
        self.event("load", version=spec.name, source=spec.describe())
        return served

    async def swap_version(self, spec: VersionSpec) -> Any:
        """Hot swap: new requests go to the new engine at once; the old one is drained, then closed."""
        from seekforge.serve.app import ServedModel

        if self.options.loader is None:
            raise ValueError("this server was started without a loader; versions cannot be swapped")
        if spec.name not in self.state.models:
            raise KeyError(spec.name)
        engine = await asyncio.to_thread(self.options.loader, spec)
        served = ServedModel.of(engine)
        served.spec = spec
        with self.lock:
            old = self.state.models.get(spec.name)
            if old is not None:
                self.state.models[spec.name] = served
                self.draining.append(old)
        if old is None:  # unloaded while the new checkpoint loaded: nothing to swap into
            await asyncio.to_thread(engine.close)
            raise ValueError(f"'{spec.name}' was unloaded while its new checkpoint loaded")
        self.event("swap", version=spec.name, source=spec.describe(), draining=old.inflight)
        self.spawn(self._drain(old, spec.name))
        return served

    def holders(self, name: str) -> list[str]:
        """What still sends traffic to version ``name`` (empty: it may be unloaded)."""
        held = []
        if self.state.default == name:
            held.append("the default model (requests without 'model')")
        for route in list(self.routes.values()):
            with route.lock:
                if route.weights.get(name, 0) > 0:
                    held.append(f"route '{route.name}' (weight {route.weights[name]:g})")
                elif route.stable == name:  # a rollback would send all traffic there
                    held.append(f"route '{route.name}' (its stable version)")
                if route.canary == name:
                    held.append(f"route '{route.name}' (its canary)")
                if route.shadow is not None and route.shadow.version == name:
                    held.append(f"route '{route.name}' (its shadow)")
        return held

    async def unload_version(self, name: str) -> Any:
        """Take version ``name`` out of the registry (new requests to it get 400), then drain its
        requests in flight and close its engine as a hot swap does. Raises KeyError for an unknown
        name and ValueError, naming what holds it, for a version still in use or the last one."""
        with self.lock:
            if name not in self.state.models:
                raise KeyError(name)
            if len(self.state.models) == 1:
                raise ValueError(f"'{name}' is the last version; load another before unloading it")
            held = self.holders(name)
            if held:
                raise ValueError(f"'{name}' still gets traffic from {'; '.join(held)}; "
                                 "move that traffic to another version first")
            old = self.state.models.pop(name)
            self.draining.append(old)
            for route in list(self.routes.values()):  # weight-0 entries only: nothing is routed there
                with route.lock:
                    route.weights.pop(name, None)
        self.event("unload", version=name, draining=old.inflight)
        self.spawn(self._drain(old, name))
        return old

    async def _drain(self, old: Any, name: str) -> None:
        t0 = time.monotonic()
        while old.inflight > 0 and time.monotonic() - t0 < self.options.drain_timeout_s:
            await asyncio.sleep(0.05)
        left = old.inflight
        await asyncio.to_thread(old.engine.close)
        with self.lock:
            self.draining.remove(old)
        self.event("drained", version=name, seconds=round(time.monotonic() - t0, 3), cut_off=left)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # --- shadow -----------------------------------------------------------------------------------
    async def run_shadow(self, rec: RequestRecord, live_done: asyncio.Event) -> None:
        served, body = rec.shadow
        with self.lock:
            served.inflight += 1
        t0 = time.perf_counter()
        text: list[str] = []
        error = None
        try:
            engine = served.engine
            chat = rec.path.endswith("/chat/completions")
            if chat:
                prompt = engine.chat_prompt(P.chat_messages(body))
            else:
                prompt = P.completion_prompts(body)[0]
            params = P.sampling_params(body, chat=chat, vocab_size=engine.vocab_size)
            handle = engine.submit(prompt, params)
            try:
                async for ev in handle.stream():
                    text.append(ev.text)
                    if ev.error:
                        error = ev.error
            finally:
                handle.cancel()
        except Exception as e:  # the shadow's failure is logged, never the live request's problem
            error = f"{type(e).__name__}: {e}"
        finally:
            self.release(served)
        shadow_latency = time.perf_counter() - t0
        await live_done.wait()
        if self.shadow_log is not None:
            self.shadow_log.write({
                "time": time.time(), "id": rec.response_id, "route": rec.route, "live_version": rec.version,
                "shadow_version": served.name,
                "request": body, "live": "".join(rec.live_text), "shadow": "".join(text),
                "shadow_latency_s": round(shadow_latency, 6), "shadow_error": error})

    # --- quality probes ---------------------------------------------------------------------------
    def _probe_loop(self, monitor: CanaryMonitor) -> None:
        pol = monitor.policy
        while not self._probe_stop.wait(pol.probe_every_s):
            self.probe_once(monitor)

    def probe_once(self, monitor: CanaryMonitor) -> dict[str, float]:
        """Score every version of the canary's route on the probe; roll back if the canary is too low."""
        pol = monitor.policy
        route = self.routes.get(pol.route)
        if route is None or self.canaries.get(pol.route) is not monitor:
            return {}
        scores: dict[str, float] = {}
        for version in list(route.weights):
            served = self.state.models.get(version)
            if served is None:
                continue
            try:
                scores[version] = run_probe(served.engine, pol.probe, pol.probe_metric, pol.probe_max_tokens)
            except Exception as e:  # a closed (swapped) engine or a bad probe file: report, keep serving
                log.warning("probe of %s failed: %s", version, e)
                continue
            if self.request_log is not None:
                self.request_log.write({"event": "probe", "time": time.time(), "version": version,
                                        "route": pol.route, "metric": pol.probe_metric,
                                        "score": scores[version]})
        if pol.version in scores:
            breach = monitor.probe_verdict(scores[pol.version])
            if breach is not None:
                self.rollback(pol.route, reason=breach.measure, breach=breach)
        return scores

    # --- feedback ---------------------------------------------------------------------------------
    def feedback(self, response_id: str, rating: str, comment: str | None) -> dict[str, Any]:
        with self.lock:
            who = self.answered_by.get(response_id)
        if who is None:
            raise P.APIError(404, f"no answer with id '{response_id}' is known to this server", param="id",
                             code="not_found")
        record = {"event": "feedback", "time": time.time(), "id": response_id, "version": who[0],
                  "route": who[1], "rating": rating}
        if comment:
            record["comment"] = comment[:2000]
        self.metrics.feedback.labels(who[0], who[1] or "", rating).inc()
        if self.request_log is not None:
            self.request_log.write(record)
        return record

    # --- metrics / shutdown -----------------------------------------------------------------------
    def _snapshot(self) -> tuple[dict[str, tuple[Any, int]], dict[str, dict[str, float]]]:
        with self.lock:
            versions = {name: (m.engine, m.inflight) for name, m in self.state.models.items()}
        routes = {}
        for name, route in list(self.routes.items()):
            with route.lock:
                routes[name] = dict(route.weights)
        return versions, routes

    def close(self) -> None:
        self._probe_stop.set()
        for log_file in (self.request_log, self.shadow_log):
            if log_file is not None:
                log_file.close()


# --- the middleware ------------------------------------------------------------------------------
def _live_text(rec: RequestRecord, chunk: bytes) -> None:
    """Collect the live answer's text (only for shadowed requests, to log both side by side)."""
    if rec.stream:
        for line in chunk.split(b"\n"):
            if line.startswith(b"data: {"):
                with contextlib.suppress(ValueError):  # only ever our own whole events; never fail the answer
                    for c in json.loads(line[6:]).get("choices") or []:
                        rec.live_text.append((c.get("delta") or {}).get("content") or c.get("text") or "")
    else:
        rec.live_text.append(chunk.decode("utf-8", "replace"))


def _first_choice_text(body: str) -> str:
    """The first choice's text of a non-streaming response body ("" for an error or a cut body)."""
    try:
        choices = json.loads(body).get("choices") or []
    except (ValueError, AttributeError):
        return ""
    if not choices:
        return ""
    return (choices[0].get("message") or {}).get("content") or choices[0].get("text") or ""


async def ops_middleware(request: Request, call_next: Callable) -> Response:
    if request.url.path not in GENERATING_PATHS:
        return await call_next(request)
    ops: ServeOps = request.app.state.server.ops
    rec = RequestRecord(request.url.path)
    token = CURRENT.set(rec)
    try:
        response = await call_next(request)
    finally:
        CURRENT.reset(token)
    if rec.served is None:  # refused before a version was picked (auth, bad JSON, unknown model)
        return response
    response.headers[MODEL_HEADER] = rec.version
    live_done = asyncio.Event()
    if rec.shadow is not None and response.status_code == 200:
        ops.spawn(ops.run_shadow(rec, live_done))
    body = response.body_iterator

    async def followed() -> Any:
        # A stream is complete only with its [DONE]: when the client hangs up, the inner response
        # just stops, and this loop ends as if nothing happened.
        completed, done = False, False
        try:
            async for chunk in body:
                raw = chunk if isinstance(chunk, bytes) else chunk.encode("utf-8")
                if rec.response_id is None:
                    m = _ID.search(raw)
                    rec.response_id = m.group(1).decode() if m else None
                if rec.stream and raw.startswith(b'data: {"error"'):
                    rec.error = json.loads(raw[6:])["error"]["message"]
                if rec.shadow is not None:
                    _live_text(rec, raw)
                done = done or rec.stream and b"data: [DONE]" in raw
                yield chunk
            completed = done or not rec.stream or response.status_code != 200
        finally:
            if rec.shadow is not None and not rec.stream:
                rec.live_text = [_first_choice_text("".join(rec.live_text))]
            ops.finish(rec, response.status_code, completed)
            live_done.set()

    response.body_iterator = followed()
    return response


# --- the extra endpoints -------------------------------------------------------------------------
async def ready(request: Request) -> Response:
    """Readiness: every version's engine is running (Kubernetes sends traffic only when this is 200)."""
    state = request.app.state.server
    dead = [name for name, m in list(state.models.items()) if not m.engine.is_alive()]
    body = {"status": "ready" if not dead else "not ready", "versions": list(state.models),
            "routes": list(state.ops.routes), "dead": dead}
    return Response(json.dumps(body), status_code=200 if not dead else 503, media_type="application/json")


async def feedback(request: Request) -> dict[str, Any]:
    """``POST /v1/feedback {"id": "chatcmpl-...", "rating": "up" | "down", "comment"?}`` (the chat page's
    👍/👎): logged with the version that gave that answer, for ``seekforge ab-report``."""
    from seekforge.serve.app import check_auth, read_json

    check_auth(request)
    body = await read_json(request)
    rid, rating, comment = body.get("id"), body.get("rating"), body.get("comment")
    if not isinstance(rid, str) or not rid:
        raise P.bad("id", "'id' must be the id of a chat completion", code="invalid_type")
    if rating not in ("up", "down"):
        raise P.bad("rating", "'rating' must be \"up\" or \"down\"")
    if comment is not None and not isinstance(comment, str):
        raise P.bad("comment", "'comment' must be a string", code="invalid_type")
    return {"object": "feedback", **request.app.state.server.ops.feedback(rid, rating, comment)}


def install(app: FastAPI) -> None:
    """Add the middleware, ``/ready``, ``/v1/feedback`` and the ``/admin/`` API to ``app``."""
    from seekforge.serve.admin import router as admin_router

    app.middleware("http")(ops_middleware)
    app.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/v1/feedback", feedback, methods=["POST"])
    app.include_router(admin_router)

