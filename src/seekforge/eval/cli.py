"""``seekforge eval``: benchmarks, perplexity and generation metrics of a model dir or an endpoint."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("seekforge.eval")


def _bool_or_auto(value: str) -> bool | None:
    v = value.strip().lower()
    if v == "auto":
        return None
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto, true or false, got {value!r}")


def run_eval(args: argparse.Namespace) -> int:
    from seekforge.eval import report

    if args.compare:
        print(report.compare(args.compare))
        return 0
    from seekforge.eval.models import open_model
    from seekforge.eval.runner import EvalConfig, collect_subjects, evaluate

    cfg = EvalConfig(
        tasks=args.tasks or "",
        task_files=args.task_file,
        shots=args.shots,
        limit=args.limit,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        ppl=args.ppl,
        ppl_stride=args.ppl_stride,
        gen=args.gen,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    if not (cfg.tasks or cfg.task_files or cfg.ppl or cfg.gen):
        raise ValueError(
            "nothing to evaluate: give --tasks (mmlu, cmmlu, ceval), --task-file, --ppl or --gen"
        )
    tasks = collect_subjects(cfg)  # bad files fail here, before the model loads
    if tasks:
        print(f"multiple choice: {cfg.shots}-shot (--shots; lm-eval's own default is 0-shot)")
    endpoint = None
    if args.endpoint:
        from seekforge.llm_client import endpoint_from_args

        endpoint = endpoint_from_args(args)
    model = open_model(
        args.model_dir,
        adapter=args.adapter,
        tokenizer_dir=args.tokenizer,
        endpoint=endpoint,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_length=args.max_length,
        add_bos=args.add_bos,
    )
    try:
        out = evaluate(model, cfg, tasks)
    finally:
        model.close()
    out_dir = Path(args.out or Path("runs") / "eval" / model.name)
    report.write_outputs(out_dir, out.results, out.samples)
    if model.client is not None:  # what the endpoint cost: requests, cache hits, failures, tokens
        from seekforge.utils import atomic_write_text

        atomic_write_text(out_dir / "report.json", json.dumps(model.client.report(), indent=2) + "\n")
        print(f"endpoint: {model.client.progress_line()}")
    print(report.summary_table(out.results))
    print(f"results: {out_dir / 'results.json'} ({out.results['seconds']:.1f} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="benchmarks (MMLU, CMMLU, C-Eval), perplexity, generation metrics; --compare runs",
        description="Evaluate a model directory (seekforge or any transformers causal LM, optionally with "
        "--adapter) or an OpenAI-compatible --endpoint: multiple-choice benchmarks scored like "
        "lm-evaluation-harness, perplexity / bits per byte, generation tasks. Writes OUT/results.json, "
        "OUT/samples/TASK.jsonl and OUT/results.md.",
    )
    p.add_argument("model_dir", nargs="?", help="model directory (not needed with --endpoint or --compare)")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma list: mmlu, cmmlu, ceval, or TASK:SUBJECT (e.g. cmmlu:chinese_history,mmlu:anatomy)",
    )
    p.add_argument(
        "--task-file",
        action="append",
        default=[],
        metavar="FILE",
        help="your own multiple-choice .csv/.jsonl (question, 2-10 choices, answer); repeatable",
    )
    p.add_argument(
        "--shots",
        type=int,
        default=5,
        help="few-shot examples from each subject's dev split (default 5; lm-eval's default is 0)",
    )
    p.add_argument("--limit", type=int, default=None, help="first N questions of each subject")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding mmlu/, cmmlu/, ceval/ as distributed "
        "(default: $SEEKFORGE_EVAL_DATA or ~/.cache/seekforge/eval)",
    )
    p.add_argument(
        "--ppl",
        nargs="+",
        default=[],
        metavar="PATH",
        help="perplexity / bits per byte on files or folders `data prepare` reads, or token shard "
        "dirs from `data tokenize` (val split, else train); one result per PATH",
    )
    p.add_argument(
        "--ppl-stride",
        type=int,
        default=None,
        help="sliding-window stride in tokens for texts longer than the window (default: half the window)",
    )
    p.add_argument(
        "--gen",
        nargs="+",
        default=[],
        metavar="FILE",
        help="generation tasks: .jsonl of {prompt, reference} or {messages[, reference]}; BLEU, "
        "ROUGE-1/2/L, exact match",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation length limit")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (request i uses seed + i)")
    p.add_argument("--out", default=None, help="output directory (default: runs/eval/MODEL_NAME)")
    p.add_argument("--adapter", default=None, help="a PEFT / seekforge adapter dir (from `seekforge sft`)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer dir (default: the model's; required with --endpoint unless MODEL_DIR is given)",
    )
    from seekforge.llm_client import add_endpoint_args

    # Scores are measurements of what the endpoint serves now, so nothing is cached unless asked.
    add_endpoint_args(p, required=False, cache_help="response cache (sqlite), so a rerun of the same "
                      "requests costs nothing (default: none; evaluation asks the endpoint every time)")
    p.add_argument("--endpoint-model", dest="model", help=argparse.SUPPRESS)  # the earlier name of --model
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16")
    p.add_argument("--batch-size", type=int, default=8, help="questions scored per forward")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="context window in tokens (default: the "
        "model config's; longer prompts are left-truncated and counted)",
    )
    p.add_argument(
        "--add-bos",
        type=_bool_or_auto,
        default=None,
        metavar="auto|true|false",
        help="prepend BOS when encoding (default auto: the tokenizer's own setting, as lm-eval's hf)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="DIR",
        help="print the results of several --out dirs side by side with deltas, and exit",
    )
    p.set_defaults(func=run_eval)
