"""bs=1 greedy decode speed of an exported GGUF in llama.cpp vs the seekforge engine on the same model.

One ``small-moe`` directory (random weights, 8192-token tokenizer) is exported with
``seekforge export --format gguf`` to each ``--outtypes`` file; every contender then generates
``--new-tokens`` tokens greedily after the same prompt ids, bs=1, float32 compute on this CPU.

    .venv/bin/python bench/gguf_decode.py [--outtypes f32,q8_0] [--new-tokens 128] [--repeats 5] [--threads 2]
                                   [--compile] [--model DIR]

(Not named gguf.py: the script's directory comes first on sys.path and would shadow the gguf package.)
Each contender runs in its OWN process (two OpenMP/ggml thread pools in one process slow each other
down) and the rounds are interleaved (A, B, C, A, B, C, ...) so a noisy phase of a shared machine does
not land on one contender only. Reported: the median time of a run (prefill + decode), as tokens/s.
:func:`llama_cpp_decode` is the llama.cpp contender on its own, for other benchmarks to reuse.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, small_moe_dir


def llama_cpp_decode(gguf_path: str | Path, prompt: list[int], new_tokens: int,
                     threads: int | None = None) -> Callable[[], list[int]]:
    """A function that greedily decodes ``new_tokens`` after ``prompt`` in llama.cpp (fresh cache each
    call) and returns the new ids. Build it once, call it once to warm up, then time the calls."""
    from llama_cpp import Llama

    llm = Llama(str(gguf_path), n_ctx=len(prompt) + new_tokens + 8, n_batch=max(len(prompt), 8),
                n_threads=threads, n_threads_batch=threads, verbose=False)

    def run() -> list[int]:
        llm.reset()
        out: list[int] = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            out.append(int(token))
            if len(out) == new_tokens:
                break
        return out

    return run


def _engine_decode(model_dir: Path, prompt: list[int], new_tokens: int,
                   compiled: bool) -> Callable[[], list[int]]:
    from seekforge.infer import Engine, EngineConfig, SamplingParams

    engine = Engine.from_pretrained(model_dir, EngineConfig(max_batch=1, max_len=len(prompt) + new_tokens + 8,
                                                            compile=compiled, dtype="float32"))
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    return lambda: engine.generate([prompt], params)[0].token_ids


def _worker(conn, kind: str, target: str, prompt: list[int], n: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if kind.startswith("llama.cpp"):
        run = llama_cpp_decode(target, prompt, n, threads)
    else:
        run = _engine_decode(Path(target), prompt, n, compiled=kind.endswith("compile"))
    tokens = run()  # warm-up
    conn.send(time.perf_counter() - t0)
    while conn.recv() == "run":
        t = time.perf_counter()
        tokens = run()
        conn.send(time.perf_counter() - t)
    conn.send(tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small-moe")
    ap.add_argument("--model", type=Path, default=None, help="a model directory instead of random small-moe")
    ap.add_argument("--outtypes", default="f32,q8_0", help="comma-separated GGUF outtypes to run")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads of every contender")
    ap.add_argument("--compile", action="store_true", help="add the engine with compile=True")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()

    from seekforge.export.gguf import export_gguf

    model_dir = args.model or small_moe_dir(args.workdir, args.preset)
    prompt = list(range(10, 10 + args.prompt_tokens))
    contenders: dict[str, str] = {"seekforge engine": str(model_dir)}
    if args.compile:
        contenders["seekforge engine, compile"] = str(model_dir)
    sizes = {}
    for outtype in args.outtypes.split(","):
        path = export_gguf(model_dir, args.workdir / f"{model_dir.name}-{outtype}.gguf", outtype)
        contenders[f"llama.cpp {outtype}"] = str(path)
        sizes[f"llama.cpp {outtype}"] = path.stat().st_size

    ctx = mp.get_context("spawn")
    procs, conns, build = {}, {}, {}
    for kind, target in contenders.items():  # built one at a time
        parent, child = ctx.Pipe()
        procs[kind] = ctx.Process(target=_worker, args=(child, kind, target, prompt, args.new_tokens,
                                                        args.threads))
        procs[kind].start()
        conns[kind], build[kind] = parent, parent.recv()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for kind in contenders:
            time.sleep(0.5)  # let the previous contender's worker threads go idle
            conns[kind].send("run")
            times[kind].append(conns[kind].recv())
    tokens = {}
    for kind in contenders:
        conns[kind].send("stop")
        tokens[kind] = conns[kind].recv()
        procs[kind].join()

    ref = tokens["seekforge engine"]
    base = args.new_tokens / statistics.median(times["seekforge engine"])
    print(f"\n{model_dir.name}, {args.threads} thread(s) per contender (own process), prompt "
          f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, bs=1, median of "
          f"{args.repeats} interleaved runs\n")
    print("| contender | tok/s | vs engine | start s | same greedy tokens | file |")
    print("|---|---|---|---|---|---|")
    for kind in contenders:
        rate = args.new_tokens / statistics.median(times[kind])
        same = next((i for i, (a, b) in enumerate(zip(ref, tokens[kind])) if a != b), len(ref))
        size = f"{sizes[kind] / 2**20:.1f} MiB" if kind in sizes else ""
        print(f"| {kind} | {rate:.1f} | {rate / base:.2f}x | {build[kind]:.1f} | {same}/{len(ref)} "
              f"| {size} |")


if __name__ == "__main__":
    main()
