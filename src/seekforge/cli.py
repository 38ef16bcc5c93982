"""The ``seekforge`` command line: one entry point, one subcommand per pipeline stage.

Each stage owns a small ``cli`` module with ``register(subparsers)`` that adds its subcommand(s)
and sets ``func`` on the parser; this file only collects them. ``python -m seekforge ...`` runs
the same code, so ``torchrun -m seekforge train ...`` works.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from seekforge import __version__
from seekforge.config import ConfigError

# Modules that contribute subcommands, with the top-level commands each one adds, in the order
# they appear in ``seekforge --help``. Only the modules of the command being run are imported, so
# ``seekforge data prepare`` does not pay for importing torch or the server.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "seekforge.model.cli": ("model",),
    "seekforge.demo": ("demo",),
    "seekforge.tokenizer.cli": ("tokenizer",),
    "seekforge.data.cli": ("data",),  # data prepare
    "seekforge.data.tokenize": ("data",),  # data tokenize
    "seekforge.data.augment_cli": ("data",),  # data augment, data synth
    "seekforge.train.cli": ("train",),
    "seekforge.infer.chat": ("chat",),
    "seekforge.serve.cli": ("serve",),
    "seekforge.serve.abreport": ("ab-report",),
    "seekforge.finetune.cli": ("sft", "dpo", "grpo", "distill", "merge"),
    "seekforge.plan.cli": ("plan",),
    "seekforge.export.cli": ("export",),
    "seekforge.eval.cli": ("eval",),
    "seekforge.compress.cli": ("quantize", "prune"),
}


# Environment defaults a command wants set before torch is imported (torch reads them once); a value
# the user exported wins. serve/chat: CPU tensors of 2 MiB and more in transparent huge pages. bs=1
# decode streams most of the weights every token, and with 4 KiB pages the TLB misses show: compiled
# small-moe decode ran at 450-650 tok/s from process to process without, ~600 steady with (LOG.md).
COMMAND_ENV: dict[str, dict[str, str]] = {
    "serve": {"THP_MEM_ALLOC_ENABLE": "1"},
    "chat": {"THP_MEM_ALLOC_ENABLE": "1"},
}


def _modules_for(argv: list[str]) -> list[str]:
    command = next((a for a in argv if not a.startswith("-")), None)
    for key, value in COMMAND_ENV.get(command or "", {}).items():
        os.environ.setdefault(key, value)
    wanted = [m for m, cmds in COMMAND_MODULES.items() if command in cmds]
    return wanted or list(COMMAND_MODULES)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seekforge",
        description="Build your own DeepSeek-style language model: data -> tokenizer -> pretrain -> "
        "fine-tune -> evaluate -> export -> serve.",
    )
    parser.add_argument("--version", action="version", version=f"seekforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _modules_for(sys.argv[1:] if argv is None else argv):
        importlib.import_module(name).register(sub)
    return parser


def add_config_args(parser: argparse.ArgumentParser, config_positional: bool = True) -> None:
    """The shared ``[CONFIG] [--set k=v ...]`` arguments of every configurable command."""
    if config_positional:
        parser.add_argument("config", nargs="?", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set lr=3e-4 "
                        "--set model.q_lora_rank=null")


def main(argv: list[str] | None = None) -> int:
    from seekforge.utils import setup_logging

    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        print(f"seekforge {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
