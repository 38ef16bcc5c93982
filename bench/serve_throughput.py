"""Serving throughput: 16 concurrent streaming clients vs one client at a time, same server.

Starts ``seekforge serve`` in its own process (uvicorn on 127.0.0.1, a free port; clients in this
process, as in real use, so their JSON parsing never competes with the engine for the GIL) over a
``small-moe`` directory with random weights, then measures streamed ``/v1/completions`` requests
(``logprobs: 0`` makes every generated token its own SSE chunk, so client timings are per token):

* sequential: ``--requests-seq`` requests one after another (what a server without batching does);
* concurrent: ``--clients`` threads, each streaming one request at the same moment.

Reports aggregate generated tokens/s and client-side time to first token (p50/p95).

    .venv/bin/python bench/serve_throughput.py [--clients 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, small_moe_dir

PROMPTS = ["The history of language models begins", "我们用数据训练一个语言模型，", "Once upon a time",
           "春眠不觉晓，", "def fibonacci(n):", "The weather today is", "人工智能的未来",
           "In a distant galaxy"]


@contextlib.contextmanager
def serve(model_dir: Path, max_batch: int, threads: int | None, compile_: bool = False) -> Iterator[str]:
    """``seekforge serve`` in a subprocess; yields its URL and stops it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "seekforge", "serve", str(model_dir), "--port", str(port), "--max-batch",
           str(max_batch), "--max-len", "256", "--queue-size", str(4 * max_batch),
           "--model-name", "tiny-chat"] + (["--compile"] if compile_ else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3000 if compile_ else 600):  # bounded: 300 s with compiling, else 60 s
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def one_request(url: str, i: int, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, total time, tokens) of one streamed completion."""
    body = {"model": "tiny-chat", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
            "stream": True,
            "temperature": 0.8, "seed": i, "logprobs": 0, "ignore_eos": True}
    t0 = time.perf_counter()
    first, n = None, 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for c in chunk["choices"]:
                k = len((c.get("logprobs") or {}).get("tokens", []))
                if k and first is None:
                    first = time.perf_counter() - t0
                n += k
    return first or 0.0, time.perf_counter() - t0, n


def run(url: str, clients: int, max_tokens: int, offset: int) -> tuple[float, list[float]]:
    results: list[tuple[float, float, int]] = [None] * clients  # type: ignore[list-item]

    def worker(i: int) -> None:
        results[i] = one_request(url, offset + i, max_tokens)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(r[2] for r in results) / wall, [r[0] for r in results]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small-moe")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests-seq", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="server torch threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="serve with --compile (compiled decode step)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    model_dir = small_moe_dir(args.workdir, args.preset)
    with serve(model_dir, args.clients, args.threads, args.compile) as url:
        one_request(url, 0, 4)  # warm-up
        seq_tokens, seq_time, seq_ttft = 0, 0.0, []
        for i in range(args.requests_seq):
            ttft, total, n = one_request(url, i, args.max_tokens)
            seq_tokens, seq_time = seq_tokens + n, seq_time + total
            seq_ttft.append(ttft)
        seq_tps = seq_tokens / seq_time
        steps0 = metric(url, "seekforge:decode_steps_total")
        conc_tps, conc_ttft = run(url, args.clients, args.max_tokens, offset=100)
        steps = metric(url, "seekforge:decode_steps_total") - steps0
    print(f"\n{args.preset}, random weights, fp32, server threads={args.threads or 'default'}, "
          f"{'compiled' if args.compile else 'eager'} decode, streamed "
          f"/v1/completions, {args.max_tokens} tokens per request, max_batch={args.clients}\n")
    print("| mode | clients | aggregate tokens/s | speed-up | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| one client at a time | 1 | {seq_tps:.1f} | 1.00x | {statistics.median(seq_ttft):.3f} | "
          f"{pct(seq_ttft, 0.95):.3f} |")
    print(f"| concurrent (continuous batching) | {args.clients} | {conc_tps:.1f} | "
          f"{conc_tps / seq_tps:.2f}x | "
          f"{statistics.median(conc_ttft):.3f} | {pct(conc_ttft, 0.95):.3f} |")
    print(f"\n(concurrent run: {args.clients * args.max_tokens} tokens in {steps:.0f} batched decode steps)")


if __name__ == "__main__":
    main()
