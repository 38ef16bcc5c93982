"""Fine-tuning and evaluating a DeepSeek-V4 directory: seekforge's own V4 model vs transformers'
DeepseekV4ForCausalLM (the path V4 directories took before seekforge trained them itself).

Model: seekforge's ``small-v4`` preset with random weights (d = 256, 6 layers: sliding, CSA, HCA;
hash + learned-router MoE of 16 experts; mHC x4), saved once under ``--workdir``.

* ``lora``: one ``seekforge sft``-style LoRA step (forward with labels, backward, AdamW) on a
  [batch, seq_len] batch of random token ids, ``lora.target_modules = all-linear`` as each path
  resolves it (seekforge: attention + KV compressors + shared experts; transformers: every linear
  but ``o_a_proj``, so its indexers too: the trainable-parameter column says how many).
* ``eval``: one log-likelihood batch of ``seekforge eval``'s full-forward scorer (the scorer both
  paths use for V4) over [batch, seq_len] rows, the last 8 tokens scored.

Every (path, job) runs in its own process so that its peak RSS (``ru_maxrss``) minus the RSS after
importing torch / transformers / peft is that job's memory alone (weights, activations, optimizer
state); rounds alternate the paths and each keeps its best time (memory: its largest).

    .venv/bin/python bench/v4_finetune_paths.py
    .venv/bin/python bench/v4_finetune_paths.py --seq-len 256 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def model_dir(workdir: Path) -> Path:
    from seekforge.model import load_model, save_model

    out = workdir / "small-v4"
    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        save_model(load_model("small-v4", device="cpu", dtype=torch.float32), out)
    return out


def run_job(path: str, job: str, base: Path, batch: int, seq_len: int, steps: int) -> dict:
    """One (path, job) in this process: seconds of the best of ``steps`` timed repeats, peak RSS."""
    import peft  # noqa: F401  (both paths import peft and transformers: the baseline RSS is the same)
    import transformers  # noqa: F401

    from seekforge.finetune.methods import HFCausalLM, LoraSettings, prepare

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    if path == "seekforge":
        from seekforge.model import load_model

        model, kind = load_model(str(base), device="cpu", dtype=torch.float32), "seekforge"
    else:
        from transformers import AutoModelForCausalLM

        model, kind = HFCausalLM(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)), "hf"
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    times: list[float] = []
    trainable = 0
    if job == "lora":
        model = prepare(model, kind, "lora", lora=LoraSettings(), freeze=None, prefix=None)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=1e-4)
        for _ in range(steps + 1):  # the first step is a warm-up
            t0 = time.perf_counter()
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    else:
        from seekforge.eval.scoring import TokenPair, TransformersScorer

        inner = model.inner if isinstance(model, HFCausalLM) else model
        scorer = TransformersScorer(inner, seq_len + 1, batch_size=batch, name=path)
        rows = [TokenPair(r.tolist() + [5], 8, False) for r in ids]
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            scorer.score(rows)
            times.append(time.perf_counter() - t0)
    return {"path": path, "job": job, "seconds": min(times[1:]), "trainable": trainable,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "seekforge-bench")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2, help="timed repeats per process (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="processes per (path, job), alternating paths")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job in this process
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = model_dir(args.workdir)
    if args.job:
        print(json.dumps(run_job(args.path, args.job, base, args.batch, args.seq_len, args.steps)))
        return
    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.rounds):
        for job in ("lora", "eval"):
            for path in ("hf", "seekforge"):
                cmd = [sys.executable, __file__, "--job", job, "--path", path, "--workdir", str(args.workdir),
                       "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
                r = json.loads(out.stdout.strip().splitlines()[-1])
                key = (job, path)
                peak = max(r["peak_rss_mib"], best.get(key, r)["peak_rss_mib"])  # the worst process's
                if key not in best or r["seconds"] < best[key]["seconds"]:
                    best[key] = r
                best[key]["peak_rss_mib"] = peak
    tokens = args.batch * args.seq_len
    print(f"small-v4, batch {args.batch} x seq_len {args.seq_len}, {args.threads} thread(s), best of "
          f"{args.rounds} processes x {args.steps} repeats")
    print(f"{'job':<6} {'path':<34} {'seconds':>8} {'tok/s':>8} {'job RSS MiB':>13} {'LoRA params':>12}")
    names = {"hf": "transformers DeepseekV4", "seekforge": "seekforge V4 (new path)"}
    for job in ("lora", "eval"):
        for path in ("hf", "seekforge"):
            r = best[(job, path)]
            lora = f"{r['trainable']:,}" if job == "lora" else "-"
            print(f"{job:<6} {names[path]:<34} {r['seconds']:>8.3f} {tokens / r['seconds']:>8.0f} "
                  f"{r['peak_rss_mib']:>13.0f} {lora:>12}")
        ratio = best[(job, "hf")]["seconds"] / best[(job, "seekforge")]["seconds"]
        print(f"{job:<6} {'speed-up seekforge / transformers':<34} {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
