"""Data mixtures: per-source validation bits/byte of a tiny model trained on three corpora with fixed
weights vs. a changing schedule, at an equal number of training tokens.

Sources (from ../shared/data/pretrain, read in place): tiny Shakespeare (English drama), the wiki
sample (English encyclopedic prose) and Tang poems (classical Chinese). Each is cut into documents
of about 2,000 characters (whole poems for the Tang set) and tokenized into its own shard folder
(90/10 train/val by document hash) with one byte-level BPE trained on all three — the same
functions ``seekforge tokenizer train`` and ``seekforge data tokenize`` run. Then ``seekforge
train`` on the ``tiny`` preset, same seed and steps for every row:

* ``fixed uniform``: 1/3 each;
* ``fixed by size``: weights proportional to each source's training tokens (what concatenating the
  corpora would give);
* ``piecewise``: uniform for the first 30%, then by size;
* ``loss (DoReMi-style)``: start uniform, re-weight at every eval towards the sources whose val
  bits/byte fell least relative to the untrained model (``data.schedule.kind: loss``).

    python bench/mixture.py                       # ~10 min on 2 CPU cores under load ~11
    python bench/mixture.py --steps 300 --step-size 20

Prints a table of per-source val bpb, their mean and worst, and the final weights; records the
load average (``uptime``) next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrain"
NAMES = ("shakespeare", "wiki", "poems")


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def documents(name: str, max_chars: int) -> list[str]:
    """One source's documents, about ``max_chars`` characters in all."""
    if name == "poems":
        docs, size = [], 0
        with open(SHARED / "tang_poems.jsonl", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                text = f"{rec['title']}\n{rec['author']}\n{rec['text']}"
                docs.append(text)
                size += len(text)
                if size >= max_chars:
                    break
        return docs
    path = SHARED / ("tinyshakespeare.txt" if name == "shakespeare" else "wiki_demo.txt")
    text = path.read_text(encoding="utf-8")[:max_chars]
    return [text[i:i + 2000] for i in range(0, len(text), 2000)]


def prepare(work: Path, chars: dict[str, int], vocab_size: int) -> dict[str, Path]:
    """Tokenizer (trained on all sources) + one shard folder per source; cached in ``work``."""
    from seekforge.data.tokenize import tokenize_to_shards
    from seekforge.tokenizer import train_tokenizer

    docs = {name: documents(name, chars[name]) for name in NAMES}
    tok = work / f"tok{vocab_size}"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer([d for name in NAMES for d in docs[name]], vocab_size=vocab_size, out_dir=tok)
    out = {}
    for name in NAMES:
        shards = work / f"shards-{name}"
        if not (shards / "manifest.json").is_file():
            src = work / f"{name}.jsonl"
            src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs[name]),
                           encoding="utf-8")
            tokenize_to_shards(src, tok, shards, val_fraction=0.1, workers=0)
        out[name] = shards
    return out


def run(work: Path, label: str, shards: dict[str, Path], weights: dict[str, float], schedule: list[str],
        args: argparse.Namespace) -> dict:
    from seekforge.train.config import QUIET_RUN, load_train_config
    from seekforge.train.metrics import read_metrics
    from seekforge.train.trainer import Trainer

    out = work / "runs" / label.replace(" ", "_").replace("(", "").replace(")", "")
    sets = [*QUIET_RUN, "model=tiny", f"out_dir={out}", f"seq_len={args.seq_len}",
            f"batch_tokens={args.batch_tokens}", "micro_batch_size=8", f"max_steps={args.steps}",
            "warmup_steps=10", "lr=3e-3", f"eval_every={args.eval_every}", f"eval_tokens={args.eval_tokens}",
            f"num_threads={args.threads}", f"seed={args.seed}"]
    for name in NAMES:
        sets += [f"data.train.{name}.path={shards[name]}", f"data.train.{name}.weight={weights[name]}"]
    sets += schedule
    cfg = load_train_config(None, sets)
    t0 = time.perf_counter()
    summary = Trainer(cfg).run()
    last = [r for r in read_metrics(out / "metrics.jsonl") if "mix_weight/wiki" in r][-1]
    return {"label": label, "seconds": time.perf_counter() - t0, "tokens": summary["tokens"],
            "bpb": {n: summary[f"val_bpb/{n}"] for n in NAMES},
            "final_weights": {n: last[f"mix_weight/{n}"] for n in NAMES},
            "tokens_seen": {n: last[f"mix_tokens/{n}"] for n in NAMES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "seekforge-bench-mixture")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-tokens", type=int, default=16384, help="validation tokens per source and eval")
    ap.add_argument("--step-size", type=float, default=10.0, help="loss schedule: data.schedule.step_size")
    ap.add_argument("--floor", type=float, default=0.1, help="loss schedule: data.schedule.floor")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="model init and data order (same for every row)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} not found: this benchmark reads the shared pretraining samples")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from seekforge.data.shards import TokenShards

    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # Unequal sizes on purpose, so "by size" differs from uniform.
    shards = prepare(args.work, {"shakespeare": 600_000, "wiki": 300_000, "poems": 150_000}, args.vocab_size)
    sizes = {n: TokenShards(shards[n], "train").num_tokens for n in NAMES}
    prep_s = time.perf_counter() - t0
    total = sum(sizes.values())
    uniform = {n: 1.0 for n in NAMES}
    by_size = {n: round(sizes[n] / total, 4) for n in NAMES}
    uni_points = "[{at: 0, weights: uniform}, {at: 0.3, weights: target}]"
    plans = [
        ("fixed uniform", uniform, []),
        ("fixed by size", by_size, []),
        ("piecewise", by_size, ["data.schedule.kind=piecewise", f"data.schedule.points={uni_points}"]),
        ("loss (DoReMi-style)", uniform, ["data.schedule.kind=loss",
                                          f"data.schedule.step_size={args.step_size}",
                                          f"data.schedule.floor={args.floor}"]),
    ]
    results = []
    for label, weights, schedule in plans:
        if (args.work / "runs").exists():
            import shutil

            shutil.rmtree(args.work / "runs" / label.replace(" ", "_").replace("(", "").replace(")", ""),
                          ignore_errors=True)
        results.append(run(args.work, label, shards, weights, schedule, args))
        print(f"  {label}: {results[-1]['seconds']:.0f}s", flush=True)

    print(f"\nmixture bench (seed {args.seed}): tiny preset, {args.steps} steps x {args.batch_tokens} "
          f"tokens = "
          f"{args.steps * args.batch_tokens:,} training tokens per run, seq_len {args.seq_len}, "
          f"vocab {args.vocab_size}, eval every {args.eval_every} steps on <= {args.eval_tokens} val tokens "
          f"per source; train tokens available: "
          + ", ".join(f"{n} {sizes[n]:,}" for n in NAMES) + f" (prep {prep_s:.0f}s)")
    head = "| schedule | " + " | ".join(f"{n} bpb" for n in NAMES) + " | mean | worst | final weights " \
           "(" + "/".join(NAMES) + ") | tokens seen (" + "/".join(NAMES) + ") | s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        bpb = [r["bpb"][n] for n in NAMES]
        print(f"| {r['label']} | " + " | ".join(f"{b:.3f}" for b in bpb)
              + f" | {sum(bpb) / len(bpb):.3f} | {max(bpb):.3f} | "
              + "/".join(f"{r['final_weights'][n]:.2f}" for n in NAMES) + " | "
              + "/".join(f"{r['tokens_seen'][n] // 1000}K" for n in NAMES) + f" | {r['seconds']:.0f} |")
    print(f"load average (uptime): {load_avg()}; {os.cpu_count()} CPUs, num_threads {args.threads}")


if __name__ == "__main__":
    main()
