"""Serving reliability under load: 64 streaming clients over a two-version route, a rollback and a hot
swap in the middle, and not one request lost.

Starts ``seekforge serve`` in its own process with two ``tiny`` versions (random weights, seeds 0 and 1,
a real tokenizer) behind ``--route chat=v1:50,v2:50``, then runs ``--clients`` asyncio clients of the
official ``openai`` package, each streaming chat completions (``ignore_eos``, so every answer has
exactly ``max_tokens`` tokens) as user ``user-<i>`` for ``--seconds``. During the load:

* at 25 % of the time: ``POST /admin/routes/chat/rollback`` (all traffic to v1);
* at 50 %: ``PUT /admin/routes/chat`` back to 50/50;
* at 70 %: ``POST /admin/versions/v2/swap`` to a third checkpoint (seed 2): v2's in-flight streams finish
  on the old engine, new ones go to the new one, the old engine is freed once drained.

A request *fails* on any exception or non-200; a stream is *truncated* when it ends without a
``finish_reason``, without the usage chunk, or with fewer tokens than asked. The table shows, per
version (the ``x-seekforge-model`` header) and overall: requests, failed, truncated, requests/s and
client-side latency / TTFT percentiles; then the server's own request-log summary (``ab-report``).

    .venv/bin/python bench/serve_ops.py [--clients 64] [--seconds 60] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, small_moe_dir

from seekforge.serve.abreport import render, report
from seekforge.serve.canary import percentile

PROMPTS = ["The history of language models begins", "我们用数据训练一个语言模型，", "Once upon a time",
           "春眠不觉晓，", "def fibonacci(n):", "人工智能的未来"]
ADMIN = {"Authorization": "Bearer bench-admin"}


def version_dirs(workdir: Path) -> list[Path]:
    """v1 (seed 0, with the tokenizer) and copies of its architecture with seeds 1 and 2."""
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    base = small_moe_dir(workdir, preset="tiny")
    dirs = [base]
    for seed in (1, 2):
        out = workdir / f"tiny-seed{seed}"
        if not (out / "config.json").is_file():
            torch.manual_seed(seed)
            model = load_model("tiny", device="cpu", dtype=torch.float32)
            save_model(model, out, tokenizer=load_tokenizer(base))
        dirs.append(out)
    return dirs


@contextlib.contextmanager
def serve(dirs: list[Path], log: Path, max_batch: int):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "seekforge", "serve", "--port", str(port), "--model", f"v1={dirs[0]}",
           "--model", f"v2={dirs[1]}", "--route", "chat=v1:50,v2:50", "--admin-key", "bench-admin",
           "--request-log", str(log), "--max-batch", str(max_batch), "--max-len", "256",
           "--queue-size", "256", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # bounded: 120 s
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read()}")
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not become ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@dataclass
class Outcome:
    version: str
    ok: bool
    truncated: bool
    latency: float
    ttft: float | None
    error: str | None = None


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)


async def client_loop(i: int, url: str, deadline: float, max_tokens: int, load: Load) -> None:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    n = 0
    while time.perf_counter() < deadline:
        n += 1
        t0 = time.perf_counter()
        version, ttft, finish, usage, text = "?", None, None, None, ""
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}],
                max_tokens=max_tokens, temperature=0.8, stream=True, user=f"user-{i}",
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            version = raw.headers.get("x-seekforge-model", "?")
            async for chunk in raw.parse():
                if chunk.choices:
                    piece = chunk.choices[0].delta.content
                    if piece and ttft is None:
                        ttft = time.perf_counter() - t0
                    text += piece or ""
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            truncated = finish is None or usage != max_tokens
            load.outcomes.append(Outcome(version, True, truncated, time.perf_counter() - t0, ttft))
        except Exception as e:  # every failure is counted, not raised: the table reports them
            load.outcomes.append(Outcome(version, False, False, time.perf_counter() - t0, ttft,
                                         f"{type(e).__name__}: {e} ({e.__cause__!r})"))
    await client.close()


def operator(url: str, seconds: float, events: list[str], swap_dir: Path) -> None:
    """The admin's actions during the load, at fixed fractions of the run (in its own thread, so
    the clients' busy event loop cannot delay them)."""
    with httpx.Client(base_url=url, headers=ADMIN, timeout=120) as admin:
        steps = [(0.25, "POST", "/admin/routes/chat/rollback", None),
                 (0.50, "PUT", "/admin/routes/chat", {"weights": {"v1": 50, "v2": 50}}),
                 (0.70, "POST", "/admin/versions/v2/swap", {"model": str(swap_dir)})]
        t0 = time.perf_counter()
        for at, method, path, body in steps:
            time.sleep(max(0.0, t0 + at * seconds - time.perf_counter()))
            r = admin.request(method, path, json=body)
            events.append(f"{time.perf_counter() - t0:6.1f} s  {method} {path} -> {r.status_code}")
            r.raise_for_status()


def table(load: Load, seconds: float) -> str:
    by: dict[str, list[Outcome]] = defaultdict(list)
    for o in load.outcomes:
        by[o.version].append(o)
    by["all"] = list(load.outcomes)
    head = f"{'version':8} {'requests':>8} {'failed':>6} {'truncated':>9} {'req/s':>7} {'p50 s':>7} " \
           f"{'p95 s':>7} {'ttft p50':>8} {'ttft p95':>8}"
    lines = [head]
    for name in sorted(by, key=lambda v: (v == "all", v)):
        outs = by[name]
        lat = [o.latency for o in outs if o.ok]
        ttft = [o.ttft for o in outs if o.ok and o.ttft is not None]
        lines.append(f"{name:8} {len(outs):8d} {sum(not o.ok for o in outs):6d} "
                     f"{sum(o.truncated for o in outs):9d} {len(outs) / seconds:7.2f} "
                     f"{percentile(lat, 50) if lat else 0:7.3f} {percentile(lat, 95) if lat else 0:7.3f} "
                     f"{percentile(ttft, 50) if ttft else 0:8.3f} {percentile(ttft, 95) if ttft else 0:8.3f}")
    return "\n".join(lines)


async def run(url: str, clients: int, seconds: float, max_tokens: int,
              swap_dir: Path) -> tuple[Load, list[str], float]:
    load, events = Load(), []
    t0 = time.perf_counter()
    deadline = t0 + seconds
    admin = asyncio.create_task(asyncio.to_thread(operator, url, seconds, events, swap_dir))
    await asyncio.gather(*(client_loop(i, url, deadline, max_tokens, load) for i in range(clients)))
    await admin
    return load, events, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-batch", type=int, default=16, help="cache slots per version")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    dirs = version_dirs(args.workdir)
    log = args.workdir / "serve_ops_requests.jsonl"
    log.unlink(missing_ok=True)
    with serve(dirs, log, args.max_batch) as url:
        load, events, elapsed = asyncio.run(run(url, args.clients, args.seconds, args.max_tokens, dirs[2]))
        with httpx.Client(base_url=url, headers=ADMIN) as admin:
            for _ in range(600):  # the swapped-out engine drains after the last old stream ends
                kinds = [e["event"] for e in admin.get("/admin/events").json()["data"]]
                if "drained" in kinds:
                    break
                time.sleep(0.1)
            server_events = admin.get("/admin/events").json()["data"]
    print(f"serve_ops: {args.clients} streaming clients (openai {openai.__version__}), route "
          f"chat=v1:50,v2:50, {args.max_tokens} tokens per answer, {elapsed:.1f} s, "
          f"max_batch {args.max_batch} per version, "
          f"load average {os.getloadavg()[0]:.2f} (cpu count {os.cpu_count()})")
    print("\n".join(events))
    for e in server_events:
        print("server event:", json.dumps({k: v for k, v in e.items() if k != "time"}, ensure_ascii=False))
    print(table(load, elapsed))
    print("\nserver request log (seekforge ab-report):")
    print(render(report([log], metric="latency", baseline="v1"), 0.05))
    errors = [o.error for o in load.outcomes if not o.ok][:5]
    if errors:
        print("first errors:", *errors, sep="\n  ")
    lost = sum(not o.ok or o.truncated for o in load.outcomes)
    print(f"\nlost requests: {lost} of {len(load.outcomes)}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
