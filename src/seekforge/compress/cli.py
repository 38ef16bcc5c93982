"""``seekforge quantize`` and ``seekforge prune``.

    seekforge quantize runs/x/final --method int8 --out runs/x/int8
    seekforge quantize runs/x/final --method awq --group-size 128 --calib val.jsonl --out runs/x/awq
    seekforge prune runs/x/final --method experts --ratio 0.25 --data val.jsonl --out runs/x/experts75
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seekforge.utils import human_bytes, human_count


def register(subparsers: argparse._SubParsersAction) -> None:
    from seekforge.compress.quantize import METHODS

    q = subparsers.add_parser("quantize", help="weight-only int8 / int4 / AWQ quantization of a model dir")
    q.add_argument("model_dir", help="seekforge (HF DeepSeek-V3) model directory")
    q.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    q.add_argument("--group-size", type=int, default=128,
                   help="int4/awq: input columns per scale (default 128)")
    q.add_argument("--calib", help="calibration text (txt/jsonl/...). awq needs text: without --calib it "
                   "uses the validation split that `seekforge train` tokenized for this model (RUN/data). "
                   "With text, every method also reports bits per byte before/after")
    q.add_argument("--calib-docs", type=int, default=256, help="documents read from --calib (default 256)")
    q.add_argument("--lm-head", choices=("keep", "int8"), default="keep",
                   help="keep lm_head in the model's precision (default) or quantize it to int8")
    q.add_argument("--keep", action="append", default=[], metavar="NAME",
                   help="leaf module name to keep in high precision (repeatable, e.g. --keep o_proj)")
    q.add_argument("--out", required=True, help="output directory")
    q.set_defaults(func=run_quantize)
    register_prune(subparsers)


def run_quantize(args: argparse.Namespace) -> int:
    import torch

    from seekforge.compress.data import (
        bits_per_byte,
        read_texts,
        run_validation_data,
        shard_windows,
        token_windows,
    )
    from seekforge.compress.quantize import QuantizeSettings, directory_bytes, quantize_model, save_quantized
    from seekforge.model import load_model
    from seekforge.tokenizer import load_tokenizer

    settings = QuantizeSettings(method=args.method, group_size=args.group_size, lm_head=args.lm_head,
                                keep=list(args.keep))
    settings.validate()
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
    windows, calib_name = None, args.calib
    tokenizer = load_tokenizer(model_dir)
    if args.calib:
        windows = token_windows(tokenizer, read_texts(args.calib, args.calib_docs), seq_len=256)
    elif args.method == "awq":
        val = run_validation_data(model_dir)
        if val is None:
            raise ValueError("--method awq needs calibration text: pass --calib PATH (a few hundred "
                             f"documents like the model's validation data). {model_dir} records none: it is "
                             "not a checkpoint of a `seekforge train` run whose RUN/data holds a val split")
        # the split's first documents (about --calib-docs x 256 tokens) calibrate; all of it is measured
        windows = shard_windows(val, "val", seq_len=256, max_tokens=args.calib_docs * 256)
        calib_name = f"{val} (val split)"
        print(f"calibration: the training run's validation split {val}")
    model = load_model(model_dir, device="cpu", dtype=torch.float32)
    before = bits_per_byte(model, windows) if windows and windows.num_bytes else None
    params = model.num_parameters()
    quantize_model(model, settings, windows.rows if windows else None)
    after = bits_per_byte(model, windows) if before is not None else None
    save_quantized(model, args.out, tokenizer=model_dir)
    size_in, size_out = directory_bytes(model_dir), directory_bytes(args.out)
    print(f"{args.method}: {human_count(params)} parameters, weights {human_bytes(size_in)} -> "
          f"{human_bytes(size_out)} ({size_out / size_in:.1%})")
    if before is not None:
        print(f"bits per byte on {calib_name} ({windows.num_docs} docs): {before:.4f} -> {after:.4f} "
              f"({(after - before) / before:+.2%})")
    print(f"wrote {args.out}")
    return 0


def register_prune(subparsers: argparse._SubParsersAction) -> None:
    from seekforge.compress.prune import METHODS

    p = subparsers.add_parser("prune", help="magnitude / structured / expert pruning of a model directory")
    p.add_argument("model_dir", help="seekforge (HF DeepSeek-V3) model directory")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--ratio", type=float, required=True, help="fraction to remove, in (0, 1)")
    p.add_argument("--scope", choices=("global", "layer"), default="global",
                   help="magnitude: one threshold over all matrices (global) or the ratio per matrix")
    p.add_argument("--structure", choices=("ffn", "heads", "both"), default="ffn",
                   help="structured: remove FFN channels (default), attention heads, or both")
    p.add_argument("--iterations", type=int, default=1, help="prune in K rounds (default 1)")
    p.add_argument("--recover-steps", type=int, default=0,
                   help="trainer steps on --data after each round (default 0: no recovery)")
    p.add_argument("--lr", type=float, default=3e-4, help="recovery learning rate (default 3e-4)")
    p.add_argument("--data", help="text for bits per byte, expert statistics and recovery (txt/jsonl/...)")
    p.add_argument("--data-docs", type=int, default=256, help="documents read from --data for measuring")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run_prune)


def run_prune(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from seekforge.compress.data import read_texts, token_windows
    from seekforge.compress.prune import PruneSettings, prune_model
    from seekforge.compress.quantize import directory_bytes
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    settings = PruneSettings(method=args.method, ratio=args.ratio, scope=args.scope, structure=args.structure,
                             iterations=args.iterations, recover_steps=args.recover_steps)
    settings.validate()
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
    tokenizer = load_tokenizer(model_dir)
    windows = None
    if args.data:
        windows = token_windows(tokenizer, read_texts(args.data, args.data_docs, "--data"), 256)
    model = load_model(model_dir, device="cpu", dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="seekforge-prune-") as work:
        model, report = prune_model(model, settings, windows, args.data, model_dir, Path(work), lr=args.lr)
    save_model(model, args.out, tokenizer=model_dir)
    size_in, size_out = directory_bytes(model_dir), directory_bytes(args.out)
    kind = "non-zero parameters" if args.method == "magnitude" else "parameters"
    print(f"{args.method} {args.ratio:g} in {args.iterations} round(s): {kind} "
          f"{human_count(report.params_before)} -> {human_count(report.params_after)}; "
          f"weights {human_bytes(size_in)} -> {human_bytes(size_out)}")
    if report.sparsity is not None:
        print(f"sparsity of the prunable matrices: {report.sparsity:.1%} "
              "(stored dense: the file does not shrink)")
    if args.method == "experts":
        print(f"routed experts per layer: {report.n_routed_experts}")
    if report.bpb_before is not None:
        print(f"bits per byte on {args.data} ({windows.num_docs} docs): {report.bpb_before:.4f} -> "
              f"{report.bpb_after:.4f} ({(report.bpb_after - report.bpb_before) / report.bpb_before:+.2%})")
    print(f"wrote {args.out}")
    return 0
