"""DeepSeek-V4 vs DeepSeek-V3 at equal width on this CPU: cache bytes, bs=1 decode speed at long
context, and validation bits/byte after the same short training run.

Models: seekforge's ``small-moe`` (V3: MLA + MoE, d = 256, 6 layers, 16 experts of 128) and
``small-v4`` (V4: the same widths; sliding window 64, CSA m = 4 with top-64, HCA m' = 64, mHC x4).

    .venv/bin/python bench/v4_vs_v3.py                       # 8k and 32k context, 30 training steps
    .venv/bin/python bench/v4_vs_v3.py --contexts 8192 --steps 0   # decode only
    .venv/bin/python bench/v4_vs_v3.py --contexts "" --steps 0 --prefill 2048   # chunked prefill only

Decode is timed after the cache is filled with synthetic entries for ``context`` positions (the
work of a decode step does not depend on the values cached, and a real 32k-token prefill of the
V4 full forward scores T/m compressed entries per query). Each timed step writes its token and, in V4, pools
a compressed block whenever the token closes one. Cache bytes are the buffers each engine
allocates for one sequence, divided by the context. Training: both models on the same token
shards (Tang poems + C4 sample from ../shared/data, or generated text), same seq_len, batch,
steps, learning rate and seed; validation bits/byte on the same held-out split.

``--prefill N`` times the engine's chunked prefill of an N-token prompt (chunks of
``--prefill-chunk``): the first chunk is a fresh prefill, every later one continues the cached
prefix. For V4 the later chunks run either as one multi-token forward each (what
``forward_cached`` does) or token by token through the decode step (what it did before); the
whole prompt in one forward and V3's chunked prefill are the references.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fill_v3(model, cache, context: int) -> None:
    for buf in (*cache.kv, *cache.pe):
        buf[:, :context].normal_()


def fill_v4(model, cache, context: int) -> None:
    for lc in cache.layers:
        W = lc.window.shape[1]
        pos = torch.arange(max(0, context - W), context)
        lc.window.normal_()
        lc.window_pos[:, pos % W] = pos
        for state in (lc.compressor, lc.indexer):
            if state is not None:
                state.entries.normal_()
                state.raw_kv.normal_()
                state.raw_gate.normal_()


def decode_tok_s(model, fill, context: int, steps: int) -> tuple[float, int]:
    """bs=1 eager decode after ``context`` cached positions -> (median tokens/s, cache bytes)."""
    cache = model.new_cache(1, context + steps + 1)
    if hasattr(cache, "pe"):  # V3: drop the MTP layer's entries, as the engine does
        L = model.config.num_hidden_layers
        del cache.kv[L:], cache.pe[L:]
    fill(model, cache, context)
    slots = torch.tensor([0])
    ids = torch.tensor([[5]])
    times = []
    with torch.inference_mode():
        for i in range(steps):
            pos = context + i
            t0 = time.perf_counter()
            model.decode_step(ids, cache, slots, torch.tensor([[pos]]), pos + 1)
            times.append(time.perf_counter() - t0)
    times = sorted(times[2:])  # drop warm-up, then the median
    nbytes = cache.nbytes() if hasattr(cache, "nbytes") else 0
    return 1.0 / times[len(times) // 2], nbytes


def prefill_s(model, tokens: int, chunk: int, token_by_token: bool = False) -> float:
    """Seconds to prefill a random ``tokens``-long prompt into a fresh cache, ``chunk`` tokens per
    forward_cached call; ``token_by_token``: chunks after the first through decode_step, one token
    per call."""
    ids = torch.randint(3, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1, tokens + 1)
    slots = torch.tensor([0])
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, tokens, chunk):
            piece = ids[:, start:start + chunk]
            if token_by_token and start > 0:
                for t in range(piece.shape[1]):
                    pos = start + t
                    model.decode_step(piece[:, t:t + 1], cache, slots, torch.tensor([[pos]]), pos + 1,
                                      with_logits=False)
            else:
                model.forward_cached(piece, cache, slots, torch.tensor([start]))
    return time.perf_counter() - t0


def print_prefill_table(v3, v4, tokens: int, chunk: int) -> None:
    rows = [("V4 small-v4", f"{chunk}, later chunks token by token (before)", v4, chunk, True),
            ("V4 small-v4", f"{chunk}, one forward per chunk", v4, chunk, False),
            ("V4 small-v4", f"{tokens} (one forward)", v4, tokens, False),
            ("V3 small-moe", f"{chunk}, one forward per chunk", v3, chunk, False)]
    print(f"\nprefill of a {tokens:,}-token prompt, bs=1")
    print("| model | chunk | seconds | prompt tok/s |")
    print("|---|---|---:|---:|")
    for name, how, model, size, by_token in rows:
        seconds = prefill_s(model, tokens, size, by_token)
        print(f"| {name} | {how} | {seconds:.2f} | {tokens / seconds:,.0f} |")


def cache_bytes_per_token(model, context: int) -> float:
    cache = model.new_cache(1, context + 1, dtype=torch.bfloat16)
    if hasattr(cache, "pe"):
        L = model.config.num_hidden_layers
        del cache.kv[L:], cache.pe[L:]
    return cache.nbytes() / context


def train_bpb(preset: str, shards: Path, out: Path, steps: int) -> tuple[float, float]:
    """Same short run for either model -> (validation bits/byte, tokens/s)."""
    from seekforge.train import Trainer
    from seekforge.train.config import load_train_config

    sets = {"data.train": str(shards), "out_dir": str(out), "model": preset, "seq_len": 256,
            "batch_tokens": 2048, "micro_batch_size": 8, "max_steps": steps, "warmup_steps": 3, "lr": 3e-3,
            "eval_every": steps, "save_every": 0, "log_every": 10, "sample_tokens": 0, "tensorboard": False,
            "plot": False, "progress": False, "wandb": False}
    shutil.rmtree(out, ignore_errors=True)  # a fresh run every time, never a resumed stale one
    cfg = load_train_config(None, [f"{k}={v}" for k, v in sets.items()])
    t0 = time.perf_counter()
    summary = Trainer(cfg).run()
    return float(summary["val_bpb"]), steps * 2048 / (time.perf_counter() - t0)


def make_shards(workdir: Path) -> Path:
    from _common import corpus

    from seekforge.data.tokenize import tokenize_to_shards
    from seekforge.tokenizer import train_tokenizer

    out = workdir / "v4bench-shards"
    if (out / "manifest.json").is_file():
        return out
    texts = corpus()
    tok = train_tokenizer(texts, vocab_size=8192, out_dir=workdir / "v4bench-tok")
    src = workdir / "v4bench.jsonl"  # one document per line, so the validation split holds whole documents
    lines = (json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    src.write_text("".join(lines), encoding="utf-8")
    tokenize_to_shards(src, tok, out, val_fraction=0.05, workers=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--decode-steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="decode measurements per model (best kept)")
    ap.add_argument("--steps", type=int, default=30, help="training steps per model (0: skip training)")
    ap.add_argument("--prefill", type=int, default=0, help="prompt tokens of the prefill table (0: skip)")
    ap.add_argument("--prefill-chunk", type=int, default=256, help="tokens per prefill chunk")
    ap.add_argument("--threads", type=int, default=2, help="use 1 on a busy shared machine")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "seekforge-bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from seekforge.model import load_model

    torch.manual_seed(0)
    v3, v4 = load_model("small-moe", kernels=True), load_model("small-v4")
    for m in (v3, v4):
        m.eval()
    v3.config.max_position_embeddings = 1 << 20  # decode positions past the training context
    print(f"load average {os.getloadavg()[0]:.1f}; threads {args.threads}")
    contexts = [int(c) for c in args.contexts.split(",") if c]
    if contexts:
        print("| context | model | cache bytes/token (bf16) | bs=1 decode tok/s | V4 / V3 |")
        print("|---:|---|---:|---:|---:|")
    for ctx in contexts:
        r3 = r4 = 0.0
        for _ in range(args.rounds):  # alternate the two models; keep each one's best round
            r3 = max(r3, decode_tok_s(v3, fill_v3, ctx, args.decode_steps)[0])
            r4 = max(r4, decode_tok_s(v4, fill_v4, ctx, args.decode_steps)[0])
        b3, b4 = cache_bytes_per_token(v3, ctx), cache_bytes_per_token(v4, ctx)
        print(f"| {ctx:,} | V3 small-moe | {b3:,.0f} | {r3:.1f} | |")
        print(f"| {ctx:,} | V4 small-v4 | {b4:,.0f} | {r4:.1f} | {r4 / r3:.2f}x |")
    if args.prefill:
        print_prefill_table(v3, v4, args.prefill, args.prefill_chunk)
    if args.steps:
        shards = make_shards(args.workdir)
        print(f"\ntraining: {args.steps} steps x 2,048 tokens, seq_len 256, lr 3e-3, same shards ({shards})")
        print("| model | val bits/byte | train tok/s |")
        print("|---|---:|---:|")
        for preset in ("small-moe", "small-v4"):
            bpb, tps = train_bpb(preset, shards, args.workdir / f"v4bench-{preset}", args.steps)
            print(f"| {preset} | {bpb:.4f} | {tps:,.0f} |")


if __name__ == "__main__":
    main()
