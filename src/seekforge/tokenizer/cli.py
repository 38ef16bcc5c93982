"""``seekforge tokenizer train`` and ``seekforge tokenizer eval``.

    seekforge tokenizer train --input data/ more.jsonl --vocab-size 32000 --out tok/
    seekforge tokenizer eval --tokenizer tok/ held_out_zh.jsonl held_out_en.txt --compare other_tok/

``train`` reads the same inputs as ``data prepare`` (files, folders, globs, compressed files,
``save_to_disk`` folders, or a ``data prepare`` output) through ``seekforge.data.readers``.
Fine-tuning files (alpaca, sharegpt, OpenAI ``messages``; see :mod:`seekforge.finetune.datasets`)
are recognised by their keys when their records have no ``text`` field: each row then
contributes the text of all its messages.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from seekforge.tokenizer.train import NUM_RESERVED, PRETOKENIZERS

if TYPE_CHECKING:
    from seekforge.data.readers import ReadStats


@dataclass
class TokenizerTrainConfig:
    """Settings of ``seekforge tokenizer train`` (YAML keys and ``--set`` names)."""

    input: list[str] = field(default_factory=list)
    out: str = ""
    vocab_size: int = 32000
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    txt_mode: Literal["file", "paragraphs", "lines"] = "file"
    pretokenizer: str = "seekforge"
    min_frequency: int = 2
    max_token_length: int | None = None
    num_reserved: int = NUM_RESERVED
    # Training-corpus caps: BPE training memory grows with the number of distinct pre-tokens.
    max_chars: int | None = 2_000_000_000
    doc_max_chars: int | None = 10_000

    def validate(self) -> None:
        from seekforge.config import ConfigError

        if not self.input:
            raise ConfigError("input: required (--input PATH ...)")
        if not self.out:
            raise ConfigError("out: required (--out DIR)")
        if self.pretokenizer not in PRETOKENIZERS:
            raise ConfigError(f"pretokenizer: {self.pretokenizer!r} is not one of {list(PRETOKENIZERS)}")
        if self.min_frequency < 0 or self.num_reserved < 0:
            raise ConfigError("min_frequency and num_reserved must be >= 0")


def _config_from_args(cls, args: argparse.Namespace, flags: dict):
    """defaults < YAML file < command-line flags < ``--set`` overrides."""
    from seekforge.config import deep_merge, load_config, read_yaml

    flags = {k: v for k, v in flags.items() if v is not None}
    base = deep_merge(read_yaml(args.config), flags) if args.config else flags
    return load_config(cls, None, args.overrides, base=base)


def _chat_format(path: Path, text_fields: list[str]) -> str | None:
    """The fine-tuning format of a record file whose records lack ``text_fields``, else None."""
    from seekforge.data.readers import iter_records
    from seekforge.finetune.datasets import DataError, detect_format

    first = next((r.value for r in iter_records(path) if isinstance(r.value, dict)), None)
    if first is None or all(f in first for f in text_fields):
        return None
    try:
        fmt = detect_format([first], str(path))
    except DataError:
        return None  # not a chat file either: the document reader names the missing field
    return None if fmt == "text" else fmt


def training_texts(inputs: list[str], text_fields: list[str], txt_mode: str,
                   stats: ReadStats) -> Iterator[str]:
    """Documents to train on: ``text_fields`` of each record, or the messages of fine-tuning rows."""
    from seekforge.data.readers import expand_inputs, is_supported_file, iter_documents, iter_records
    from seekforge.finetune.datasets import chat_text

    for kind, path in expand_inputs(inputs, stats):
        fmt = _chat_format(path, text_fields) if kind == "file" and is_supported_file(path) else None
        if fmt is None:
            yield from (d.text for d in iter_documents(path, text_fields=text_fields, txt_mode=txt_mode,
                                                       stats=stats))
            continue
        for rec in iter_records(path, stats=stats):
            text = chat_text(rec.value, fmt)
            if text is None:
                stats.malformed += 1
                stats.problem(f"{rec.where}: {rec.error or f'not a valid {fmt} row'}")
            elif text.strip():
                stats.docs += 1
                yield text


def _train(args: argparse.Namespace) -> int:
    from seekforge.data.readers import ReadStats
    from seekforge.tokenizer.train import train_tokenizer

    cfg = _config_from_args(TokenizerTrainConfig, args, {
        "input": args.input, "out": args.out, "vocab_size": args.vocab_size, "text_fields": args.text_fields,
        "txt_mode": args.txt_mode, "pretokenizer": args.pretokenizer, "min_frequency": args.min_frequency,
        "max_chars": args.max_chars})
    stats = ReadStats()
    texts = training_texts(cfg.input, cfg.text_fields, cfg.txt_mode, stats)
    out = train_tokenizer(texts, cfg.vocab_size, cfg.out, pretokenizer=cfg.pretokenizer,
                          min_frequency=cfg.min_frequency, max_token_length=cfg.max_token_length,
                          num_reserved=cfg.num_reserved, max_chars=cfg.max_chars,
                          doc_max_chars=cfg.doc_max_chars)
    info = json.loads((out / "seekforge_tokenizer.json").read_text(encoding="utf-8"))
    print(f"wrote {out}: vocab {info['vocab_size']} ({info['pretokenizer']} pre-tokenizer), trained on "
          f"{info['train_docs']} docs / {info['train_bytes'] / 1e6:.2f} MB in {info['train_seconds']:.1f}s"
          + (f"; {stats.malformed} malformed records skipped" if stats.malformed else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from seekforge.tokenizer.evaluate import evaluate, format_table
    from seekforge.utils import atomic_write_text

    result = evaluate(args.tokenizer, args.files, compare=args.compare,
                      text_fields=args.text_fields or ["text"], txt_mode=args.txt_mode or "file")
    print(format_table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from seekforge.cli import add_config_args

    group = subparsers.add_parser("tokenizer", help="train and evaluate a byte-level BPE tokenizer")
    group.set_defaults(func=lambda args: group.print_help() or 1)
    sub = group.add_subparsers(dest="tokenizer_command", metavar="STEP")

    p = sub.add_parser("train", help="train a byte-level BPE tokenizer (HF tokenizer dir)",
                       description="Train a byte-level BPE with zh+en-aware pre-tokenisation, special tokens "
                       "and a chat template; writes an HF tokenizer directory.")
    p.add_argument("--input", nargs="+", action="extend", metavar="PATH",
                   help="files, folders, globs or a `data prepare` output")
    p.add_argument("--vocab-size", type=int, metavar="N",
                   help="total vocabulary incl. specials (default 32000)")
    p.add_argument("--out", metavar="DIR", help="output tokenizer directory (replaced atomically)")
    p.add_argument("--text-field", dest="text_fields", action="append", metavar="NAME",
                   help="field(s) holding the text (repeatable; default: text)")
    p.add_argument("--txt-mode", choices=["file", "paragraphs", "lines"],
                   help=".txt: one doc per file, paragraph or line")
    p.add_argument("--pretokenizer", choices=list(PRETOKENIZERS),
                   help="seekforge (zh+en splits, default), bytelevel (the GPT-2 regex, for comparison) or "
                        "deepseek-v3 (DeepSeek-V3's split rules: llama.cpp tokenizes text exactly alike)")
    p.add_argument("--min-frequency", type=int, metavar="N", help="min pair count to merge (default 2)")
    p.add_argument("--max-chars", type=int, metavar="N", help="stop reading after N characters (default 2e9)")
    add_config_args(p)
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="bytes/token per file and language, optionally vs another tokenizer")
    e.add_argument("files", nargs="+", metavar="FILE", help="text files/folders/globs to measure on")
    e.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory (any HF one)")
    e.add_argument("--compare", metavar="DIR", help="a second tokenizer directory, shown side by side")
    e.add_argument("--text-field", dest="text_fields", action="append", metavar="NAME")
    e.add_argument("--txt-mode", choices=["file", "paragraphs", "lines"])
    e.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    e.set_defaults(func=_eval)
