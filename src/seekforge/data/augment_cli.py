"""``seekforge data augment`` and ``seekforge data synth``: the CLI of :mod:`.augment` and :mod:`.synth`.

Both take the model flags of :func:`seekforge.llm_client.add_endpoint_args`, print a one-line
summary and leave ``report.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json

from seekforge.data.cli import data_verbs
from seekforge.llm_client import add_endpoint_args, endpoint_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    verbs = data_verbs(subparsers)
    _register_augment(verbs)
    _register_synth(verbs)


def _register_augment(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "augment",
        help="make variants of records: EDA (offline), back-translation or paraphrase (through a model)",
        description="Write --n variants of every record of --input into OUT/augmented.jsonl, keeping labels "
        "and answers, with source_id and augment_method on each; variants too similar to, too different "
        "from or in another language than their source are dropped and counted in OUT/report.json.",
    )
    p.add_argument("--method", required=True, choices=("eda", "backtranslate", "paraphrase"))
    p.add_argument(
        "--input",
        "-i",
        nargs="+",
        action="extend",
        default=[],
        required=True,
        metavar="PATH",
        help="records: alpaca/sharegpt/openai SFT data or {text, label, ...} records, any format "
        "the data readers take",
    )
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--n", type=int, default=4, help="variants per record (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--target",
        choices=("prompt", "response", "all"),
        default="prompt",
        help="texts to change: prompts/user turns/text (default), answers, or both",
    )
    p.add_argument(
        "--text-field", default=None, help="the text column of classification records (default text)"
    )
    p.add_argument("--keep-original", action="store_true", help="also write each source record")
    p.add_argument(
        "--overwrite", action="store_true", help="discard another run's outputs and cache in --out"
    )
    g = p.add_argument_group("eda")
    for op, what in (
        ("sr", "synonym replacement"),
        ("ri", "random insertion"),
        ("rs", "random swap"),
        ("rd", "random deletion"),
    ):
        g.add_argument(f"--{op}", type=float, default=0.1, help=f"{what} rate in [0, 1] (default 0.1)")
    g.add_argument(
        "--synonyms",
        default=None,
        metavar="FILE",
        help="extra synonym groups, one per line (words separated by spaces or commas)",
    )
    g = p.add_argument_group("backtranslate / paraphrase")
    g.add_argument("--pivot", default=None, help="pivot language (default: en, or zh for English text)")
    g.add_argument("--instruction", default=None, help="paraphrase instruction (default: one per language)")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--max-tokens", type=int, default=512)
    g = p.add_argument_group("filters")
    g.add_argument(
        "--max-similarity",
        type=float,
        default=0.9,
        help="drop variants whose MinHash Jaccard to the source is at least this (default 0.9)",
    )
    g.add_argument(
        "--length-ratio",
        type=float,
        nargs=2,
        default=(0.5, 2.0),
        metavar=("MIN", "MAX"),
        help="keep variants whose length / source length is in [MIN, MAX] (default 0.5 2.0)",
    )
    g.add_argument(
        "--allow-language-change",
        action="store_true",
        help="keep variants in another language than their source",
    )
    add_endpoint_args(p, required=False)
    p.set_defaults(func=run_augment)


def run_augment(args: argparse.Namespace) -> int:
    from seekforge.data.augment import AugmentConfig, augment
    from seekforge.data.augment_eda import EDAConfig
    from seekforge.data.augment_run import VariantChecks

    cfg = AugmentConfig(
        method=args.method,
        inputs=args.input,
        out=args.out,
        n=args.n,
        seed=args.seed,
        target=args.target,
        text_field=args.text_field,
        keep_original=args.keep_original,
        eda=EDAConfig(sr=args.sr, ri=args.ri, rs=args.rs, rd=args.rd, synonyms=args.synonyms),
        pivot=args.pivot,
        instruction=args.instruction,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        checks=VariantChecks(
            max_similarity=args.max_similarity,
            min_length_ratio=args.length_ratio[0],
            max_length_ratio=args.length_ratio[1],
            same_language=not args.allow_language_change,
        ),
        overwrite=args.overwrite,
    )
    client_cfg = endpoint_from_args(args) if args.endpoint else None
    report = augment(cfg, client_cfg)
    print(
        f"kept {report['kept']} of {report['variants_made']} variants of {report['records_in']} records "
        f"-> {report['output']}; dropped {json.dumps(report['dropped'])}; {report['requests']} requests, "
        f"{report['cache_hits']} cache hits, {report['failed']} failed"
    )
    return 0


def _register_synth(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "synth",
        help="write new instruction data with a model: self-instruct or evol-instruct",
        description="Generate --n instruction/answer pairs from seed tasks into OUT/synth.jsonl (alpaca or "
        "sharegpt, readable by `seekforge sft`), deduplicated against the seeds and each other and "
        "filtered (language, length, refusals, optional judge); counts in OUT/report.json. Re-running "
        "the same command resumes from the response cache.",
    )
    p.add_argument("--method", required=True, choices=("self-instruct", "evol-instruct"))
    p.add_argument(
        "--seeds",
        nargs="+",
        action="extend",
        default=[],
        required=True,
        metavar="FILE",
        help="seed tasks: alpaca/sharegpt/openai files",
    )
    p.add_argument("--n", type=int, required=True, help="tasks to write")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--format", choices=("alpaca", "sharegpt"), default="alpaca")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch", type=int, default=16, help="candidates per round, sent in parallel (default 16)"
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="instruction requests before giving up (default 4*n + batch)",
    )
    p.add_argument(
        "--examples", type=int, default=8, help="self-instruct: tasks shown per prompt (default 8)"
    )
    p.add_argument("--temperature", type=float, default=0.9, help="when writing instructions (default 0.9)")
    p.add_argument("--answer-temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--min-chars", type=int, default=4, help="shortest instruction kept (characters)")
    p.add_argument("--max-chars", type=int, default=2000, help="longest instruction kept (characters)")
    p.add_argument("--keep-truncated", action="store_true", help="keep answers cut at --max-tokens")
    p.add_argument(
        "--langs",
        nargs="+",
        default=None,
        help="languages kept, e.g. zh en (default: the seeds' languages; 'any' = no check)",
    )
    p.add_argument(
        "--max-similarity",
        type=float,
        default=0.9,
        help="evol-instruct: drop an evolution whose Jaccard to its parent is at least this",
    )
    p.add_argument(
        "--judge", action="store_true", help="score answers 1-10 with a model, keep >= --judge-min"
    )
    p.add_argument("--judge-min", type=float, default=7.0)
    p.add_argument(
        "--overwrite", action="store_true", help="discard another run's outputs and cache in --out"
    )
    add_endpoint_args(p)
    add_endpoint_args(p, prefix="judge-")
    p.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from seekforge.data.synth import SynthConfig, synth

    cfg = SynthConfig(
        method=args.method,
        seeds=args.seeds,
        n=args.n,
        out=args.out,
        format=args.format,
        seed=args.seed,
        batch=args.batch,
        max_attempts=args.max_attempts,
        examples=args.examples,
        temperature=args.temperature,
        answer_temperature=args.answer_temperature,
        max_tokens=args.max_tokens,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        langs=args.langs,
        keep_truncated=args.keep_truncated,
        max_similarity=args.max_similarity,
        judge=args.judge,
        judge_min=args.judge_min,
        overwrite=args.overwrite,
    )
    judge_cfg = (
        endpoint_from_args(args, prefix="judge-")
        if args.judge and (args.judge_endpoint or args.judge_model)
        else None
    )
    report = synth(cfg, endpoint_from_args(args), judge_cfg)
    print(
        f"wrote {report['accepted']}/{report['requested']} tasks -> {report['output']}; dropped "
        f"{json.dumps(report['dropped'])}; {report['requests']} requests, {report['cache_hits']} cache hits, "
        f"{report['failed']} failed"
    )
    return 0
