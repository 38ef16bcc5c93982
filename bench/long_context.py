"""Long context on a CPU: dense MLA (DeepSeek-V3) against DeepSeek Sparse Attention (V3.2) at equal width.

Speed, for each context length (default 2k / 8k / 16k / 32k tokens), both models built from the
``small-moe`` widths (the V3.2 one adds the lightning indexer, ``--topk`` tokens per query):

* prefill: one ``forward_cached`` over the whole prompt (seconds);
* decode: bs=1 ``decode_step`` tokens/s after a cache of that length (3 warm-up steps, then ``--steps``
  timed). Decode cost does not depend on the cached values, so the cache is filled with random latents
  when the prefill of that length is skipped (``--prefill-budget``: a prefill predicted, from the
  previous length and quadratic growth, to exceed it is not run and printed as "skipped");
* cache bytes per token (latent + rope key, plus the indexer key for V3.2), fp32 as run here.

* decode steps of the two models alternate, and each reports its fastest step, so that both see the
  same load on a shared machine.

Quality (``--train-steps`` > 0), V3.2's recipe at ``tiny`` widths on tinyshakespeare (../shared/data,
first 90% trains, last 10% validates): a dense model pretrained ``--train-steps``, then continued for
``--continue-steps`` either dense (the baseline) or converted to V3.2 (``--warmup-steps`` of the
``dense_warmup`` stage, then the ``sparse`` stage), at ``--train-seq-len`` with ``--train-topk`` below
it so that sparsity is active; validation bits per byte of both continuations.

With ``--v4`` the quality part runs the same recipe on DeepSeek-V4's CSA indexer instead, at
``tiny-v4`` widths with ``--v4-topk`` of the seq_len / 4 compressed blocks: ``--train-steps`` of plain
training (the indexers frozen at their initialisation, what ``train`` does without ``dsa_stage``),
then ``--continue-steps`` more either plain (the frozen-indexer baseline) or ``--warmup-steps`` of
``dense_warmup`` followed by the ``sparse`` stage for the rest (the same total), or for all
``--continue-steps`` (the same language-model steps, V3.2's accounting above). It prints validation
bits per byte and the indexer's top-k recall (the share of the attention's k heaviest blocks that
the indexer's top k holds, on validation rows) of every stage.

Prints a table, writes ``--json`` and a PNG plot (``--plot``, default docs/long_context.png).

    python bench/long_context.py
    python bench/long_context.py --lengths 2048 8192 --train-steps 0     # quick
    python bench/long_context.py --skip-speed --reuse                    # quality only, reusing runs
    python bench/long_context.py --skip-speed --v4                       # V4's CSA indexer recipe
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the machine is shared

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "pretrain" / "tinyshakespeare.txt"


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def build(dsa: bool, topk: int, max_len: int, overrides: list[str] | None = None):
    from seekforge.config import parse_overrides
    from seekforge.model import load_model

    extra = {"index_topk": topk} if dsa else {}
    torch.manual_seed(0)
    model = load_model("small-moe-dsa" if dsa else "small-moe", device="cpu", dtype=torch.float32,
                       max_position_embeddings=max_len, num_nextn_predict_layers=0,
                       **extra, **parse_overrides(overrides or []))
    return model.eval()


def fill_random(cache, length: int) -> None:
    """Random latents / rope keys / indexer keys at positions < length of slot 0."""
    g = torch.Generator().manual_seed(0)
    for buffers in (cache.kv, cache.pe, cache.index_keys):
        for buf in buffers:
            buf[0, :length] = torch.randn(buf[0, :length].shape, generator=g)


@torch.no_grad()
def prefill_seconds(model, cache, length: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    model.forward_cached(ids, cache, torch.tensor([0]), torch.tensor([0]), with_logits=False)
    return time.perf_counter() - t0


@torch.no_grad()
def decode_tok_s(models: dict, caches: dict, length: int, steps: int) -> dict[str, float]:
    """bs=1 decode after ``length`` cached tokens, the models' steps interleaved so that both see the
    same machine load; the fastest step of each (the least disturbed) is reported."""
    best = dict.fromkeys(models, float("inf"))
    slot, token = torch.tensor([0]), torch.tensor([[5]])
    for i in range(3 + steps):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.decode_step(token, caches[name], slot, torch.tensor([[length + i]]), length + i + 1)
            if i >= 3:
                best[name] = min(best[name], time.perf_counter() - t0)
    return {name: 1.0 / t for name, t in best.items()}


def speed(args) -> list[dict]:
    max_len = max(args.lengths) + args.steps + 16
    models = {"dense": build(False, args.topk, max_len, args.model_set),
              "dsa": build(True, args.topk, max_len, args.model_set)}
    last: dict[str, tuple[int, float]] = {}
    rows = []
    for length in args.lengths:
        row: dict = {"context": length}
        caches = {name: m.new_cache(1, length + args.steps + 8) for name, m in models.items()}
        for name, model in models.items():
            row[f"{name}_cache_bytes_per_token"] = caches[name].nbytes() / caches[name].max_len
            run = name not in last or last[name][1] * (length / last[name][0]) ** 2 <= args.prefill_budget
            row[f"{name}_prefill_s"] = prefill_seconds(model, caches[name], length) if run else None
            if run:
                last[name] = (length, row[f"{name}_prefill_s"])
            else:  # decode cost does not depend on the cached values
                fill_random(caches[name], length)
        for name, tok_s in decode_tok_s(models, caches, length, args.steps).items():
            row[f"{name}_decode_tok_s"] = tok_s
        row["decode_speedup"] = row["dsa_decode_tok_s"] / row["dense_decode_tok_s"]
        print(f"  {length:>6}: prefill dense {fmt(row['dense_prefill_s'], '.1f')} s, DSA "
              f"{fmt(row['dsa_prefill_s'], '.1f')} s; decode dense {row['dense_decode_tok_s']:.1f}, DSA "
              f"{row['dsa_decode_tok_s']:.1f} tok/s ({row['decode_speedup']:.2f}x)  [load {load_avg()}]",
              flush=True)
        rows.append(row)
    return rows


def quality(args) -> dict:
    """V3.2's recipe at toy scale: a dense model trained ``--train-steps``, then continued for
    ``--continue-steps`` either dense (the baseline) or converted to DSA (``--warmup-steps`` of indexer
    warm-up, then the sparse stage); validation bits per byte of both continuations."""
    sys.path.insert(0, str(REPO / "bench"))
    from speedrun_cpu import prepare

    from seekforge.train import Trainer
    from seekforge.train.config import QUIET_RUN, load_train_config

    work = Path(args.workdir)
    shards = prepare(SHAKESPEARE, work / "prep", 2048)
    common = [*QUIET_RUN, f"data.train={shards}", f"seq_len={args.train_seq_len}",
              f"batch_tokens={8 * args.train_seq_len}", "micro_batch_size=8", "eval_tokens=65536", "seed=1"]

    def train(name: str, model: list[str], *extra: str) -> dict:
        out = work / f"train-{name}"
        if args.reuse and (out / "summary.json").is_file():
            summary = json.loads((out / "summary.json").read_text())
        else:
            cfg = load_train_config(None, [*common, f"out_dir={out}", *model, *extra])
            summary = Trainer(cfg).run()
        print(f"  {name:<16} val_bpb {summary['val_bpb']:.4f}", flush=True)
        return {"val_bpb": summary["val_bpb"], "dir": str(out / "latest")}

    base = train("dense", ["model=tiny"], f"max_steps={args.train_steps}", "warmup_steps=20", "lr=3e-3")
    cont = [f"max_steps={args.continue_steps}", "warmup_steps=0", "schedule=constant",
            f"lr={args.continue_lr}"]
    dense = train("dense-continued", [f"model={base['dir']}"], *cont)
    dsa = [f"model.index_topk={args.train_topk}", "model.index_n_heads=8", "model.index_head_dim=16"]
    warm = train("dsa-warmup", [f"model.preset={base['dir']}", *dsa], "dsa_stage=dense_warmup",
                 f"max_steps={args.warmup_steps}", "warmup_steps=0", "schedule=constant",
                 f"lr={args.warmup_lr}")
    sparse = train("dsa-sparse", [f"model={warm['dir']}"], "dsa_stage=sparse", *cont)
    return {"base": base["val_bpb"], "dense": dense["val_bpb"], "warmup": warm["val_bpb"],
            "dsa": sparse["val_bpb"], "relative_gap": sparse["val_bpb"] / dense["val_bpb"] - 1}


def quality_v4(args) -> dict:
    """The recipe of :func:`quality` for DeepSeek-V4's CSA indexer (see the module docstring)."""
    sys.path.insert(0, str(REPO / "bench"))
    from speedrun_cpu import prepare

    from seekforge.train import Trainer
    from seekforge.train.config import QUIET_RUN, load_train_config

    work = Path(args.workdir)
    shards = prepare(SHAKESPEARE, work / "prep", 2048)
    common = [*QUIET_RUN, f"data.train={shards}", f"seq_len={args.train_seq_len}",
              f"batch_tokens={8 * args.train_seq_len}", "micro_batch_size=8", "eval_tokens=65536", "seed=1"]
    rows = validation_rows(shards, args.train_seq_len, 8)

    def train(name: str, model: str, *extra: str) -> dict:
        out = work / f"train-{name}"
        if args.reuse and (out / "summary.json").is_file():
            summary = json.loads((out / "summary.json").read_text())
        else:
            summary = Trainer(load_train_config(None, [*common, f"out_dir={out}", model, *extra])).run()
        recall = indexer_recall(out / "latest", rows)
        print(f"  {name:<16} val_bpb {summary['val_bpb']:.4f}  indexer recall {recall:.3f}", flush=True)
        return {"val_bpb": summary["val_bpb"], "recall": recall, "dir": str(out / "latest")}

    base = train("v4-base", "model.preset=tiny-v4", f"model.index_topk={args.v4_topk}",
                 f"max_steps={args.train_steps}", "warmup_steps=20", "lr=3e-3")
    cont = ["warmup_steps=0", "schedule=constant", f"lr={args.continue_lr}"]
    frozen = train("v4-frozen", f"model={base['dir']}", f"max_steps={args.continue_steps}", *cont)
    warm = train("v4-warmup", f"model={base['dir']}", "dsa_stage=dense_warmup",
                 f"max_steps={args.warmup_steps}", "warmup_steps=0", "schedule=constant",
                 f"lr={args.warmup_lr}")
    sparse = train("v4-sparse", f"model={warm['dir']}", "dsa_stage=sparse",
                   f"max_steps={args.continue_steps - args.warmup_steps}", *cont)
    # V3.2's accounting instead: the warm-up on top of as many language-model steps as the baseline
    longer = train("v4-sparse-long", f"model={warm['dir']}", "dsa_stage=sparse",
                   f"max_steps={args.continue_steps}", *cont)
    return {"base": base, "frozen": frozen, "warmup": warm, "sparse": sparse, "sparse_long": longer,
            "relative_gap": sparse["val_bpb"] / frozen["val_bpb"] - 1,
            "relative_gap_long": longer["val_bpb"] / frozen["val_bpb"] - 1}


def validation_rows(shards: Path, seq_len: int, n_rows: int) -> torch.Tensor:
    """The first n_rows x seq_len tokens of the validation split, as a batch."""
    import numpy as np

    from seekforge.data.shards import TokenShards

    val = TokenShards(shards, "val")
    need, parts, i = n_rows * seq_len, [], 0
    while sum(len(p) for p in parts) < need and i < val.num_docs:
        parts.append(np.asarray(val.doc(i), dtype=np.int64))
        i += 1
    return torch.from_numpy(np.concatenate(parts)[:need].copy()).view(n_rows, seq_len)


@torch.no_grad()
def indexer_recall(model_dir: Path, rows: torch.Tensor) -> float:
    """Mean top-k recall of a V4 model's CSA indexers on ``rows`` (the dense warm-up's measure)."""
    from seekforge.model import load_model
    from seekforge.model.dsa import mean_indexer_recall, set_dsa_stage

    model = load_model(model_dir, device="cpu").eval()
    set_dsa_stage(model, "dense_warmup")
    model(rows)
    return float(mean_indexer_recall(model))


def fmt(x: float | None, spec: str) -> str:
    return "skipped" if x is None else format(x, spec)


def table(rows: list[dict], topk: int, model_set: list[str]) -> str:
    extra = f" with {', '.join(model_set)}" if model_set else ""
    lines = ["| context | prefill dense (s) | prefill DSA (s) | decode dense (tok/s) | decode DSA (tok/s) | "
             "DSA decode speed-up | cache B/token dense | cache B/token DSA |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['context']} | {fmt(r['dense_prefill_s'], '.1f')} | "
                     f"{fmt(r['dsa_prefill_s'], '.1f')} | {r['dense_decode_tok_s']:.1f} | "
                     f"{r['dsa_decode_tok_s']:.1f} | "
                     f"{r['decode_speedup']:.2f}x | {r['dense_cache_bytes_per_token']:.0f} | "
                     f"{r['dsa_cache_bytes_per_token']:.0f} |")
    lines.append(f"(small-moe widths{extra}, 6 layers, fp32 on CPU; DSA index_topk={topk})")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, topk: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = [r["context"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ctx, [r["dense_decode_tok_s"] for r in rows], "o-", label="dense MLA (V3)")
    a.plot(ctx, [r["dsa_decode_tok_s"] for r in rows], "o-", label=f"DSA top-{topk} (V3.2)")
    a.set(xscale="log", xlabel="context (tokens)", ylabel="bs=1 decode tokens/s", title="decode")
    a.legend()
    for name, label in (("dense", "dense MLA (V3)"), ("dsa", f"DSA top-{topk} (V3.2)")):
        pts = [(r["context"], r[f"{name}_prefill_s"]) for r in rows if r[f"{name}_prefill_s"] is not None]
        if pts:
            b.plot(*zip(*pts), "o-", label=label)
    b.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="seconds", title="prefill")
    b.legend()
    fig.suptitle("small-moe widths on CPU: dense MLA vs DeepSeek Sparse Attention")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384, 32768])
    p.add_argument("--topk", type=int, default=256, help="index_topk of the V3.2 model (speed part)")
    p.add_argument("--steps", type=int, default=12, help="timed decode steps per length")
    p.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                   help="ModelConfig field for both models of the speed part (e.g. num_attention_heads=32)")
    p.add_argument("--prefill-budget", type=float, default=240.0,
                   help="skip a prefill predicted to take longer than this many seconds")
    p.add_argument("--train-steps", type=int, default=200, help="dense pretraining; 0 skips the quality part")
    p.add_argument("--warmup-steps", type=int, default=20, help="DSA dense warm-up (indexers only)")
    p.add_argument("--continue-steps", type=int, default=40, help="dense vs DSA sparse-stage continuation")
    p.add_argument("--continue-lr", type=float, default=1e-3)
    p.add_argument("--train-seq-len", type=int, default=256)
    p.add_argument("--train-topk", type=int, default=64)
    p.add_argument("--warmup-lr", type=float, default=1e-3, help="learning rate of the dense warm-up")
    p.add_argument("--v4", action="store_true", help="quality part on DeepSeek-V4's CSA indexer (tiny-v4)")
    p.add_argument("--v4-topk", type=int, default=8, help="index_topk of the V4 model (blocks of 4 tokens)")
    p.add_argument("--reuse", action="store_true", help="reuse finished training runs in --workdir")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "seekforge-long-context"))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--plot", default=str(REPO / "docs" / "long_context.png"))
    args = p.parse_args()
    print(f"load average before: {load_avg()}  (threads {torch.get_num_threads()})", flush=True)
    rows = [] if args.skip_speed else speed(args)
    result = {"speed": rows, "topk": args.topk, "load_avg_after_speed": load_avg()}
    if args.train_steps > 0:
        if not SHAKESPEARE.is_file():
            print(f"quality part skipped: {SHAKESPEARE} not found")
        else:
            result["quality_v4" if args.v4 else "quality"] = quality_v4(args) if args.v4 else quality(args)
    print()
    if rows:
        print(table(rows, args.topk, args.model_set))
    if "quality" in result:
        q = result["quality"]
        print(f"\nval bits/byte, tiny widths at seq_len {args.train_seq_len}: dense {args.train_steps} steps "
              f"{q['base']:.4f}; then {args.continue_steps} more steps dense {q['dense']:.4f} vs DSA "
              f"top-{args.train_topk} ({args.warmup_steps} warm-up + {args.continue_steps} sparse) "
              f"{q['dsa']:.4f} "
              f"({100 * q['relative_gap']:+.2f}%)")
    if "quality_v4" in result:
        q = result["quality_v4"]
        blocks = args.train_seq_len // 4
        print(f"\ntiny-v4 at seq_len {args.train_seq_len}, CSA top-{args.v4_topk} of {blocks} blocks: "
              f"{args.train_steps} steps with frozen indexers, then {args.continue_steps} more")
        print("| run | val bits/byte | indexer top-k recall |")
        print("|---|---:|---:|")
        for key, label in (("base", f"base ({args.train_steps} steps, indexers frozen at init)"),
                           ("frozen", f"+ {args.continue_steps} steps, indexers still frozen"),
                           ("warmup", f"+ {args.warmup_steps} dense_warmup steps (val: all blocks)"),
                           ("sparse", f"  + {args.continue_steps - args.warmup_steps} sparse steps"),
                           ("sparse_long", f"  + {args.continue_steps} sparse steps instead")):
            print(f"| {label} | {q[key]['val_bpb']:.4f} | {q[key]['recall']:.3f} |")
        print(f"trained indexer vs frozen: {100 * q['relative_gap']:+.2f}% bits/byte at equal total steps, "
              f"{100 * q['relative_gap_long']:+.2f}% at the same language-model steps")
    result["load_avg_end"] = load_avg()
    print(f"load average at the end: {result['load_avg_end']}")
    if args.plot and rows:
        plot(rows, Path(args.plot), args.topk)
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if all(math.isfinite(r["decode_speedup"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
