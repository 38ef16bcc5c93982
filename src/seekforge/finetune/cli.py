"""``seekforge sft``, ``seekforge dpo``, ``seekforge grpo``, ``seekforge distill`` and ``seekforge merge``.

    seekforge sft configs/sft_identity.yaml --set model=runs/pretrain/final --set template_vars.name=Forge
    seekforge grpo configs/grpo_demo.yaml --set model=runs/sft/final
    seekforge distill configs/distill_logits.yaml
    seekforge merge runs/pretrain/final runs/sft/final --out runs/merged

``sft``, ``dpo``, ``grpo`` and ``distill`` run the pretraining loop
(:class:`seekforge.train.trainer.Trainer`) with another objective, so resume, checkpoints,
logging, eval and torchrun behave exactly as in ``seekforge train`` (``grpo`` runs in one
process). The result is copied to ``OUT_DIR/final/`` (an adapter or a whole model).
Exit codes as ``train``: 0 done, 128+signal after a signal-triggered checkpoint, 1 on an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("seekforge.finetune")


def register(subparsers: argparse._SubParsersAction) -> None:
    from seekforge.train.cli import add_run_args

    sft = subparsers.add_parser(
        "sft",
        help="fine-tune a model on chat/instruction data (full, freeze, LoRA, QLoRA, prefix)",
        description="Supervised fine-tuning on the trainer loop. Examples:\n"
        "  seekforge sft configs/sft_identity.yaml --set model=runs/base --set template_vars.name=Forge\n"
        "  seekforge sft --set model=~/models/Qwen2-0.5B --set data=my.jsonl --set method=lora\n"
        "  seekforge sft --set model=runs/base --set data=alpaca_zh --set dataset_dir=data/\n"
        "Re-running the same command on the same out_dir resumes from its latest checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_args(sft)
    sft.set_defaults(func=run_sft)

    distill = subparsers.add_parser(
        "distill",
        help="distil a teacher into a student (logit KD, or teacher-generated SFT data)",
        description="Knowledge distillation. mode=logits: a*CE + (1-a)*T^2*KL(teacher_T || student_T) "
        "with the teacher online or its top-k log-probs cached; mode=generate: the teacher (a local "
        "model or an OpenAI-compatible endpoint) answers the prompts, then the student is SFT-ed on it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_args(distill)
    distill.set_defaults(func=run_distill)

    dpo = subparsers.add_parser(
        "dpo",
        help="preference-tune a model on chosen/rejected pairs (DPO, IPO, SimPO, ORPO)",
        description="Preference tuning on the trainer loop. Examples:\n"
        "  seekforge dpo configs/dpo_demo.yaml --set model=runs/sft/final --set data=pairs.json\n"
        "  seekforge dpo --set model=runs/sft/final --set data=pairs.jsonl --set loss=simpo --set beta=2\n"
        "  seekforge dpo --set model=runs/sft/final --set data=dpo_en_demo --set dataset_dir=data/\n"
        "Re-running the same command on the same out_dir resumes from its latest checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_args(dpo)
    dpo.set_defaults(func=run_dpo)

    grpo = subparsers.add_parser(
        "grpo",
        help="reinforcement learning with verifiable rewards (GRPO, DeepSeek-R1's recipe)",
        description="GRPO on the trainer loop: sampled completions per prompt through the inference engine, "
        "rule-based rewards, group-normalised advantages, clipped policy-ratio loss. Examples:\n"
        "  seekforge grpo configs/grpo_demo.yaml --set model=runs/sft/final\n"
        "  seekforge grpo configs/grpo_demo.yaml --set task=countdown \\\n"
        "      --set rewards=[countdown,think_format] --set seq_len=192 --set max_completion_tokens=64\n"
        "  seekforge grpo configs/grpo_demo.yaml --set aggregation=dapo --set epsilon_high=0.28\n"
        "Re-running the same command on the same out_dir resumes from its latest checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_args(grpo)
    grpo.set_defaults(func=run_grpo)

    merge = subparsers.add_parser("merge", help="fold a LoRA adapter into its base model (a full model dir)")
    merge.add_argument("base", help="base model directory the adapter was trained on")
    merge.add_argument("adapter", help="adapter directory (e.g. runs/sft/final)")
    merge.add_argument("--out", required=True, help="output model directory")
    merge.set_defaults(func=run_merge)


def publish_final(summary: dict, out_dir: str | Path) -> Path | None:
    """Copy the last checkpoint's model/adapter files (not trainer_state) to ``out_dir/final``."""
    from seekforge.train.checkpoint import STATE_DIR
    from seekforge.utils import atomic_dir

    ckpt = Path(summary["checkpoint"])
    final = Path(out_dir) / "final"
    if int(os.environ.get("RANK", "0")) != 0 or not ckpt.is_dir():
        return None
    with atomic_dir(final) as tmp:
        for item in ckpt.iterdir():
            if item.name == STATE_DIR:
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
    log.info("wrote %s", final)
    return final


def _run(cfg, objective) -> int:
    from seekforge.train.cli import run_trainer

    code, summary = run_trainer(cfg, objective, objective.name)
    if code == 0 and summary is not None:
        publish_final(summary, cfg.out_dir)
    return code


def _load(cls, args: argparse.Namespace):
    from seekforge.config import load_config
    from seekforge.train.cli import print_config, run_overrides

    cfg = load_config(cls, args.config, run_overrides(args))
    if args.print_config:
        print_config(cfg)
        return None
    return cfg


def run_sft(args: argparse.Namespace) -> int:
    from seekforge.finetune.sft import SFTConfig, SFTObjective

    cfg = _load(SFTConfig, args)
    return 0 if cfg is None else _run(cfg, SFTObjective())


def run_dpo(args: argparse.Namespace) -> int:
    from seekforge.finetune.dpo import DPOConfig, DPOObjective

    cfg = _load(DPOConfig, args)
    return 0 if cfg is None else _run(cfg, DPOObjective())


def run_grpo(args: argparse.Namespace) -> int:
    from seekforge.finetune.grpo import GRPOConfig, GRPOObjective

    cfg = _load(GRPOConfig, args)
    if cfg is None:
        return 0
    objective = GRPOObjective()
    try:
        return _run(cfg, objective)
    finally:
        objective.close()


def run_distill(args: argparse.Namespace) -> int:
    from seekforge.finetune.distill import DistillConfig, run_distillation

    cfg = _load(DistillConfig, args)
    return 0 if cfg is None else run_distillation(cfg, _run)


def run_merge(args: argparse.Namespace) -> int:
    from seekforge.finetune.adapters import merge_lora

    out = merge_lora(args.base, args.adapter, args.out)
    print(f"merged {args.adapter} into {args.base} -> {out}")
    return 0
