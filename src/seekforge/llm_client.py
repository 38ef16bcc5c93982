"""The one client for calling an external OpenAI-compatible model: ``data augment``/``synth``,
``distill``'s endpoint teacher, ``eval --endpoint`` and ``serve``'s remote moderation classifier.

Every stage that asks a model for text goes through :class:`LLMClient`, so every such command
takes the same flags (:func:`add_endpoint_args`: ``--endpoint URL --api-key KEY --model NAME``,
the key also from ``SEEKFORGE_API_KEY`` or ``OPENAI_API_KEY``) and behaves the same way:

- **preflight** (:meth:`LLMClient.preflight`): ``GET /v1/models`` before any work, so an endpoint
  that is down, a wrong key or a model the endpoint does not serve is a clear error up front,
  not a thousand failed requests later;
- **concurrency**: at most ``concurrency`` requests in flight (a thread pool over the ``openai``
  package's synchronous client, which is thread-safe);
- **retries** with exponential backoff and full jitter on 429, 5xx, timeouts and connection
  errors (the "full jitter" variant of the AWS Architecture Blog's "Exponential Backoff and
  Jitter": sleep uniform(0, min(cap, base·2^attempt)), so clients that failed together do not
  retry together); a server's ``Retry-After`` header is honoured when it asks for longer;
- **budgets**: requests per minute and tokens per minute over a sliding 60 s window (a request's
  tokens are estimated before it is sent, then replaced by the server's reported usage);
- **a disk cache** (sqlite, one row per response) keyed by the model name and the full request
  body, so a re-run or a run resumed after a kill never pays twice for the same request. The
  endpoint URL is deliberately not part of the key: the same model served on another port or
  host gives the same answers;
- **a report** (:class:`Usage`): requests actually sent, cache hits, failures, retries, prompt
  and completion tokens, cost when per-token prices are given; logged while running and written
  by the caller as ``report.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("seekforge.llm_client")

API_KEY_ENVS = ("SEEKFORGE_API_KEY", "OPENAI_API_KEY")


class EndpointError(ValueError):
    """The endpoint cannot be used as configured (unreachable, key refused, model not served)."""


@dataclass
class EndpointConfig:
    """Where the model is and how hard to push it."""

    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1 (a URL without a path gets /v1)
    model: str | None = None  # None: the first model the endpoint lists
    api_key: str | None = None  # None: $SEEKFORGE_API_KEY, then $OPENAI_API_KEY
    concurrency: int = 8  # requests in flight at once
    max_retries: int = 5  # retries of one request on 429/5xx/timeouts/connection errors
    backoff_s: float = 0.5  # first backoff cap; doubles per retry
    backoff_max_s: float = 30.0
    timeout_s: float = 300.0  # per request
    rpm: float = 0.0  # requests per minute (0 = no budget)
    tpm: float = 0.0  # tokens (prompt + completion) per minute (0 = no budget)
    price_prompt: float = 0.0  # price per 1M prompt tokens (0 = no cost in the report)
    price_completion: float = 0.0  # price per 1M completion tokens
    cache: str | None = None  # sqlite file of cached responses (None = no cache)
    progress_s: float = 10.0  # seconds between progress log lines

    def validate(self) -> None:
        if not self.endpoint:
            raise EndpointError(
                "--endpoint: required (an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1)"
            )
        url = urlparse(self.endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise EndpointError(
                f"--endpoint: expected an http(s) URL such as http://127.0.0.1:8000/v1, got {self.endpoint!r}"
            )
        for name in ("concurrency",):
            if getattr(self, name) < 1:
                raise EndpointError(f"--{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_retries", "rpm", "tpm", "price_prompt", "price_completion"):
            if getattr(self, name) < 0:
                raise EndpointError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")

    @property
    def base_url(self) -> str:
        url = self.endpoint.rstrip("/")
        return url + "/v1" if urlparse(url).path in ("", "/") else url

    def resolved_api_key(self) -> str:
        if self.api_key:
            return self.api_key
        for name in API_KEY_ENVS:
            if os.environ.get(name):
                return os.environ[name]
        return "none"  # the openai package insists on a key; keyless local servers ignore it


def add_endpoint_args(
    parser: argparse.ArgumentParser,
    prefix: str = "",
    required: bool = True,
    cache_help: str = "response cache (sqlite; default OUT/cache/responses.sqlite)",
) -> None:
    """The shared endpoint flags. ``prefix="judge-"`` adds a second set (``--judge-endpoint`` ...)
    whose unset values fall back to the main ones (see :func:`endpoint_from_args`)."""
    dest = prefix.replace("-", "_")
    g = parser.add_argument_group(f"{prefix}endpoint" if prefix else "model endpoint")
    if prefix:  # a second model (e.g. a judge): everything defaults to the main endpoint's values
        helps = (f"base URL of the {prefix.rstrip('-')} model (default: --endpoint)",
                 "its API key (default: --api-key when the endpoint is the same)",
                 "its model name (default: --model when the endpoint is the same, else the first listed)")
    else:
        helps = ("OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 "
                 "(`seekforge serve`, vLLM, llama.cpp, a hosted API)",
                 "API key (default: $SEEKFORGE_API_KEY, then $OPENAI_API_KEY)",
                 "model name (default: the first one the endpoint lists)")
    g.add_argument(f"--{prefix}endpoint", dest=f"{dest}endpoint", required=required and not prefix,
                   metavar="URL", help=helps[0])
    g.add_argument(f"--{prefix}api-key", dest=f"{dest}api_key", metavar="KEY", help=helps[1])
    g.add_argument(f"--{prefix}model", dest=f"{dest}model", metavar="NAME", help=helps[2])
    if prefix:
        return
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    g.add_argument("--max-retries", type=int, default=5, help="retries per request on 429/5xx/errors")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    g.add_argument("--rpm", type=float, default=0.0, help="requests-per-minute budget (0 = none)")
    g.add_argument("--tpm", type=float, default=0.0, help="tokens-per-minute budget (0 = none)")
    g.add_argument(
        "--price-prompt",
        type=float,
        default=0.0,
        metavar="PER_1M",
        help="price per 1M prompt tokens, for the cost in report.json",
    )
    g.add_argument(
        "--price-completion", type=float, default=0.0, metavar="PER_1M", help="price per 1M completion tokens"
    )
    g.add_argument(
        "--cache",
        default=None,
        metavar="FILE",
        help=cache_help,
    )


def endpoint_from_args(
    args: argparse.Namespace, prefix: str = "", cache: str | None = None
) -> EndpointConfig:
    """An :class:`EndpointConfig` from :func:`add_endpoint_args` flags (``prefix`` as given there)."""
    dest = prefix.replace("-", "_")
    endpoint = getattr(args, f"{dest}endpoint") or args.endpoint
    cfg = EndpointConfig(
        endpoint=endpoint,
        model=getattr(args, f"{dest}model") or (args.model if endpoint == args.endpoint else None),
        api_key=getattr(args, f"{dest}api_key") or (args.api_key if endpoint == args.endpoint else None),
        concurrency=args.concurrency,
        max_retries=args.max_retries,
        timeout_s=args.timeout,
        rpm=args.rpm,
        tpm=args.tpm,
        price_prompt=args.price_prompt,
        price_completion=args.price_completion,
        cache=args.cache or cache,
    )
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------- report


@dataclass
class Usage:
    """What a client did: the numbers of ``report.json``."""

    requests: int = 0  # HTTP requests actually sent (retries included)
    succeeded: int = 0
    cache_hits: int = 0
    failed: int = 0  # calls given up on (after retries, or a non-retryable error)
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    elapsed_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # failure kind -> count

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["cost"] is None:
            del d["cost"]
        return d


@dataclass
class ChatResult:
    """One answer: text, why it stopped, token usage, and whether it came from the cache."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False


# --------------------------------------------------------------------------- cache


class ResponseCache:
    """sqlite table key -> response JSON; every put is committed, so a kill loses at most the
    requests in flight. One connection guarded by a lock (sqlite connections are not thread-safe)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL: a commit is not fsynced (a checkpoint is). A killed process
            # loses nothing committed (the WAL is in the OS cache); only a power cut can drop the
            # last answers, which a re-run then asks again. An fsync per answer, serialised under
            # the lock, costs more than the requests themselves on a busy disk.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT)")
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a seekforge response cache ({e})") from None

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, response: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?)",
                (key, json.dumps(response, ensure_ascii=False)),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def request_key(model: str, request: dict[str, Any]) -> str:
    """sha256 of the model name and the full request body (canonical JSON)."""
    blob = json.dumps({"model": model, **request}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- budgets


class MinuteBudget:
    """Requests-per-minute and tokens-per-minute limits over a sliding 60 s window.

    ``acquire(estimate)`` blocks until one more request with ``estimate`` tokens fits both budgets
    and returns a ticket; ``settle(ticket, actual)`` replaces the estimate by the real usage.
    A single request larger than the whole token budget is let through alone (it could never fit).
    """

    WINDOW_S = 60.0

    def __init__(self, rpm: float, tpm: float, clock: Callable[[], float] = time.monotonic):
        self.rpm, self.tpm, self.clock = rpm, tpm, clock
        self._events: deque[list[float]] = deque()  # [time, tokens], oldest first
        self._cond = threading.Condition()

    def _prune(self, now: float) -> None:
        while self._events and now - self._events[0][0] >= self.WINDOW_S:
            self._events.popleft()

    def _wait_s(self, now: float, tokens: int) -> float:
        self._prune(now)
        waits = [0.0]
        if self.rpm and len(self._events) + 1 > self.rpm:
            k = int(len(self._events) + 1 - self.rpm)  # the k-th oldest must leave the window
            waits.append(self._events[k - 1][0] + self.WINDOW_S - now)
        if self.tpm and self._events:
            used = sum(e[1] for e in self._events)
            if used + tokens > self.tpm:
                # wait until enough old usage leaves the window; a request bigger than the whole
                # budget waits until the window is empty
                need = min(tokens, self.tpm)
                for t, n in self._events:
                    used -= n
                    if used + need <= self.tpm:
                        waits.append(t + self.WINDOW_S - now)
                        break
        return max(waits)

    def acquire(self, tokens: int) -> list[float]:
        if not (self.rpm or self.tpm):
            return [self.clock(), tokens]
        with self._cond:
            while (wait := self._wait_s(self.clock(), tokens)) > 0:
                self._cond.wait(timeout=wait)
            event = [self.clock(), float(tokens)]
            self._events.append(event)
            return event

    def settle(self, event: list[float], tokens: int) -> None:
        with self._cond:
            event[1] = float(tokens)
            self._cond.notify_all()


def estimate_tokens(request: dict[str, Any]) -> int:
    """Rough token count of a request before sending it: ~3 characters per token of the text
    (English is ~4, Chinese ~1.5 characters per token), token-id prompts counted exactly, plus the
    completion budget (none for a moderation request)."""
    texts = [str(m.get("content", "")) for m in request.get("messages", [])]
    ids = 0
    for part in _as_list(request.get("prompt")) + _as_list(request.get("input")):
        if isinstance(part, int):
            ids += 1
        elif isinstance(part, list):  # one token-id prompt
            ids += len(part)
        else:
            texts.append(str(part))
    budget = 0 if "input" in request else int(request.get("max_tokens") or 256)
    return sum(map(len, texts)) // 3 + 1 + ids + budget


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- the client


class LLMClient:
    """One endpoint with the cache, retries, budgets and report above.

    ``chat(messages, **params)`` answers one chat request (or raises :class:`RequestFailed`);
    ``chat_many(requests)`` answers many with ``concurrency`` in flight and returns None for the
    ones that failed (counted in :attr:`usage`). ``params`` are OpenAI request fields
    (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop`` ...). ``complete(request)`` is
    one ``/v1/completions`` request (``seekforge eval`` scores log-likelihoods with it) and
    ``moderate(texts)`` one ``/v1/moderations`` request (the server's remote safety classifier).
    """

    def __init__(self, cfg: EndpointConfig, sleep: Callable[[float], None] = time.sleep):
        from openai import OpenAI

        cfg.validate()
        self.cfg = cfg
        self.usage = Usage(cost=0.0 if (cfg.price_prompt or cfg.price_completion) else None)
        # The openai package retries by itself too; ours replaces it so every attempt is counted.
        self._api = OpenAI(
            base_url=cfg.base_url, api_key=cfg.resolved_api_key(), max_retries=0, timeout=cfg.timeout_s
        )
        self._cache = ResponseCache(cfg.cache) if cfg.cache else None
        self._budget = MinuteBudget(cfg.rpm, cfg.tpm)
        self._lock = threading.Lock()
        self._sleep = sleep
        self._t0 = time.perf_counter()
        self._last_log = self._t0
        self.model: str = cfg.model or ""

    def set_cache(self, path: str | Path) -> None:
        """Use (or switch to) the response cache at ``path``."""
        if self._cache is not None:
            self._cache.close()
        self.cfg.cache = str(path)
        self._cache = ResponseCache(path)

    # -- preflight ------------------------------------------------------------------------------

    def preflight(self) -> str:
        """Check the endpoint answers, accepts the key and serves the model; returns the model name."""
        import openai

        url = self.cfg.base_url
        try:
            listed = [m.id for m in self._api.models.list().data]
        except openai.AuthenticationError:
            raise EndpointError(
                f"{url} refused the API key (401); pass --api-key or set {' or '.join(API_KEY_ENVS)}"
            ) from None
        except openai.PermissionDeniedError:
            raise EndpointError(f"{url} denied access with this API key (403)") from None
        except openai.NotFoundError:
            raise EndpointError(
                f"{url}/models does not exist (404): is {url} the OpenAI-compatible "
                "base URL (usually ending in /v1)?"
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise EndpointError(
                f"cannot reach the endpoint {url} ({e.__class__.__name__}: "
                f"{e.__cause__ or e}); is the server running?"
            ) from None
        except openai.APIStatusError as e:
            raise EndpointError(f"{url}/models answered HTTP {e.status_code}: {e.message}") from None
        if self.cfg.model is None:
            if not listed:
                raise EndpointError(f"{url} lists no models; pass --model")
            self.model = listed[0]
        elif self.cfg.model not in listed:
            raise EndpointError(
                f"model {self.cfg.model!r} is not served by {url}; it lists: "
                + (", ".join(listed[:20]) or "nothing")
            )
        else:
            self.model = self.cfg.model
        log.info("endpoint %s, model %s", url, self.model)
        return self.model

    # -- one request ----------------------------------------------------------------------------

    def _request(self, messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [dict(m) for m in messages], **{k: v for k, v in params.items() if v is not None}}

    def chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> ChatResult:
        if not self.model:
            self.preflight()
        request = self._request(messages, params)
        record, cached = self._cached_call(request, self._api.chat.completions.create, _chat_record)
        return ChatResult(**record, cached=cached)

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """One ``/v1/completions`` request (``prompt`` as text or token ids, ``echo``, ``logprobs``,
        ``max_tokens`` ...); returns the response as a dict. Cached, retried and counted like chat."""
        if not self.model:
            self.preflight()
        record, _ = self._cached_call(dict(request), self._api.completions.create, _response_dict)
        return record

    def moderate(self, texts: list[str]) -> list[dict[str, float]]:
        """Category scores of each text from ``/v1/moderations``. Not cached (a policy or model
        change must take effect at once) and no preflight: moderation endpoints often list no
        model, so the model is sent only when one was configured."""
        request: dict[str, Any] = {"input": list(texts)}
        if self.cfg.model:
            request["model"] = self.cfg.model
        try:
            response = self._call(request, self._api.moderations.create, send_model=False)
        except RequestFailed as e:
            self._count_failure(e)
            raise
        self._account(0, 0)
        out = []
        for result in response.results:
            raw = result.category_scores.model_dump() if hasattr(result.category_scores, "model_dump") else {}
            out.append({k: float(v) for k, v in raw.items() if isinstance(v, (int, float))})
        return out

    def _cached_call(
        self, request: dict[str, Any], create: Callable[..., Any], record: Callable[[Any], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """(the response's record, whether it came from the cache)."""
        key = request_key(self.model, request)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            with self._lock:
                self.usage.cache_hits += 1
            return hit, True
        try:
            response = self._call(request, create)
        except RequestFailed as e:
            self._count_failure(e)
            raise
        pt, ct = _token_usage(response)
        self._account(pt, ct)
        rec = record(response)
        if self._cache is not None:
            self._cache.put(key, rec)
        return rec, False

    def _count_failure(self, e: RequestFailed) -> None:
        with self._lock:
            self.usage.failed += 1
            self.usage.errors[e.kind] = self.usage.errors.get(e.kind, 0) + 1

    def _call(self, request: dict[str, Any], create: Callable[..., Any], send_model: bool = True) -> Any:
        """Send one request, retrying what a retry can fix; the openai response object."""
        import openai

        attempt = 0
        model = {"model": self.model} if send_model else {}
        while True:
            event = self._budget.acquire(estimate_tokens(request))
            with self._lock:
                self.usage.requests += 1
            try:
                response = create(**model, **request)
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APIConnectionError,
                openai.APITimeoutError,
            ) as e:
                self._budget.settle(event, 0)
                status = getattr(e, "status_code", None)
                kind = f"HTTP {status}" if status else e.__class__.__name__
                if attempt >= self.cfg.max_retries:
                    raise RequestFailed(kind, f"{kind} after {attempt + 1} attempts: {e}") from None
                self._backoff(attempt, getattr(e, "response", None))
                attempt += 1
                with self._lock:
                    self.usage.retries += 1
                continue
            except openai.APIStatusError as e:  # other 4xx: the request itself is wrong, retrying won't help
                self._budget.settle(event, 0)
                raise RequestFailed(f"HTTP {e.status_code}", f"HTTP {e.status_code}: {e.message}") from None
            self._budget.settle(event, sum(_token_usage(response)))
            return response

    def _backoff(self, attempt: int, response: Any) -> None:
        delay = random.uniform(0, min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt))
        retry_after = response.headers.get("retry-after") if response is not None else None
        with contextlib.suppress(TypeError, ValueError):
            delay = max(delay, min(float(retry_after), self.cfg.backoff_max_s))
        self._sleep(delay)

    def _account(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            u = self.usage
            u.succeeded += 1
            u.prompt_tokens += prompt_tokens
            u.completion_tokens += completion_tokens
            if u.cost is not None:
                u.cost = (
                    u.prompt_tokens * self.cfg.price_prompt + u.completion_tokens * self.cfg.price_completion
                ) / 1e6
        self._maybe_log()

    def _maybe_log(self) -> None:
        now = time.perf_counter()
        if now - self._last_log < self.cfg.progress_s:
            return
        self._last_log = now
        log.info("%s", self.progress_line())

    def progress_line(self) -> str:
        u = self.usage
        cost = f", cost {u.cost:.4f}" if u.cost is not None else ""
        return (
            f"{u.requests} requests sent ({u.retries} retries), {u.cache_hits} cache hits, "
            f"{u.failed} failed, {u.prompt_tokens}+{u.completion_tokens} tokens{cost}"
        )

    # -- many requests --------------------------------------------------------------------------

    def chat_many(
        self, requests: Sequence[tuple[Sequence[dict[str, Any]], dict[str, Any]]]
    ) -> list[ChatResult | None]:
        """Answer ``[(messages, params), ...]`` in order with up to ``concurrency`` in flight."""
        if not self.model:
            self.preflight()

        def one(item: tuple[Sequence[dict[str, Any]], dict[str, Any]]) -> ChatResult | None:
            try:
                return self.chat(item[0], **item[1])
            except RequestFailed as e:
                log.warning("request failed: %s", e)
                return None

        if self.cfg.concurrency == 1 or len(requests) <= 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(one, requests))

    def report(self) -> dict[str, Any]:
        self.usage.elapsed_s = round(time.perf_counter() - self._t0, 3)
        return {"endpoint": self.cfg.base_url, "model": self.model, **self.usage.as_dict()}

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        self._api.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _token_usage(response: Any) -> tuple[int, int]:
    """(prompt, completion) tokens the server reports; 0 when it reports none."""
    usage = getattr(response, "usage", None)
    return (getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)


def _chat_record(response: Any) -> dict[str, Any]:
    """What a chat answer keeps (and the cache stores): text, finish reason, token counts."""
    choice = response.choices[0]
    pt, ct = _token_usage(response)
    return {"text": choice.message.content or "", "finish_reason": choice.finish_reason or "stop",
            "prompt_tokens": pt, "completion_tokens": ct}


def _response_dict(response: Any) -> dict[str, Any]:
    return response.model_dump()


class RequestFailed(RuntimeError):
    """A request that failed for good; ``kind`` is "HTTP 429", "APIConnectionError", ..."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
