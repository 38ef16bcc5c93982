"""``seekforge train [CONFIG] [--set k=v ...] [--resume [CKPT]]``: pretrain (or continue training) a model.

Runs single-process, or under ``torchrun --nproc-per-node N -m seekforge train ...`` with DDP or
FSDP2 (``--set distributed=fsdp``). Exit status: 0 when training finished (max_steps or early
stopping), 128+signal (130 for Ctrl-C, 143 for SIGTERM) after a signal-triggered checkpoint, so
that job schedulers can tell "done" from "preempted, resume me", 1 on a training error.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seekforge.train.objective import Objective


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The arguments of every command that runs the trainer (``train``, ``sft``, ``distill``)."""
    from seekforge.cli import add_config_args

    add_config_args(p)
    p.add_argument("--resume", nargs="?", const="must", default=None, metavar="CKPT",
                   help="resume from out_dir's latest checkpoint (error if none), or from CKPT. Default: "
                   "resume automatically when out_dir has a checkpoint")
    p.add_argument("--fresh", action="store_true",
                   help="refuse to start if out_dir already holds checkpoints")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def run_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus what ``--resume [CKPT]`` / ``--fresh`` mean for the ``resume`` key."""
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    elif args.fresh:
        overrides.append("resume=never")
    return overrides


def print_config(cfg: Any) -> None:
    import yaml

    from seekforge.config import to_dict

    print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), end="")


def run_trainer(cfg: Any, objective: Objective | None, command: str) -> tuple[int, dict[str, Any] | None]:
    """Train; returns (exit status, summary). 1 and no summary on a :class:`TrainingError`."""
    from seekforge.train.trainer import Trainer, TrainingError

    try:
        summary = Trainer(cfg, objective).run()
    except TrainingError as e:
        print(f"seekforge {command}: error: {e}", file=sys.stderr)
        return 1, None
    sig = summary.get("signal")
    return (128 + int(sig) if sig else 0), summary


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="pretrain a DeepSeek-V3-style model on token shards (or raw text)",
        description="Pretrain or continue training. Examples:\n"
        "  seekforge train configs/train_tiny.yaml --set data.train=shards/ --set out_dir=runs/t\n"
        "  seekforge train --set model=small-moe --set data.train=corpus.txt --set tokenizer=tok/\n"
        "  seekforge train configs/train_tiny.yaml --set data.train.en.path=shards-en \\\n"
        "      --set data.train.en.weight=0.7 --set data.train.zh.path=shards-zh \\\n"
        "      --set data.train.zh.weight=0.3 --set data.schedule.kind=loss   # a mixture\n"
        "  torchrun --nproc-per-node 8 -m seekforge train configs/pretrain_100m.yaml\n"
        "Re-running the same command on the same out_dir resumes from its latest checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from seekforge.train.config import load_train_config

    cfg = load_train_config(args.config, run_overrides(args))
    if args.print_config:
        print_config(cfg)
        return 0
    return run_trainer(cfg, None, "train")[0]
