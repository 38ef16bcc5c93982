"""The inference engine: one model, a latent KV cache, continuous batching on a background thread.

One engine serves the terminal chat, the HTTP server and `seekforge eval`'s generation tasks:

    engine = Engine.from_pretrained("runs/sft/final")            # or Engine(model, tokenizer)
    engine.generate(["Hello"], SamplingParams(max_tokens=20))    # sync, batched (eval, scripts)
    for ev in engine.submit(prompt_ids, params): print(ev.text)  # sync stream (terminal chat)
    async for ev in engine.submit(...).stream(): ...             # async stream (server)

How a request flows (all model work happens on the engine thread, so torch is never called
concurrently):

    submit() -> bounded waiting queue (QueueFull when full: back-pressure, HTTP 503)
             -> a free cache slot -> prefill, in chunks of ``prefill_chunk`` tokens per loop turn
             -> the decode batch: every turn runs ONE forward for all running requests ([B, 1], or
                [B, 2] with MTP speculation), samples per request, streams text to each handle
             -> finished / cancelled: the slot is freed at once and the next waiting request joins

The cache is the model's ``MLACache``: per layer only the d_c-dim latent plus the d_r-dim rope key
per token, preallocated for ``max_batch`` slots of ``max_len`` tokens; decode uses absorbed MLA.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seekforge.infer.constraints import ConstraintCompiler, ConstraintMatcher, apply_bitmask
from seekforge.infer.detok import IncrementalDecoder, StopMatcher
from seekforge.infer.sampling import (
    InvalidParam,
    PenaltyState,
    SamplingParams,
    TokenLogprob,
    make_generator,
    sample,
    top_logprobs,
)

log = logging.getLogger("seekforge.infer")


class QueueFull(RuntimeError):
    """The waiting queue is at ``queue_size``: try again later (the server answers 503)."""


class EngineClosed(RuntimeError):
    """The engine was shut down."""


@dataclass
class EngineConfig:
    """Engine settings (``seekforge serve``/``chat`` flags map onto these)."""

    max_batch: int = 8  # cache slots = requests decoded together
    max_len: int | None = None  # tokens per slot (prompt + output); None = the model's context
    queue_size: int = 64  # requests waiting for a slot before submit() raises QueueFull
    prefill_chunk: int = 512  # prompt tokens prefilled per loop turn (keeps decode latency bounded)
    speculative: bool = False  # use the MTP module as a 1-token draft
    # torch.compile the decode step (and the MTP drafter): graphs for every batch size and cache
    # length, compiled at start-up. bs=1 decode on CPU 1.5-2.5x faster than eager (docs/serve.md);
    # the first start compiles for 20-50 s on 2 cores, later starts reuse torch's on-disk cache.
    compile: bool = False
    threads: int | None = None  # CPU threads of the engine; None = torch.get_num_threads() of the creator
    device: str = "auto"
    dtype: str = "auto"

    def validate(self) -> None:
        if self.max_batch < 1:
            raise InvalidParam("max_batch", "max_batch must be >= 1")
        if self.queue_size < 0:
            raise InvalidParam("queue_size", "queue_size must be >= 0")
        if self.prefill_chunk < 1:
            raise InvalidParam("prefill_chunk", "prefill_chunk must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise InvalidParam("threads", "threads must be >= 1 (or null for torch's default)")


@dataclass
class StreamEvent:
    """What one engine step produced for one request. ``text`` may be "" (held back: half a
    character or a possible stop string). The last event has ``finish_reason`` set:
    ``stop`` (EOS, stop token or stop string), ``length`` (max_tokens or context full),
    ``cancelled`` or ``error`` (then ``error`` holds the message)."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob | None] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Completion:
    """A finished request, as :meth:`RequestHandle.result` and :meth:`Engine.generate` return it."""

    request_id: str
    prompt_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob | None]
    prompt_logprobs: list[TokenLogprob | None] | None
    time_to_first_token: float | None
    latency: float

    @property
    def usage(self) -> dict[str, int]:
        n_in, n_out = len(self.prompt_ids), len(self.token_ids)
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


class RequestHandle:
    """The caller's side of one request: iterate it (sync), ``stream()`` it (async) or ``result()``.

    Events are queued by the engine thread; both kinds of consumer read the same queue, and an
    asyncio consumer is woken with ``call_soon_threadsafe`` so the event loop never blocks.
    """

    def __init__(self, engine: Engine, request_id: str, prompt_ids: list[int],
                 params: SamplingParams) -> None:
        self.engine, self.id, self.prompt_ids, self.params = engine, request_id, prompt_ids, params
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self.submitted = time.perf_counter()
        self.first_token_time: float | None = None
        self.grammar: Any = None  # the compiled constraint (compiled in submit, on the caller's thread)
        self.finished_time: float | None = None
        self.n_generated = 0  # tokens generated so far (the server's request log and metrics read it)
        self._events: collections.deque[StreamEvent] = collections.deque()
        self._cv = threading.Condition()
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._done = False

    # --- engine side ----------------------------------------------------------------------------
    def _push(self, ev: StreamEvent) -> None:
        with self._cv:
            self.n_generated += len(ev.token_ids)
            self._events.append(ev)
            if ev.finish_reason is not None:
                self._done = True
            self._cv.notify_all()
            waker = self._waker
        if waker is not None:
            loop, flag = waker
            with contextlib.suppress(RuntimeError):  # the consumer's loop is closed (shutting down)
                loop.call_soon_threadsafe(flag.set)

    # --- caller side ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._done

    def cancel(self) -> None:
        """Stop generating; the slot is freed before the next decode step. Safe to call twice."""
        if not self._done:
            self.engine._cancel(self.id)

    def __iter__(self) -> Iterator[StreamEvent]:
        while True:
            with self._cv:
                while not self._events:
                    self._cv.wait()
                ev = self._events.popleft()
            yield ev
            if ev.finish_reason is not None:
                return

    async def stream(self, ping_every: float | None = None) -> AsyncIterator[StreamEvent | None]:
        """Async events; with ``ping_every`` yields None after that many idle seconds (SSE keep-alive)."""
        flag = asyncio.Event()
        with self._cv:
            self._waker = (asyncio.get_running_loop(), flag)
        while True:
            flag.clear()  # clear BEFORE draining: a push after the drain sets it again, none is lost
            with self._cv:
                batch = list(self._events)
                self._events.clear()
            for ev in batch:
                yield ev
                if ev.finish_reason is not None:
                    return
            if not batch:
                try:
                    await asyncio.wait_for(flag.wait(), ping_every)
                except asyncio.TimeoutError:
                    yield None

    def result(self, timeout: float | None = None) -> Completion:
        """Block until finished and collect everything (raises RuntimeError on an engine error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        text, ids, lps, finish = [], [], [], None
        while finish is None:
            with self._cv:
                while not self._events:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"request {self.id} did not finish in {timeout} s")
                    self._cv.wait(left)
                ev = self._events.popleft()
            if ev.error:
                raise RuntimeError(f"request {self.id} failed: {ev.error}")
            text.append(ev.text)
            ids += ev.token_ids
            lps += ev.logprobs
            finish = ev.finish_reason
        ttft = None if self.first_token_time is None else self.first_token_time - self.submitted
        end = self.finished_time or time.perf_counter()
        return Completion(self.id, self.prompt_ids, "".join(text), ids, finish, lps, self.prompt_logprobs,
                          ttft, end - self.submitted)


@dataclass
class _Seq:
    """Engine-thread state of one admitted request."""

    handle: RequestHandle
    slot: int
    generator: torch.Generator
    decoder: IncrementalDecoder
    stopper: StopMatcher
    stop_ids: set[int]
    max_new: int  # min(max_tokens, room left in the slot)
    pos: int = 0  # tokens of this sequence already in the cache
    next_token: int | None = None  # sampled, not yet fed to the model
    draft: int | None = None  # MTP guess for the token after next_token
    hidden: list[torch.Tensor] = field(default_factory=list)  # prompt hidden states (MTP prefill)
    prompt_lp: list[TokenLogprob | None] = field(default_factory=list)
    n_out: int = 0
    stop_hit: bool = False  # a stop string matched: nothing after it may be emitted
    matcher: ConstraintMatcher | None = None  # grammar state of a constrained request

    @property
    def params(self) -> SamplingParams:
        return self.handle.params

    @property
    def prompt(self) -> list[int]:
        return self.handle.prompt_ids


class EngineStats:
    """Counters the server exports on ``/metrics`` (read from any thread; ints/floats only)."""

    TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests_total: collections.Counter[str] = collections.Counter()  # by finish reason
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.ttft_buckets = [0] * len(self.TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.draft_tokens_total = 0
        self.accepted_tokens_total = 0
        self.decode_steps_total = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens)

    def observe_ttft(self, seconds: float) -> None:
        with self.lock:
            self.ttft_sum += seconds
            self.ttft_count += 1
            for i, b in enumerate(self.TTFT_BUCKETS):
                if seconds <= b:
                    self.ttft_buckets[i] += 1

    def add_tokens(self, n: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.generation_tokens_total += n
            self._recent.append((now, n))
            while self._recent and now - self._recent[0][0] > 10.0:
                self._recent.popleft()

    def tokens_per_second(self) -> float:
        """Generated tokens/s over the last 10 s."""
        now = time.monotonic()
        with self.lock:
            n = sum(k for t, k in self._recent if now - t <= 10.0)
        return n / 10.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens_total / self.draft_tokens_total if self.draft_tokens_total else None


def _stop_token_ids(tokenizer: Any, model_cfg: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(tokenizer, "eos_token_id", None), getattr(model_cfg, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    # Chat models end a turn with an end-of-turn token; treat it like EOS when the tokenizer has one.
    for name in ("<|end_of_turn|>", "<|eot|>", "<|im_end|>", "<|EOT|>"):
        tid = tokenizer.convert_tokens_to_ids(name) if hasattr(tokenizer, "convert_tokens_to_ids") else None
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None) and tid >= 0:
            ids.add(tid)
    return ids


class Engine:
    """Continuous-batching generation over one model. Thread-safe ``submit``; one worker thread."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: EngineConfig | None = None,
                 name: str = "seekforge") -> None:
        self.config = config or EngineConfig()
        self.config.validate()
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        cfg = model.config
        self.device = next(model.parameters()).device
        self.max_len = min(self.config.max_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.speculative = bool(self.config.speculative and getattr(model, "mtp_layers", None))
        if self.config.speculative and not self.speculative:
            log.warning("speculative decoding requested but the model has no MTP layers; disabled")
        self.vocab_size = cfg.vocab_size
        self.eos_ids = _stop_token_ids(tokenizer, cfg)
        self.stats = EngineStats()
        self._constraints: ConstraintCompiler | None = None  # built on the first constrained request
        self._constraints_lock = threading.Lock()
        self._threads = self.config.threads or torch.get_num_threads()  # the caller's setting by default
        self._free_slots = list(range(self.config.max_batch))[::-1]
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._cancelled: set[str] = set()
        self._cv = threading.Condition()
        self._prefilling: list[_Seq] = []
        self._running: list[_Seq] = []
        self._ids = itertools.count()
        self._closed = False
        self._ready = threading.Event()
        self._setup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="seekforge-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._setup_error is not None:
            self._thread.join()
            raise self._setup_error

    def _setup(self) -> None:
        """On the worker thread: thread count, cache, penalty state, compiled decode step.

        All torch work of the engine runs on this one thread. Why it matters on CPU: OpenMP keeps a
        thread pool per thread that runs parallel regions, and as soon as two pools exist (say the
        caller's and the engine's) libgomp counts more threads than cores and stops spinning
        between regions; every parallel op then pays a sleep/wake-up. Measured on 2 cores
        (docs/LOG.md): bs=1 decode 6.6 vs 3.3 ms, a 200-token prefill 45 vs 26 ms.
        """
        torch.set_num_threads(self._threads)
        cfg = self.model.config
        # One spare position: a speculative step writes next_token and its draft (pos, pos + 1).
        self.cache = self.model.new_cache(self.config.max_batch, self.max_len + 1)
        if not self.speculative:  # the MTP layers' entries would never be read: don't hold them
            self.cache.drop_layers_from(cfg.num_hidden_layers)
        self.penalties = PenaltyState(self.config.max_batch, self.vocab_size, self.device)
        if self.config.compile:
            self._decode, self._mtp_decode = self._compiled_decode()
        else:
            self._decode = self.model.decode_step
            self._mtp_decode = getattr(self.model, "mtp_decode_step", None)  # V4 has no MTP drafter

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self._setup()
        except BaseException as e:  # reported by __init__ in the caller's thread
            self._setup_error = e
            return
        finally:
            self._ready.set()
        self._loop()

    def _compiled_decode(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """``model.decode_step`` (and ``mtp_decode_step`` when speculating) through torch.compile,
        compiled now, not on the first request.

        dynamic=True makes batch size and cache length symbolic; torch still specialises a batch
        of exactly 1, and the MoE layer picks its few-pairs path below a batch size, so the graphs
        are told apart by batch size 1 / 2 / the largest: warming up those three covers every batch
        the engine will run (no compile stalls while serving). The warm-up writes latents to slots
        at positions 1..T, which every request overwrites (prefill) before it reads them. On CPU the
        C++ wrapper removes the Python call overhead between kernels, most of a bs=1 step.
        """
        options = {"cpp_wrapper": True} if self.device.type == "cpu" else None

        def compiled(method: Callable[..., Any]) -> Callable[..., Any]:
            # Compile the plain function with the model as an argument, not the bound method: torch
            # keys compiled code by code object, and every bound method it compiles shares one
            # wrapper's code, so two engines (or decode + MTP) would evict each other's graphs.
            fn = torch.compile(method, dynamic=True, fullgraph=True, options=options)
            return functools.partial(fn, self.model)

        cls = type(self.model)
        decode = compiled(cls.decode_step)
        mtp = compiled(cls.mtp_decode_step) if self.speculative else self.model.mtp_decode_step
        T = 2 if self.speculative else 1  # a speculative step feeds [next_token, draft]
        t0 = time.perf_counter()
        log.info("compiling the decode step (once; later starts reuse torch's cache) ...")
        try:
            for B in sorted({1, min(2, self.config.max_batch), self.config.max_batch}):  # in inference_mode
                ids = torch.zeros(B, T, dtype=torch.long, device=self.device)
                slots = torch.arange(B, device=self.device)
                pos = torch.arange(1, T + 1, device=self.device).repeat(B, 1)  # contiguous, as served
                out = decode(ids, self.cache, slots, pos, T + 1)
                if self.speculative:
                    mtp(out.hidden, ids, self.cache, slots, pos, T + 1)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RuntimeError(
                f"compile=True: torch.compile failed on the decode step ({type(e).__name__}: {first}). "
                "On CPU it needs a working C++ compiler (g++ or clang) for torch's inductor; install one "
                "or run without compile (--compile off).") from e
        log.info("decode step compiled in %.1f s", time.perf_counter() - t0)
        return decode, mtp

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | Path, config: EngineConfig | None = None, *,
                        tokenizer_dir: str | Path | None = None,
                        transform: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                        name: str | None = None) -> Engine:
        """Load a seekforge/HF DeepSeek-V3 directory (config.json + safetensors + tokenizer files).

        ``transform`` is the hook for weights that are not a plain checkpoint: it receives the loaded
        model and returns the one to serve (apply a LoRA adapter, quantize linears, ...). Absorbed MLA
        reads ``kv_b_proj`` through the module, so wrapped projections keep working.
        """
        from seekforge.model import load_model
        from seekforge.tokenizer import load_tokenizer
        from seekforge.utils import parse_dtype, resolve_device

        config = config or EngineConfig()
        device = resolve_device(config.device)
        # Load with one CPU thread: a multi-threaded op here would start an OpenMP pool on this
        # thread, and a second pool slows every op of the engine's own thread (see Engine._setup).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model = load_model(str(model_dir), device=device, dtype=parse_dtype(config.dtype, device))
            if transform is not None:
                model = transform(model)
        finally:
            torch.set_num_threads(threads)
        tokenizer = load_tokenizer(tokenizer_dir or model_dir)
        return cls(model, tokenizer, config, name=name or Path(model_dir).resolve().name)

    # --- public API -----------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def chat_prompt(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Token ids of ``messages`` (and the ``tools`` they may call) rendered with the chat template."""
        text = self.tokenizer.apply_chat_template(list(messages), tools=tools or None, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        # The template writes BOS itself; adding special tokens again would double it.
        return self.encode(text, add_special_tokens=False)

    @property
    def constraints(self) -> ConstraintCompiler:
        """The grammar compiler for this model's vocabulary (created on first use; thread-safe)."""
        with self._constraints_lock:
            if self._constraints is None:
                self._constraints = ConstraintCompiler(self.tokenizer, self.vocab_size, self.eos_ids)
            return self._constraints

    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
               block: bool = False, timeout: float | None = None) -> RequestHandle:
        """Queue a request. Raises :class:`InvalidParam` (bad params / too long / a constraint that
        does not compile) and, when the queue is full, :class:`QueueFull` — or with ``block=True``
        waits for room."""
        params = params or SamplingParams()
        params.validate()
        grammar = self.constraints.compile(params.constraint) if params.constraint is not None else None
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise InvalidParam("prompt", "the prompt is empty")
        if any(t < 0 or t >= self.vocab_size for t in ids):
            raise InvalidParam("prompt", f"token ids must be in [0, {self.vocab_size})")
        if any(t >= self.vocab_size for t in params.logit_bias):
            raise InvalidParam("logit_bias", f"logit_bias token ids must be in [0, {self.vocab_size})")
        need = len(ids) + (0 if params.max_tokens == 0 else 1)
        if need > self.max_len:
            raise InvalidParam("prompt", f"the prompt has {len(ids)} tokens but the context is "
                               f"{self.max_len} tokens (prompt + at least one generated token must fit)")
        handle = RequestHandle(self, f"req-{next(self._ids)}", ids, params)
        handle.grammar = grammar
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not self._closed and len(self._waiting) >= self.config.queue_size + len(self._free_slots):
                if not block:
                    raise QueueFull(f"the queue is full ({self.config.queue_size} requests waiting)")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise QueueFull("timed out waiting for room in the queue")
                self._cv.wait(left)
            if self._closed:
                raise EngineClosed("the engine is closed")
            self._waiting.append(handle)
            self.stats.prompt_tokens_total += len(ids)
            self._cv.notify_all()
        return handle

    def generate(self, prompts: Sequence[str | Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[Completion]:
        """Generate for many prompts at once (they are batched); blocks until all are done."""
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        handles = [self.submit(p, sp, block=True) for p, sp in zip(prompts, plist)]
        return [h.result() for h in handles]

    def num_running(self) -> int:
        return len(self._running) + len(self._prefilling)

    def num_waiting(self) -> int:
        return len(self._waiting)

    def free_slots(self) -> int:
        return len(self._free_slots)

    def is_alive(self) -> bool:
        """The worker thread runs (False once closed): the server's readiness probe asks this."""
        return self._thread.is_alive() and not self._closed

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=10)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- worker thread --------------------------------------------------------------------------
    def _cancel(self, request_id: str) -> None:
        with self._cv:
            self._cancelled.add(request_id)
            self._cv.notify_all()

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._closed or self._waiting or self._running or self._prefilling
                               or self._cancelled):
                        self._cv.wait()
                    if self._closed:
                        break
                    admitted = self._take_admissions()
                    cancelled, self._cancelled = self._cancelled, set()
                try:
                    self._apply_cancels(cancelled)
                    for seq in admitted:
                        self._start(seq)
                    self._prefill_step()
                    if self._running:
                        self._decode_step()
                except Exception as e:  # never let one bad step kill the server: fail what ran
                    log.exception("engine step failed")
                    for seq in self._running + self._prefilling:
                        self._finish(seq, "error", error=f"{type(e).__name__}: {e}")
        for seq in self._running + self._prefilling:
            self._finish(seq, "cancelled")
        for handle in self._waiting:
            handle._push(StreamEvent("", [], finish_reason="cancelled"))

    def _take_admissions(self) -> list[_Seq]:
        """Under the lock: move waiting requests into free slots."""
        out = []
        while self._waiting and self._free_slots:
            handle = self._waiting.popleft()
            if handle.id in self._cancelled:
                self._cancelled.discard(handle.id)
                handle._push(StreamEvent("", [], finish_reason="cancelled"))
                self.stats.requests_total["cancelled"] += 1
                continue
            p = handle.params
            room = self.max_len - len(handle.prompt_ids)
            max_new = room if p.max_tokens is None else min(p.max_tokens, room)
            # A constrained request always ends at EOS: the grammar allows it only where it is complete.
            constrained = handle.grammar is not None
            stop_ids = set(p.stop_token_ids) | (set() if p.ignore_eos and not constrained else self.eos_ids)
            matcher = self.constraints.matcher(handle.grammar, stop_ids) if constrained else None
            out.append(_Seq(handle, self._free_slots.pop(), make_generator(p.seed, self.device),
                            IncrementalDecoder(self.tokenizer, handle.prompt_ids), StopMatcher(p.stop),
                            stop_ids, max_new, matcher=matcher))
        if out:
            self._cv.notify_all()  # submitters blocked on a full queue may proceed
        return out

    def _apply_cancels(self, ids: set[str]) -> None:
        if not ids:
            return
        for seq in [s for s in self._running + self._prefilling if s.handle.id in ids]:
            self._finish(seq, "cancelled")
        with self._cv:  # still waiting: drop from the queue
            keep = collections.deque(h for h in self._waiting if h.id not in ids)
            for h in self._waiting:
                if h.id in ids:
                    h._push(StreamEvent("", [], finish_reason="cancelled"))
                    self.stats.requests_total["cancelled"] += 1
            self._waiting = keep

    def _start(self, seq: _Seq) -> None:
        self.penalties.reset(seq.slot, seq.prompt, seq.params)
        self._prefilling.append(seq)

    def _prefill_step(self) -> None:
        """Prefill up to ``prefill_chunk`` prompt tokens (FIFO), so decode is never starved for long.

        Fresh prompts that fit the budget whole are prefilled together in ONE forward, right-padded
        to the longest: attention is causal, so real tokens never see the padding, and the pad
        latents written past a prompt's end are overwritten by its own decode steps before any read.
        A burst of 16 short requests then costs one forward instead of 16 (time to first token).
        """
        budget = self.config.prefill_chunk
        group: list[_Seq] = []
        for seq in self._prefilling:
            longest = max([len(s.prompt) for s in group] + [len(seq.prompt)])
            if seq.pos == 0 and longest * (len(group) + 1) <= budget:
                group.append(seq)
        if len(group) > 1 and getattr(self.model, "padded_prefill", True):
            self._prefill_group(group)
            return
        for seq in list(self._prefilling):
            if budget <= 0:
                break
            n = min(len(seq.prompt) - seq.pos, budget)
            chunk = seq.prompt[seq.pos:seq.pos + n]
            ids = torch.tensor([chunk], device=self.device)
            out = self.model.forward_cached(ids, self.cache, torch.tensor([seq.slot], device=self.device),
                                            torch.tensor([seq.pos], device=self.device))
            budget -= n
            self._after_prefill(seq, out.logits[0], out.hidden[0] if self.speculative else None, n)

    def _prefill_group(self, group: list[_Seq]) -> None:
        T = max(len(s.prompt) for s in group)
        pad = self.eos_ids and min(self.eos_ids) or 0
        ids = torch.tensor([s.prompt + [pad] * (T - len(s.prompt)) for s in group], device=self.device)
        slots = torch.tensor([s.slot for s in group], device=self.device)
        out = self.model.forward_cached(ids, self.cache, slots, torch.zeros_like(slots))
        for i, seq in enumerate(group):
            n = len(seq.prompt)
            self._after_prefill(seq, out.logits[i, :n], out.hidden[i, :n] if self.speculative else None, n)

    def _after_prefill(self, seq: _Seq, logits: torch.Tensor, hidden: torch.Tensor | None, n: int) -> None:
        """Bookkeeping after ``n`` more prompt tokens of ``seq`` went through the model."""
        if seq.params.prompt_logprobs is not None:
            self._collect_prompt_logprobs(seq, logits, seq.pos)
        if hidden is not None:
            seq.hidden.append(hidden)
        seq.pos += n
        if seq.pos == len(seq.prompt):
            self._prefilling.remove(seq)
            self._first_token(seq, logits[-1:])

    def _collect_prompt_logprobs(self, seq: _Seq, logits: torch.Tensor, start: int) -> None:
        """logits[i] predicts prompt token start+i+1; the first prompt token has no logprob."""
        if start == 0:
            seq.prompt_lp.append(None)
        targets = seq.prompt[start + 1:start + 1 + logits.shape[0]]
        if not targets:
            return
        lp = logits[:len(targets)].float().log_softmax(-1)
        k = seq.params.prompt_logprobs
        seq.prompt_lp += top_logprobs(lp, torch.tensor(targets, device=lp.device), [k] * len(targets))

    def _first_token(self, seq: _Seq, logits: torch.Tensor) -> None:
        seq.handle.prompt_logprobs = seq.prompt_lp if seq.params.prompt_logprobs is not None else None
        if seq.max_new == 0:  # scoring only (echo + logprobs with max_tokens=0)
            self._finish(seq, "length")
            return
        slots = torch.tensor([seq.slot], device=self.device)
        res, _ = sample(self._constrain(logits, [seq]), [seq.params], [seq.generator], slots, self.penalties)
        self.penalties.update(slots, res.tokens)
        now = time.perf_counter()
        seq.handle.first_token_time = now
        self.stats.observe_ttft(now - seq.handle.submitted)
        if self._emit(seq, int(res.tokens[0]), res.logprobs[0]):
            return
        self._running.append(seq)
        if self.speculative:
            hidden = torch.cat(seq.hidden)[None]  # [1, n, d]
            seq.hidden = []
            nxt = torch.tensor([seq.prompt[1:] + [seq.next_token]], device=self.device)
            out = self.model.mtp_forward_cached(hidden, nxt, self.cache, slots,
                                                torch.tensor([0], device=self.device))
            seq.draft = int(out.logits[0, -1].argmax())

    def _emit(self, seq: _Seq, token: int, lp: TokenLogprob | None) -> bool:
        """Account one sampled token: stream its text, decide whether the request is done."""
        self.stats.add_tokens(1)
        seq.n_out += 1
        if seq.matcher is not None and not seq.matcher.accept(token):  # the mask makes this unreachable
            self._finish(seq, "error", error=f"token {token} violates the request's grammar")
            return True
        if token in seq.stop_ids:
            self._push(seq, "", [token], lp)  # the stop token counts but has no text
            self._finish(seq, "stop")
            return True
        text, stopped = seq.stopper.feed(seq.decoder.push(token))
        if stopped:
            seq.stop_hit = True
            self._push(seq, text, [token], lp)
            self._finish(seq, "stop")
            return True
        self._push(seq, text, [token], lp)
        if seq.matcher is not None and seq.matcher.terminated:  # grammar complete, no stop token to wait for
            self._finish(seq, "stop")
            return True
        if seq.n_out >= seq.max_new:
            self._finish(seq, "length")
            return True
        seq.next_token = token
        return False

    def _push(self, seq: _Seq, text: str, ids: list[int], lp: TokenLogprob | None) -> None:
        want = seq.params.logprobs is not None
        seq.handle._push(StreamEvent(text, ids, [lp] if want else []))

    def _finish(self, seq: _Seq, reason: str, error: str | None = None) -> None:
        """Flush held-back text, send the final event and free the slot immediately."""
        tail = ""
        if not seq.stop_hit:  # release text held back for half a character or a partial stop string
            tail, hit = seq.stopper.feed(seq.decoder.flush())
            if hit:
                reason = "stop"
            else:
                tail += seq.stopper.flush()
        seq.handle.finished_time = time.perf_counter()
        seq.handle._push(StreamEvent(tail, [], [], finish_reason=reason, error=error))
        for group in (self._running, self._prefilling):
            if seq in group:
                group.remove(seq)
        self._free_slots.append(seq.slot)
        self.stats.requests_total[reason] += 1
        with self._cv:
            self._cv.notify_all()

    def _decode_step(self) -> None:
        if self.speculative:
            self._speculative_step()
            return
        seqs = list(self._running)
        ids = torch.tensor([[s.next_token] for s in seqs], device=self.device)
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        # Positions are known here, on the host: decode_step needs no validation or device reads.
        pos = torch.tensor([[s.pos] for s in seqs], device=self.device)
        out = self._decode(ids, self.cache, slots, pos, max(s.pos for s in seqs) + 1)
        self.stats.decode_steps_total += 1
        for s in seqs:
            s.pos += 1
        res, _ = sample(self._constrain(out.logits[:, -1], seqs), [s.params for s in seqs],
                        [s.generator for s in seqs], slots, self.penalties)
        self.penalties.update(slots, res.tokens)
        for s, tok, lp in zip(seqs, res.tokens.tolist(), res.logprobs):
            self._emit(s, tok, lp)

    def _constrain(self, logits: torch.Tensor, seqs: list[_Seq],
                   after: list[int] | None = None) -> torch.Tensor:
        """Mask ``logits[i]`` (next-token logits of ``seqs[i]``) with each constrained sequence's grammar;
        unconstrained rows pass through untouched, an all-unconstrained batch costs nothing.

        With ``after``, row i is masked for the state after ``after[i]`` (an accepted speculative draft):
        the matcher takes the token, fills the mask and rolls back, so ``_emit`` accepts it as usual.
        On CUDA the forward's kernels are still running while the masks are filled here on the CPU.
        """
        rows = [i for i, s in enumerate(seqs) if s.matcher is not None]
        if not rows:
            return logits
        bitmask = self.constraints.new_bitmask(len(seqs))  # row i for seqs[i]; free rows stay unread
        for i in rows:
            m = seqs[i].matcher
            if after is None:
                m.fill(bitmask, i)
            elif m.accept(after[i]):
                if not m.terminated:  # a terminated matcher has no next mask; its bonus token is dropped
                    m.fill(bitmask, i)
                m.rollback(1)
        return apply_bitmask(logits, rows, bitmask)

    def _speculative_step(self) -> None:
        """Feed [next_token, draft] for every row; keep the draft where exact verification accepts it.

        Rows: next_token x at position p, draft d guessing position p+1. One main forward gives the
        distributions after x (verifies d) and after d (a free extra token when d was accepted).
        A rejected d leaves a stale latent at p+1; the next step overwrites it before any read.
        """
        seqs = list(self._running)
        dev = self.device
        ids = torch.tensor([[s.next_token, s.draft] for s in seqs], device=dev)
        slots = torch.tensor([s.slot for s in seqs], device=dev)
        pos = torch.tensor([[s.pos, s.pos + 1] for s in seqs], device=dev)
        length = max(s.pos for s in seqs) + 2
        out = self._decode(ids, self.cache, slots, pos, length)
        self.stats.decode_steps_total += 1
        params, gens = [s.params for s in seqs], [s.generator for s in seqs]
        draft = ids[:, 1]
        # Constrained rows verify the draft against the grammar mask too: a draft the grammar forbids
        # has probability 0 under the masked distribution and is always rejected (still exact).
        first, accepted = sample(self._constrain(out.logits[:, 0], seqs), params, gens, slots, self.penalties,
                                 draft=draft)
        self.penalties.update(slots, first.tokens)
        acc = accepted.tolist()
        # Bonus tokens only for accepted rows, sampled after the penalty update for the draft.
        rows = [i for i, a in enumerate(acc) if a]
        bonus = {}
        if rows:
            r = torch.tensor(rows, device=dev)
            bonus_logits = self._constrain(out.logits[r, 1], [seqs[i] for i in rows],
                                           after=[int(draft[i]) for i in rows])
            res, _ = sample(bonus_logits, [params[i] for i in rows], [gens[i] for i in rows], slots[r],
                            self.penalties)
            bonus = {i: (t, lp) for i, t, lp in zip(rows, res.tokens.tolist(), res.logprobs)}
        self.stats.draft_tokens_total += len(seqs)
        self.stats.accepted_tokens_total += len(rows)
        # Emit and build the MTP inputs for the next draft: positions p (and p+1 when accepted).
        mtp_next, keep = [], []
        for i, s in enumerate(seqs):
            s.pos += 1
            tok0 = int(first.tokens[i])
            if self._emit(s, tok0, first.logprobs[i]):
                continue
            if i in bonus:
                s.pos += 1
                self.penalties.update(slots[i:i + 1], torch.tensor([bonus[i][0]], device=dev))
                if self._emit(s, bonus[i][0], bonus[i][1]):
                    continue
                mtp_next.append([tok0, bonus[i][0]])
            else:
                mtp_next.append([tok0, tok0])  # second column unused for rejected rows
            keep.append(i)
        if not keep:
            return
        k = torch.tensor(keep, device=dev)
        nxt = torch.tensor(mtp_next, device=dev)
        mtp = self._mtp_decode(out.hidden[k], nxt, self.cache, slots[k], pos[k], length)
        for j, i in enumerate(keep):
            seqs[i].draft = int(mtp.logits[j, 1 if i in bonus else 0].argmax())
