"""Model-client throughput: requests/s and tokens/s against a local ``seekforge serve``, concurrency 1 vs 16.

Starts ``seekforge serve`` in its own process over a random-init ``tiny`` model (built once under
``--workdir``) and sends the same ``--requests`` chat requests (``--max-tokens`` each, ``ignore_eos``
so every answer has that many tokens) three ways, at each concurrency:

* ``llm_client``: :class:`seekforge.llm_client.LLMClient` with an empty cache (every request sent);
* ``openai``: the peer, the bare ``openai`` client in a thread pool of the same size (no cache, no
  budget, no accounting) - the difference is what the client's bookkeeping costs;
* ``llm_client (cached)``: the same requests again on the warm cache (no request sent).

The three alternate ``--repeats`` times per concurrency and the fastest of each is reported (the
machine may be shared).

    .venv/bin/python bench/augment.py [--requests 32] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, small_moe_dir
from serve_throughput import serve

from seekforge.llm_client import EndpointConfig, LLMClient

PROMPTS = ["Write a short poem about the sea.", "用一句话介绍长城。", "Explain what a tokenizer does.",
           "给我三个学习编程的建议。", "What is the capital of France?", "把这句话翻译成英文：今天天气很好。"]


def requests(n: int, max_tokens: int) -> list[tuple[list[dict[str, str]], dict]]:
    return [([{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}],
             {"max_tokens": max_tokens, "temperature": 0.8, "seed": i, "extra_body": {"ignore_eos": True}})
            for i in range(n)]


def with_client(url: str, reqs, concurrency: int, cache: Path) -> tuple[float, int, dict]:
    cfg = EndpointConfig(url + "/v1", model="tiny-chat", concurrency=concurrency, cache=str(cache))
    with LLMClient(cfg) as client:
        client.preflight()
        t0 = time.perf_counter()
        answers = client.chat_many(reqs)
        wall = time.perf_counter() - t0
        assert all(a is not None for a in answers), client.report()
        return wall, sum(a.completion_tokens for a in answers), client.report()


def with_openai(url: str, reqs, concurrency: int) -> tuple[float, int]:
    from openai import OpenAI

    api = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)

    def one(item) -> int:
        r = api.chat.completions.create(model="tiny-chat", messages=item[0], **item[1])
        return r.usage.completion_tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        tokens = sum(pool.map(one, reqs))
    return time.perf_counter() - t0, tokens


def _keep(best: dict, name: str, sent: int, wall: float, tokens: int) -> None:
    if name not in best or wall < best[name][1]:
        best[name] = (sent, wall, tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    model_dir = small_moe_dir(args.workdir, preset="tiny")
    reqs = requests(args.requests, args.max_tokens)
    rows = []
    with serve(model_dir, max_batch=max(args.concurrency), threads=None) as url, \
            tempfile.TemporaryDirectory() as tmp:
        # warm-up at the largest batch: the engine's first steps at a new batch size pay for allocation
        warm = max(args.concurrency)
        with_openai(url, requests(warm, args.max_tokens)[::-1], warm)
        for c in args.concurrency:
            best: dict[str, tuple[int, float, int]] = {}
            for r in range(args.repeats):  # interleaved, best of --repeats: the machine is shared
                cache = Path(tmp) / f"c{c}-{r}.sqlite"
                wall, tokens, rep = with_client(url, reqs, c, cache)
                _keep(best, "llm_client", rep["requests"], wall, tokens)
                wall, tokens = with_openai(url, reqs, c)
                _keep(best, "openai (peer)", len(reqs), wall, tokens)
                wall, tokens, rep = with_client(url, reqs, c, cache)
                assert rep["requests"] == 0 and rep["cache_hits"] == len(reqs)
                _keep(best, "llm_client (cached)", 0, wall, tokens)
            rows += [(name, c, *numbers) for name, numbers in best.items()]
    print(f"\n{args.requests} chat requests x {args.max_tokens} tokens, seekforge serve (tiny, CPU, "
          f"--max-batch {max(args.concurrency)})\n")
    print("| client | concurrency | sent | wall s | requests/s | tokens/s |\n|---|---|---|---|---|---|")
    for name, c, sent, wall, tokens in rows:
        print(f"| {name} | {c} | {sent} | {wall:.2f} | {args.requests / wall:.1f} | {tokens / wall:.0f} |")
    print(f"\nuptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
