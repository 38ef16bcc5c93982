"""`seekforge eval` vs lm-evaluation-harness's `hf` model: wall time, questions/s, peak memory.

Same model (``small-moe``, random weights, an 8192-token tokenizer), same questions (5-shot, the
first --limit questions of a few subjects of MMLU, CMMLU and C-Eval), same CPU threads. Each
contender runs in its own process (fresh OpenMP pool, its own peak RSS, read with ``wait4``); the
time is the whole process (imports, model load, scoring). lm-eval reads the same CSVs through its
own task templates (``tests/eval/lm_eval_reference.py``), with ``include_defaults=False`` so it does
not spend time indexing its thousands of built-in tasks. Both contenders' accuracies are printed:
equal numbers show they did the same work.

    python bench/eval_speed.py [--limit 10] [--batch 16] [--lm-eval-batch 1 8 16 auto] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, small_moe_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "eval"
SUBJECTS = [
    ("mmlu", "management"),
    ("mmlu", "high_school_government_and_politics"),
    ("cmmlu", "anatomy"),
    ("cmmlu", "high_school_mathematics"),
    ("ceval", "art_studies"),
    ("ceval", "basic_medicine"),
]


def run_seekforge(model: Path, limit: int, batch: int) -> dict:
    from seekforge.eval.models import open_model
    from seekforge.eval.runner import EvalConfig, evaluate

    tasks = ",".join(f"{b}:{s}" for b, s in SUBJECTS)
    cfg = EvalConfig(tasks=tasks, shots=5, limit=limit, data_dir=str(DATA), batch_size=batch, progress=False)
    m = open_model(str(model), batch_size=batch)
    res = evaluate(m, cfg).results["tasks"]
    return {b: {"acc": r["acc"], "n": r["n"]} for b, r in res.items()}


def run_lm_eval(model: Path, limit: int, batch: int | str) -> dict:
    sys.path.insert(0, str(REPO / "tests" / "eval"))
    import lm_eval_reference as ref

    include = Path(tempfile.mkdtemp())
    tasks = ref.write_tasks(include, DATA, SUBJECTS)
    out = ref.run(
        "hf",
        {"pretrained": str(model), "dtype": "float32", "device": "cpu"},
        include,
        tasks,
        5,
        limit,
        batch_size=batch,
    )
    acc: dict[str, list[float]] = {}
    for (bench, _), task in zip(SUBJECTS, tasks):
        acc.setdefault(bench, []).extend(row["acc"] for row in out[task])
    return {b: {"acc": sum(v) / len(v), "n": len(v)} for b, v in acc.items()}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.child == "seekforge":
        res = run_seekforge(Path(args.model), args.limit, int(args.batch))
    else:  # lm-eval takes an int or "auto" / "auto:N"
        batch = int(args.batch) if args.batch.isdigit() else args.batch
        res = run_lm_eval(Path(args.model), args.limit, batch)
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "tasks": res}))


def spawn(kind: str, model: Path, args: argparse.Namespace, batch: int | str) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO / "src"),
    }
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--model",
        str(model),
        "--limit",
        str(args.limit),
        "--threads",
        str(args.threads),
        "--batch",
        str(batch),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{kind} failed (status {status}): {out[-2000:]}")
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    return {
        "wall": wall,
        "inner": res["seconds"],
        "tasks": res["tasks"],
        "rss_mb": usage.ru_maxrss / 1024,
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=10, help="questions per subject (6 subjects)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="16", help="seekforge eval --batch-size")
    ap.add_argument(
        "--lm-eval-batch", nargs="+", default=["1"], help="lm-eval --batch_size values (ints or auto)"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="interleaved runs per contender (best wall is shown)"
    )
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--child", choices=["seekforge", "lm-eval"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    model = small_moe_dir(args.workdir)
    n = args.limit * len(SUBJECTS)
    load_before = os.getloadavg()[0]
    contenders = [("seekforge eval", "seekforge", args.batch)] + [
        ("lm-eval hf", "lm-eval", b) for b in args.lm_eval_batch
    ]
    runs: dict[int, list[dict]] = {i: [] for i in range(len(contenders))}
    for _ in range(args.repeat):  # interleaved, so a change in machine load hits every contender alike
        for i, (_, kind, b) in enumerate(contenders):
            runs[i].append(spawn(kind, model, args, b))
    best = {i: min(r, key=lambda x: x["wall"]) for i, r in runs.items()}
    base = best[0]["wall"]
    print(
        f"\nsmall-moe (random init), 5-shot, {n} questions ({args.limit} x {len(SUBJECTS)} subjects), "
        f"{args.threads} threads, one process per contender, best wall of {args.repeat} interleaved runs; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        "| contender | batch | wall s | questions/s | wall vs seekforge | CPU s | peak RSS MB | "
        "acc mmlu / cmmlu / ceval |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, (name, _, b) in enumerate(contenders):
        r = best[i]
        acc = " / ".join(f"{r['tasks'][k]['acc']:.3f}" for k in ("mmlu", "cmmlu", "ceval"))
        print(
            f"| {name} | {b} | {r['wall']:.1f} | {n / r['wall']:.2f} | {r['wall'] / base:.2f}x | "
            f"{r['cpu']:.1f} | {r['rss_mb']:.0f} | {acc} |"
        )


if __name__ == "__main__":
    main()
