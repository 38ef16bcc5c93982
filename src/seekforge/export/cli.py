"""``seekforge export``: write a model directory in another runtime's format.

    seekforge export runs/x/final --format gguf --outtype q8_0 --out x-q8_0.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("gguf",)


def register(subparsers: argparse._SubParsersAction) -> None:
    from seekforge.export.gguf import OUTTYPES

    p = subparsers.add_parser("export", help="export a model directory to GGUF (llama.cpp)")
    p.add_argument("model", help="model directory (config.json + safetensors, tokenizer files)")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--outtype", default="f32", choices=OUTTYPES,
                   help="weight type of the matrices (norms and the router stay f32); default f32")
    p.add_argument("--out", required=True, help="output file, e.g. model.gguf")
    p.add_argument("--tokenizer", help="tokenizer directory, if the model directory has none")
    p.add_argument("--tokenizer-pre", dest="tokenizer_pre",
                   help="llama.cpp pre-tokenizer name written as tokenizer.ggml.pre "
                        "(default: detected from the tokenizer's split rules)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from seekforge.export.gguf import export_gguf
    from seekforge.utils import human_bytes

    out = export_gguf(args.model, args.out, args.outtype, tokenizer_dir=args.tokenizer,
                      tokenizer_pre=args.tokenizer_pre)
    print(f"wrote {out} ({args.outtype}, {human_bytes(Path(out).stat().st_size)})")
    return 0
