"""Batch-size-1 greedy decode speed and KV-cache size: seekforge's engine vs ``transformers``.

All contenders run the SAME weights (a ``small-moe`` directory with random weights, loaded by
transformers with ``AutoModelForCausalLM``) on the same prompt, greedy, a fixed number of new
tokens, float32 on this CPU. The cache size of transformers is measured from the tensors its cache
object really holds after ``generate``; ours is the preallocated MLA latent cache.

    .venv/bin/python bench/decode_speed.py [--new-tokens 128] [--repeats 5] [--threads N] [--timer cpu]
                                           [--no-compile] [--hf-compile]

Every contender lives in its OWN process and the rounds are interleaved (A, B, C, A, B, C, ...):
two libraries in one process would share OpenMP, and two OpenMP thread pools in one process slow
each other down (docs/LOG.md), and timing one contender after the other would hand a quiet phase
of a shared machine to one of them. ``--timer cpu`` times each process's CPU time instead of wall
time: with ``--threads 1`` it is insensitive to other jobs on a shared machine.

Contenders: transformers ``generate`` (its default dynamic cache), optionally transformers with its
static cache + ``torch.compile`` (``--hf-compile``: its own fast path), the seekforge engine eager
and with ``compile=True`` (compile time is reported separately), and MTP speculation (only useful
with trained MTP weights: with random ones every draft is rejected).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, small_moe_dir


def tensors_in(obj, seen=None) -> list:
    """Every tensor reachable from a cache object (HF caches change shape between versions)."""
    import torch

    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    out: list = []
    if isinstance(obj, (list, tuple)):
        for x in obj:
            out += tensors_in(x, seen)
    elif isinstance(obj, dict):
        for x in obj.values():
            out += tensors_in(x, seen)
    elif hasattr(obj, "__dict__"):
        for x in vars(obj).values():
            out += tensors_in(x, seen)
    return out


def _hf_runner(model_dir: Path, prompt: list[int], n: int, compiled: bool, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # it lists the MTP layer's weights as "unexpected": expected
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).eval()
    kw = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    if compiled:  # transformers' documented fast path: static cache, compiled forward
        kw["cache_implementation"] = "static"
        hf.forward = torch.compile(hf.forward, fullgraph=False)
    ids = torch.tensor([prompt])

    def run() -> list[int]:
        with torch.inference_mode():
            return hf.generate(ids, **kw)[0, len(prompt):].tolist()

    def cache_bytes() -> float:
        with torch.inference_mode():
            out = hf.generate(ids, **kw, return_dict_in_generate=True)
        total_len = out.sequences.shape[1] - 1  # the last token is never fed back
        return sum(t.numel() * t.element_size() for t in tensors_in(out.past_key_values)) / total_len

    return run, cache_bytes, None


def _engine_runner(model_dir: Path, prompt: list[int], n: int, compiled: bool, speculative: bool,
                   dtype: str):
    from seekforge.infer import Engine, EngineConfig, SamplingParams

    cfg = EngineConfig(max_batch=1, max_len=len(prompt) + n + 8, compile=compiled, speculative=speculative,
                       dtype=dtype)
    engine = Engine.from_pretrained(model_dir, cfg)
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)

    def run() -> list[int]:
        return engine.generate([prompt], params)[0].token_ids

    def cache_bytes() -> float:
        return engine.cache.nbytes() / (engine.cache.num_slots * engine.cache.max_len)

    return run, cache_bytes, engine


def _worker(conn, kind: str, model_dir: Path, prompt: list[int], n: int, threads: int | None,
            timer: str, dtype: str) -> None:
    """One contender in its own process: build, report the build time, then time runs on request."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if kind.startswith("hf"):
        run, cache_bytes, engine = _hf_runner(model_dir, prompt, n, kind == "hf-compile", dtype)
    else:
        run, cache_bytes, engine = _engine_runner(model_dir, prompt, n, compiled=kind.endswith("-compile"),
                                                  speculative=kind.startswith("spec"), dtype=dtype)
    tokens = run()  # warm-up (for compiled contenders: the first run triggers or checks compilation)
    conn.send(dict(build_s=time.perf_counter() - t0, threads=torch.get_num_threads()))
    clock = time.process_time if timer == "cpu" else time.perf_counter
    while conn.recv() == "run":
        t = clock()
        tokens = run()
        conn.send(clock() - t)
    acc = engine.stats.acceptance_rate if engine is not None else None
    conn.send(dict(tokens=tokens, cache_bytes=cache_bytes(), acceptance=acc))
    if engine is not None:
        engine.close()


LABELS = {
    "hf": "transformers `generate`",
    "hf-compile": "transformers, static cache + torch.compile",
    "ours": "seekforge engine",
    "ours-compile": "seekforge engine, compile=True",
    "spec": "seekforge + MTP speculation",
    "spec-compile": "seekforge + MTP speculation, compile=True",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small-moe")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per contender (default: torch's)")
    ap.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                    help="wall clock, or process CPU time (use with --threads 1 on a shared machine)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="weights and compute dtype of every contender")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled seekforge contender")
    ap.add_argument("--hf-compile", action="store_true",
                    help="add transformers with static cache + torch.compile (several minutes of compiling)")
    ap.add_argument("--model", type=Path, default=None,
                    help="a trained model directory (e.g. demo_out/run/best) instead of random weights; "
                    "MTP speculation only pays off with a trained MTP module")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    model_dir = args.model or small_moe_dir(args.workdir, args.preset)
    prompt = list(range(10, 10 + args.prompt_tokens))
    if args.model:  # a trained model gets real text (its tokenizer), like the demo's docstrings
        from seekforge.tokenizer import load_tokenizer

        text = ("Return a new list containing all items from the iterable in ascending order. A custom key "
                "function can be supplied to customize the sort order, and the reverse flag can be set to "
                "request the result in descending order.")
        prompt = load_tokenizer(model_dir)(text)["input_ids"][: args.prompt_tokens]
    kinds = ["hf"] + (["hf-compile"] if args.hf_compile else []) + ["ours"]
    compiled = [] if args.no_compile else ["ours-compile"]
    kinds += compiled + ["spec"] + (["spec-compile"] if compiled else [])

    ctx = mp.get_context("spawn")
    procs, conns, info = {}, {}, {}
    for kind in kinds:  # built one at a time, so no build (compile) competes with another
        parent, child = ctx.Pipe()
        procs[kind] = ctx.Process(target=_worker, args=(child, kind, model_dir, prompt, args.new_tokens,
                                                        args.threads, args.timer, args.dtype))
        procs[kind].start()
        conns[kind] = parent
        info[kind] = parent.recv()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            # Let the previous contender's OpenMP workers stop spinning (libgomp spins ~0.1 s after
            # each parallel region), or they would steal a core from this one.
            time.sleep(0.5)
            conns[kind].send("run")
            times[kind].append(conns[kind].recv())
    final = {}
    for kind in kinds:
        conns[kind].send("stop")
        final[kind] = conns[kind].recv()
        procs[kind].join()

    rate = {k: args.new_tokens / statistics.median(v) for k, v in times.items()}
    threads = info["hf"]["threads"]
    weights = f"weights of {model_dir}" if args.model else f"{args.preset}, random weights"
    print(f"\n{weights}, {args.dtype}, {threads} CPU thread(s) per contender (each in "
          f"its own process), prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, "
          f"bs=1, median of {args.repeats} interleaved runs, {args.timer} time\n")
    print("| contender | decode tokens/s | vs transformers | KV cache bytes/token | start-up s |")
    print("|---|---:|---:|---:|---:|")
    for kind in kinds:
        extra = " (+MTP)" if kind == "spec" else ""
        print(f"| {LABELS[kind]} | {rate[kind]:.1f} | {rate[kind] / rate['hf']:.2f}x | "
              f"{final[kind]['cache_bytes']:,.0f}{extra} | {info[kind]['build_s']:.1f} |")
    ref = final["hf"]["tokens"]
    same = {k: sum(a == b for a, b in zip(final[k]["tokens"], ref)) for k in kinds}
    acc = final["spec"]["acceptance"] or 0
    if not args.model:
        note = " (random MTP weights: expect ~0, so speculation only costs here)"
    else:
        note = ""
    print("\ngreedy tokens identical to transformers: "
          + ", ".join(f"{k} {same[k]}/{len(ref)}" for k in kinds if k != "hf")
          + f"; MTP acceptance {acc * 100:.0f}%{note}."
          "\nstart-up = load + first generate (includes compiling for compiled contenders; torch caches "
          "compiled kernels on disk, so a second start is faster).")


if __name__ == "__main__":
    main()
