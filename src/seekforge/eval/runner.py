"""One evaluation run: tasks -> scores -> results dict + per-question samples (the CLI writes them)."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seekforge.eval.models import EvalModel
from seekforge.eval.multiple_choice import aggregate, score_subjects
from seekforge.eval.scoring import Scorer, Tokens
from seekforge.eval.tasks import (
    DEFAULT_DATA_DIR,
    Subject,
    TaskSpec,
    check_data_dir,
    load_benchmark,
    load_task_file,
    parse_tasks,
)

log = logging.getLogger("seekforge.eval")


@dataclass
class EvalConfig:
    """What to evaluate (the ``seekforge eval`` flags)."""

    tasks: str = ""  # "cmmlu,ceval,mmlu:anatomy"
    task_files: list[str] = field(default_factory=list)
    shots: int = 5
    limit: int | None = None  # first N questions of each subject
    data_dir: str | None = None
    batch_size: int = 8  # questions (or perplexity windows) per forward
    progress: bool = True
    ppl: list[str] = field(default_factory=list)  # perplexity inputs (files, folders, token shards)
    ppl_stride: int | None = None  # sliding-window stride; None = half the window
    gen: list[str] = field(default_factory=list)  # generation task files (.jsonl)
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class RunOutput:
    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]]


def collect_subjects(cfg: EvalConfig) -> dict[str, list[Subject]]:
    """Read every requested task (fails before the model loads when a file is missing or malformed)."""
    if cfg.shots < 0:
        raise ValueError(f"--shots must be >= 0, got {cfg.shots}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {cfg.limit}")
    specs: list[TaskSpec] = parse_tasks(cfg.tasks) if cfg.tasks else []
    data_dir = Path(cfg.data_dir) if cfg.data_dir else DEFAULT_DATA_DIR
    if specs:
        check_data_dir(data_dir, specs)
    out = {s.name: load_benchmark(data_dir, s, cfg.shots, cfg.limit) for s in specs}
    for f in cfg.task_files:
        subjects = load_task_file(Path(f), cfg.shots, cfg.limit)
        if subjects[0].task in out:
            raise ValueError(f"--task-file {f}: a task named {subjects[0].task!r} is already requested")
        out[subjects[0].task] = subjects
    return out


class Progress:
    """A progress bar with ETA on stderr (tqdm), off when not wanted."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="q", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_multiple_choice(
    tokens: Tokens, scorer: Scorer, tasks: dict[str, list[Subject]], cfg: EvalConfig
) -> RunOutput:
    results: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for task, subjects in tasks.items():
        total = sum(len(s.questions) for s in subjects)
        bar = Progress(total, task, cfg.progress)
        try:
            scored = score_subjects(subjects, tokens, scorer, cfg.batch_size, bar)
        finally:
            bar.close()
        results[task] = aggregate(subjects, scored, len(subjects[0].shots) if subjects else cfg.shots)
        if results[task]["truncated"]:
            log.warning(
                "%s: %d questions were longer than the %d-token window and were left-truncated",
                task,
                results[task]["truncated"],
                scorer.window - 1,
            )
        samples[task] = [s.to_json() for s in scored]
    return RunOutput(results, samples)


def evaluate(model: EvalModel, cfg: EvalConfig, tasks: dict[str, list[Subject]] | None = None) -> RunOutput:
    """Run everything ``cfg`` asks for on ``model``; returns results.json's content and the samples."""
    from seekforge.eval.generation import read_gen_file, run_generation
    from seekforge.eval.models import GenSettings
    from seekforge.eval.perplexity import perplexity

    t0 = time.perf_counter()
    tasks = collect_subjects(cfg) if tasks is None else tasks
    check_unique_names(cfg)
    for path in cfg.gen:  # read before anything runs: a bad record fails fast
        read_gen_file(path)
    # Generation first: its engine thread ends (and frees its OpenMP pool) before scoring starts on
    # this thread, so the two never run side by side (see models.open_model).
    gen_results: dict[str, Any] = {}
    gen_samples: dict[str, list[dict[str, Any]]] = {}
    settings = GenSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    for path in cfg.gen:
        log.info("generation: %s", path)
        res, rows = run_generation(model, path, settings, cfg.limit)
        gen_results[Path(path).name] = res
        gen_samples[f"gen-{Path(path).stem}"] = rows
    mc = run_multiple_choice(model.tokens, model.scorer, tasks, cfg)
    results: dict[str, Any] = {"tasks": mc.results}
    samples = {**mc.samples, **gen_samples}
    if cfg.ppl:
        results["ppl"] = {}
        for path in cfg.ppl:
            log.info("perplexity: %s", path)
            results["ppl"][Path(path).name] = perplexity(
                path, model.tokens, model.scorer, cfg.ppl_stride, cfg.batch_size
            ).to_json()
    if cfg.gen:
        results["gen"] = gen_results
    results.update(
        {
            "model": model.name,
            "seconds": round(time.perf_counter() - t0, 3),
            "config": {**asdict(cfg), "model": model.info},
        }
    )
    return RunOutput(results, samples)


def check_unique_names(cfg: EvalConfig) -> None:
    """Results are keyed by input file name: two inputs with one name would overwrite each other."""
    for flag, paths in (("--ppl", cfg.ppl), ("--gen", cfg.gen)):
        names = [Path(p).name for p in paths]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"{flag}: several inputs are named {', '.join(dup)}; results are keyed by name")
