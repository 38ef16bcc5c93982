"""Structured-output cost: JSON-Schema-constrained vs unconstrained decoding in the seekforge engine,
and the per-step mask time of the two CPU grammar libraries (xgrammar, llguidance) on our tokenizer.

    .venv/bin/python bench/structured.py [--new-tokens 64] [--repeats 3] [--batches 1 16] [--compile]
                                         [--threads N] [--timer wall|cpu]

Engine table: the ``small-moe`` model (random weights, fp32) and its real 8192-token tokenizer, the same
prompt for every row, sampling at temperature 1 with a seed per row. The constrained rows follow a
schema (an array of objects with enum, integer, boolean and string fields, ``minItems`` 50) that
cannot be complete within ``--new-tokens``, so both modes decode exactly the same number of tokens
per row; tokens/s = generated tokens / time of the whole batch. Modes alternate round by round
(A, B, A, B, ...) so a busy phase of a shared machine hits both; the median round is reported.
``--timer cpu`` times the process's CPU time instead of wall time (all its threads: the engine's
torch work and the mask computation; also each mask call of the library table): with ``--threads 1``
it is insensitive to other jobs on a shared machine.

Library table: one random walk per seed through the same schema (at each step: fill the mask, pick a
random allowed token, advance the matcher); mean / median / p99 of the mask call. llguidance is
optional (``pip install llguidance``); its row is skipped when it is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, small_moe_dir

SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "minItems": 50, "items": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "北京", "New York"]}, "days": {"type": "integer"},
                       "rain": {"type": "boolean"}, "note": {"type": "string", "maxLength": 12}},
        "required": ["city", "days", "rain", "note"]}}},
    "required": ["items"],
}


CLOCK = time.perf_counter


def engine_round(engine, batch: int, n: int, constrained: bool, seed: int) -> tuple[float, int, int]:
    """(seconds, generated tokens, rows that finished early) for one batch."""
    from seekforge.infer import Constraint, SamplingParams

    c = Constraint.json_schema(SCHEMA) if constrained else None
    params = [SamplingParams(max_tokens=n, temperature=1.0, seed=seed * 1000 + i, ignore_eos=not constrained,
                             constraint=c) for i in range(batch)]
    t0 = CLOCK()
    res = engine.generate(["Give me the weather as JSON:"] * batch, params)
    dt = CLOCK() - t0
    return dt, sum(len(r.token_ids) for r in res), sum(r.finish_reason != "length" for r in res)


def engine_table(model_dir: Path, batches: list[int], n: int, repeats: int, compile_: bool,
                 threads: int | None, timer: str) -> None:
    from seekforge.infer import Engine, EngineConfig

    cfg = EngineConfig(max_batch=max(batches), max_len=512, compile=compile_, threads=threads)
    with Engine.from_pretrained(model_dir, cfg) as engine:
        engine.generate(["warm up"], [None])  # first-call costs (allocations, grammar compiler set-up)
        engine_round(engine, 1, 4, True, 0)
        print(f"\n## engine: small-moe, fp32, {'compiled' if compile_ else 'eager'} decode, "
              f"{engine._threads} thread(s), {timer} time, {n} new tokens per row, "
              f"median of {repeats} rounds")
        print("| batch | unconstrained tok/s | JSON-schema tok/s | ratio | rows ended early |")
        print("|---|---|---|---|---|")
        for b in batches:
            rates: dict[bool, list[float]] = {False: [], True: []}
            early = 0
            for r in range(repeats):
                for mode in (False, True):
                    dt, toks, ended = engine_round(engine, b, n, mode, r)
                    rates[mode].append(toks / dt)
                    early += ended if mode else 0
            free, cons = statistics.median(rates[False]), statistics.median(rates[True])
            print(f"| {b} | {free:.1f} | {cons:.1f} | {cons / free:.2f}x | {early} |")


def walk(fill, accept, done, bitmask, vocab: int, steps: int, seed: int) -> list[float]:
    rng, times = random.Random(seed), []
    for _ in range(steps):
        if done():
            break
        t0 = CLOCK()
        fill(bitmask)
        times.append(CLOCK() - t0)
        words = bitmask[0].tolist()
        allowed = [v for v in range(vocab) if (words[v >> 5] >> (v & 31)) & 1]
        if not accept(rng.choice(allowed)):
            raise RuntimeError("the library rejected a token its own mask allowed")
    return times


def row(name: str, setup: float, times: list[float]) -> str:
    times = sorted(times)
    mean = sum(times) / len(times)
    median, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    return (f"| {name} {version(name)} | {setup * 1e3:.0f} | {len(times)} | {mean * 1e6:.0f} "
            f"| {median * 1e6:.0f} | {p99 * 1e6:.0f} |")


def library_table(tokenizer, vocab: int, steps: int, seeds: int) -> None:
    import xgrammar as xgr

    print(f"\n## mask per step: the same schema, {vocab}-token tokenizer, {seeds} random walks of <= {steps} "
          f"steps, {'cpu' if CLOCK is time.process_time else 'wall'} time")
    print("| library | tokenizer + compile ms | steps | mean us | median us | p99 us |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiled = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False).compile_json_schema(
        json.dumps(SCHEMA), strict_mode=True, max_whitespace_cnt=16)
    setup, times = time.perf_counter() - t0, []
    for s in range(seeds):
        m = xgr.GrammarMatcher(compiled)
        times += walk(lambda b, m=m: m.fill_next_token_bitmask(b, 0), m.accept_token, m.is_terminated,
                      xgr.allocate_token_bitmask(1, vocab), vocab, steps, s)
    print(row("xgrammar", setup, times))
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch as lt
    except ImportError:
        print("| llguidance | not installed (pip install llguidance) | | | | |")
        return
    t0 = time.perf_counter()
    ltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    llguidance.LLMatcher(ltok, grammar)
    setup, times = time.perf_counter() - t0, []
    for s in range(seeds):
        m = llguidance.LLMatcher(ltok, grammar)
        times += walk(lambda b, m=m: lt.fill_next_token_bitmask(m, b, 0), m.consume_token, m.is_stopped,
                      lt.allocate_token_bitmask(1, vocab), vocab, steps, s)
    print(row("llguidance", setup, times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--compile", action="store_true", help="compiled decode step (EngineConfig.compile)")
    ap.add_argument("--walk-steps", type=int, default=200)
    ap.add_argument("--walks", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="engine CPU threads (default: torch's)")
    ap.add_argument("--timer", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.timer == "cpu" else time.perf_counter
    import torch

    from seekforge.tokenizer import load_tokenizer

    model_dir = small_moe_dir(args.workdir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    library_table(load_tokenizer(model_dir), 8192, args.walk_steps, args.walks)
    engine_table(model_dir, args.batches, args.new_tokens, args.repeats, args.compile, args.threads,
                 args.timer)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
