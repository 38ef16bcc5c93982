"""Benchmark accuracy at the trainer's eval steps (``eval_tasks`` / ``eval_limit`` in train and sft).

The same scoring as ``seekforge eval`` (lm-eval's prompts, few-shot rule and log-likelihood of the
answer letters) on the model being trained, over a small subset: the first ``eval_limit``
questions of each subject named in ``eval_tasks``. The accuracies come back as ``bench_<task>_acc``
and are logged with the other eval metrics (metrics.jsonl, TensorBoard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seekforge.config import ConfigError


def check_settings(tasks: str, data_dir: str | None) -> None:
    """Fail at start-up (not at the first eval) on an unknown task or a missing data folder."""
    from seekforge.eval.tasks import DEFAULT_DATA_DIR, check_data_dir, parse_tasks

    try:
        specs = parse_tasks(tasks)
        check_data_dir(Path(data_dir) if data_dir else DEFAULT_DATA_DIR, specs)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"eval_tasks: {e}") from None


def benchmark_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: str,
    limit: int | None,
    shots: int,
    data_dir: str | None,
    batch_size: int = 8,
) -> dict[str, float]:
    """``{"bench_<task>_acc": accuracy}`` of ``model`` on the subset; the model's train/eval mode is kept."""
    from seekforge.eval.models import context_length
    from seekforge.eval.runner import EvalConfig, collect_subjects, run_multiple_choice
    from seekforge.eval.scoring import Tokens, scorer_class

    if tokenizer is None:
        raise ConfigError("eval_tasks: scoring benchmarks needs the run's tokenizer (set `tokenizer`)")
    cfg = EvalConfig(
        tasks=tasks, shots=shots, limit=limit, data_dir=data_dir, batch_size=batch_size, progress=False
    )
    subjects = collect_subjects(cfg)
    was_training = model.training
    cls = scorer_class(model)
    try:
        scorer = cls(model, context_length(model.config), batch_size, "training")
        out = run_multiple_choice(Tokens(tokenizer), scorer, subjects, cfg)
    finally:
        model.train(was_training)
    return {f"bench_{task}_acc": r["acc"] for task, r in out.results.items()}
