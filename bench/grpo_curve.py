"""GRPO learning curve on CPU: SFT a tiny model on the answer format, then GRPO on arithmetic.

Everything is generated: a tokenizer trained on arithmetic prompts and answers, a random
``tiny`` preset model, ``--sft-examples`` worked examples in DeepSeek-R1's format
(``<think>a + b = c</think><answer>c</answer>``) for a short ``seekforge sft``, then
``seekforge grpo`` with the ``answer_match`` and ``think_format`` rewards. Printed: the reward per
logged step (from metrics.jsonl) and the greedy accuracy on held-out prompts before and after
GRPO (through the inference engine); the curve is drawn to ``--png``.

    .venv/bin/python bench/grpo_curve.py [--grpo-steps 60] [--png docs/img/grpo_reward.png]
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

import torch

REPO = Path(__file__).resolve().parents[1]


def seekforge(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seekforge", *args], check=True, cwd=REPO)
    return time.perf_counter() - t0


def sets(*kv: str) -> list[str]:
    return [x for item in kv for x in ("--set", item)]


def prepare(work: Path, task_options: dict, sft_examples: int) -> tuple[Path, Path]:
    """Tokenizer, random tiny model and the SFT file (worked examples, seed 7: not GRPO's prompts)."""
    from seekforge.finetune.rl_tasks import ArithmeticTask
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer, train_tokenizer

    task = ArithmeticTask(**task_options)
    items = [task.item(7, i) for i in range(sft_examples)]
    rows = [{"instruction": it.prompt, "output": task.demonstration(it)} for it in items]
    data = work / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tok_dir = train_tokenizer([r["instruction"] + " " + r["output"] for r in rows], vocab_size=320,
                              out_dir=work / "tok")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_model(model, work / "base", tokenizer=tok), data


def greedy_accuracy(model_dir: Path, task_options: dict, n: int) -> tuple[float, float]:
    """(answer_match, think_format) means of greedy answers to ``n`` held-out prompts (seed 99)."""
    from seekforge.finetune.rewards import answer_match, think_format
    from seekforge.finetune.rl_tasks import ArithmeticTask
    from seekforge.infer import Engine, EngineConfig, SamplingParams

    task = ArithmeticTask(**task_options)
    items = [task.item(99, i) for i in range(n)]
    with Engine.from_pretrained(model_dir, EngineConfig(max_batch=32, device="cpu")) as engine:
        prompts = [engine.chat_prompt([{"role": "user", "content": it.prompt}]) for it in items]
        done = engine.generate(prompts, SamplingParams(max_tokens=32, temperature=0.0))
    texts = [c.text for c in done]
    acc = answer_match(texts, [it.columns["answer"] for it in items])
    fmt = think_format(texts)
    return sum(acc) / n, sum(fmt) / n


def plot(records: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.plot(steps, [r["reward"] for r in records], label="reward (sum)", color="black")
    ax.plot(steps, [r["reward_answer_match"] for r in records], label="answer_match", color="tab:blue")
    ax.plot(steps, [r["reward_think_format"] for r in records], label="think_format", color="tab:orange")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward of the step's rollouts")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, png)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--digits", type=int, default=1)
    ap.add_argument("--ops", default="+-")
    ap.add_argument("--sft-examples", type=int, default=4000)
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--grpo-steps", type=int, default=60)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step")
    ap.add_argument("--generations", type=int, default=8, help="completions per prompt")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "grpo_reward.png")
    args = ap.parse_args()
    logs = {"uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="grpo-curve-"))
    work.mkdir(parents=True, exist_ok=True)
    opts = {"digits": args.digits, "ops": args.ops, "hint": False}  # a tiny model needs no instructions
    t0 = time.perf_counter()
    base, data = prepare(work, opts, args.sft_examples)
    quiet = sets("progress=false", "tensorboard=false", "plot=false", "wandb=false", "resume=never",
                 "mtp_loss_weight=0", "eval_every=0", "save_every=0", "sample_tokens=0", "log_every=10")
    sft_s = seekforge(["sft", *quiet, *sets(f"model={base}", f"data={data}", "method=full", "lr=3e-3",
                                            f"max_steps={args.sft_steps}", "warmup_steps=10", "seq_len=64",
                                            "micro_batch_size=16", "batch_tokens=1024",
                                            f"out_dir={work / 'sft'}")])
    sft_model = work / "sft" / "final"
    before = greedy_accuracy(sft_model, opts, args.held_out)
    grpo_out = work / "grpo"
    task_opts = "{" + f"digits: {args.digits}, ops: '{args.ops}', hint: false" + "}"
    grpo_s = seekforge(["grpo", str(REPO / "configs" / "grpo_demo.yaml"), *quiet,
                        *sets(f"model={sft_model}", f"task_options={task_opts}", "method=full",
                              f"lr={args.lr}", f"max_steps={args.grpo_steps}",
                              f"prompts_per_step={args.prompts}", f"num_generations={args.generations}",
                              "log_every=1", f"out_dir={grpo_out}")])
    after = greedy_accuracy(grpo_out / "final", opts, args.held_out)
    logs["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    from seekforge.train.metrics import read_metrics

    records = [r for r in read_metrics(grpo_out / "metrics.jsonl") if "reward" in r]
    print(f"\ntask: {args.digits}-digit '{args.ops}', tiny preset, SFT {args.sft_steps} steps on "
          f"{args.sft_examples} worked examples ({sft_s:.0f} s), GRPO {args.grpo_steps} steps x "
          f"{args.prompts} prompts x {args.generations} completions ({grpo_s:.0f} s)")
    print(f"{'step':>5} {'reward':>7} {'answer':>7} {'format':>7} {'len':>6} {'clip':>6} {'loss':>8}")
    for r in records:
        print(f"{r['step']:>5} {r['reward']:>7.3f} {r['reward_answer_match']:>7.3f} "
              f"{r['reward_think_format']:>7.3f} {r['completion_length']:>6.1f} "
              f"{r.get('clip_fraction', 0):>6.3f} {r['loss']:>8.4f}")
    k = max(1, len(records) // 5)
    first = sum(r["reward"] for r in records[:k]) / k
    last = sum(r["reward"] for r in records[-k:]) / k
    print(f"\nmean reward, first {k} steps {first:.3f} -> last {k} steps {last:.3f}")
    print(f"greedy on {args.held_out} held-out prompts: answer_match {before[0]:.3f} -> {after[0]:.3f}, "
          f"think_format {before[1]:.3f} -> {after[1]:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s; load before: {logs['uptime_before']}; after: "
          f"{logs['uptime_after']}")
    plot(records, args.png, f"GRPO on {args.digits}-digit '{args.ops}' (tiny preset, CPU): reward per step")
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
