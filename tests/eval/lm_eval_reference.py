"""Running lm-evaluation-harness 0.4 itself, offline, on the benchmark files: the reference for parity.

lm-eval's own task templates (``mmlu/default/_default_template_yaml``, ``cmmlu/_default_template_yaml``,
``ceval/_default_ceval_yaml``) and its per-subject descriptions are included unchanged; only the
dataset is swapped for local JSONL files holding the rows in the HF datasets' shapes (``cais/mmlu``:
question, subject, choices, answer index; ``haonan-li/cmmlu`` and ``ceval/ceval-exam``: the CSV
columns). The conversion reads cells with the csv module, so every cell stays a string.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval
import yaml

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
TEMPLATE = {
    "mmlu": LM_EVAL_TASKS / "mmlu/default/_default_template_yaml",
    "cmmlu": LM_EVAL_TASKS / "cmmlu/_default_template_yaml",
    "ceval": LM_EVAL_TASKS / "ceval/_default_ceval_yaml",
}
SUBJECT_YAML = {
    "mmlu": "mmlu/default/mmlu_{}.yaml",
    "cmmlu": "cmmlu/cmmlu_{}.yaml",
    "ceval": "ceval/ceval-valid_{}.yaml",
}
SPLIT = {"mmlu": "test", "cmmlu": "test", "ceval": "val"}


def _csv_rows(path: Path, header: bool) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    return rows[1:] if header else rows


def _docs(bench: str, path: Path, subject: str) -> list[dict[str, Any]]:
    if bench == "mmlu":
        return [
            {"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
            for r in _csv_rows(path, header=False)
        ]
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        return [dict(r) for r in reader]


def _file(data_dir: Path, bench: str, subject: str, split: str) -> Path:
    if bench == "cmmlu":
        return data_dir / "cmmlu" / split / f"{subject}.csv"
    return data_dir / bench / split / f"{subject}_{split}.csv"


def write_tasks(out: Path, data_dir: Path, subjects: list[tuple[str, str]]) -> list[str]:
    """One lm-eval task YAML (+ its JSONL data) per (benchmark, subject); returns the task names."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for bench, subject in subjects:
        split = SPLIT[bench]
        files = {}
        for s in (split, "dev"):
            f = out / f"{bench}_{subject}_{s}.jsonl"
            with open(f, "w", encoding="utf-8") as fh:
                for doc in _docs(bench, _file(data_dir, bench, subject, s), subject):
                    fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
            files[s] = str(f)
        own = yaml.safe_load(
            (LM_EVAL_TASKS / SUBJECT_YAML[bench].format(subject)).read_text(encoding="utf-8")
        )
        name = f"ref_{bench}_{subject}"
        cfg = {
            "include": str(TEMPLATE[bench]),
            "task": name,
            "description": own["description"],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files},
        }
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        names.append(name)
    return names


def run(
    model: str,
    model_args: dict[str, Any],
    include_dir: Path,
    tasks: list[str],
    shots: int,
    limit: int,
    batch_size: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """lm-eval's per-question log-likelihoods: task -> [{"doc_id", "lls": [...], "pred", "gold"}]."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(include_dir), include_defaults=False)
    res = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        num_fewshot=shots,
        limit=limit,
        task_manager=tm,
        log_samples=True,
        batch_size=batch_size,
        bootstrap_iters=0,
    )
    out = {}
    for task in tasks:
        rows = []
        for s in sorted(res["samples"][task], key=lambda s: s["doc_id"]):
            lls = [float(r[0]) for r in s["filtered_resps"]]
            rows.append(
                {
                    "doc_id": s["doc_id"],
                    "lls": lls,
                    "pred": max(range(len(lls)), key=lambda i: (lls[i], -i)),
                    "gold": int(s["target"]),
                    "acc": float(s["acc"]),
                }
            )
        out[task] = rows
    out["_results"] = res["results"]  # type: ignore[assignment]
    return out
