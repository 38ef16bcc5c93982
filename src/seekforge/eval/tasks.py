"""Multiple-choice tasks: MMLU, CMMLU, C-Eval in their published file layouts, and a user's own file.

Prompts, few-shot selection and answer encoding follow lm-evaluation-harness 0.4's ``mmlu``,
``cmmlu`` and ``ceval-valid`` tasks, so accuracies are comparable with published numbers:

    prompt = description + sum over k shots of (render(shot) + " " + letter + "\\n\\n") + render(question)
    render(q) = q.question.strip() + "\\nA. " + choice_A + ... + "\\nAnswer:"   ("\\n答案：" for zh)
    scored continuations: " A", " B", ... (leading space; the answer is the argmax)

Shots are the first k rows of the subject's ``dev`` file in file order (lm-eval's ``first_n``
sampler). Only the question is stripped, never the choices. Cells are read with the ``csv`` module
as strings: a choice that is literally ``None`` or ``NA`` stays that text (pandas' defaults would
turn it into a missing value).

Subject names and categories live in ``subjects.json`` (written for this package from the
benchmarks' papers and repositories): MMLU's four categories (Hendrycks et al. 2021, grouped as in
lm-eval), C-Eval's four (Huang et al. 2023, subject_mapping of the C-Eval repository) and CMMLU's
five, where "China specific" overlaps the other four (Li et al. 2023, the CMMLU repository's
subcategory table). The display name is what the prompt's description uses.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJ"  # up to 10 choices in a user's own task file

# Where `seekforge eval` looks for the benchmark folders when --data-dir is not given.
DEFAULT_DATA_DIR = Path(os.environ.get("SEEKFORGE_EVAL_DATA", Path.home() / ".cache" / "seekforge" / "eval"))

DOWNLOAD_HELP = (
    "Get the files as their authors distribute them and put them under one folder:\n"
    "  mmlu/{dev,test}/SUBJECT_{dev,test}.csv   https://people.eecs.berkeley.edu/~hendrycks/data.tar "
    "(the data/ folder)\n"
    "  cmmlu/{dev,test}/SUBJECT.csv             https://github.com/haonan-li/CMMLU (the data/ folder)\n"
    "  ceval/{dev,val}/SUBJECT_{dev,val}.csv    https://huggingface.co/datasets/ceval/ceval-exam "
    "(ceval-exam.zip)\n"
    "then pass --data-dir FOLDER (or set SEEKFORGE_EVAL_DATA)."
)


@dataclass(frozen=True)
class Benchmark:
    """How one benchmark's files look and how its prompts read."""

    name: str
    eval_split: str  # the split with answers that is scored
    description: str  # format string with {name}
    answer_cue: str  # ends every rendered question
    columns: tuple[str, ...]  # expected header (empty: the files have none)
    fields: tuple[str, ...] = ()  # header names of question, choices..., answer (in that order)

    def path(self, data_dir: Path, subject: str, split: str) -> Path:
        if self.name == "cmmlu":
            return data_dir / "cmmlu" / split / f"{subject}.csv"
        return data_dir / self.name / split / f"{subject}_{split}.csv"


BENCHMARKS: dict[str, Benchmark] = {
    "mmlu": Benchmark(
        "mmlu",
        "test",
        "The following are multiple choice questions (with answers) about {name}.\n\n",
        "Answer:",
        (),
    ),
    "cmmlu": Benchmark(
        "cmmlu",
        "test",
        "以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n",
        "答案：",
        ("", "Question", "A", "B", "C", "D", "Answer"),
        ("Question", "A", "B", "C", "D", "Answer"),
    ),
    "ceval": Benchmark(
        "ceval",
        "val",
        "以下是中国关于{name}的单项选择题，请选出其中的正确答案。\n\n",
        "答案：",
        ("id", "question", "A", "B", "C", "D", "answer"),
        ("question", "A", "B", "C", "D", "answer"),
    ),
}


@dataclass
class Question:
    """One multiple-choice item; ``index`` is its 0-based row in the subject file (header excluded)."""

    index: int
    question: str
    choices: list[str]
    gold: int


@dataclass
class Subject:
    """One subject of a task: what is asked, the few-shot pool and how the prompt reads."""

    task: str
    name: str
    display_name: str
    categories: list[str]
    questions: list[Question]
    shots: list[Question]
    description: str
    answer_cue: str

    def render(self, q: Question) -> str:
        lines = [q.question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices)]
        return "\n".join(lines) + "\n" + self.answer_cue

    def context(self, q: Question) -> str:
        """The full prompt for ``q``: description, the shots with their answers, then ``q``."""
        shots = "".join(f"{self.render(s)} {LETTERS[s.gold]}\n\n" for s in self.shots)
        return self.description + shots + self.render(q)


@dataclass
class TaskSpec:
    """A requested task: a benchmark with optional subject list, or a user's file."""

    name: str
    subjects: list[str] = field(default_factory=list)  # empty: all
    file: Path | None = None


@cache
def subject_table() -> dict[str, dict[str, dict[str, Any]]]:
    """benchmark -> subject -> {"name": display name, "categories": [...]} (see the module docstring)."""
    return json.loads((Path(__file__).with_name("subjects.json")).read_text(encoding="utf-8"))


def parse_tasks(spec: str) -> list[TaskSpec]:
    """``"cmmlu,mmlu:anatomy,mmlu:virology"`` -> [cmmlu (all), mmlu (anatomy, virology)]."""
    table = subject_table()
    out: dict[str, TaskSpec] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        task, _, subject = item.partition(":")
        if task not in BENCHMARKS:
            raise ValueError(
                f"--tasks: unknown task {task!r}; known tasks: {', '.join(BENCHMARKS)} "
                "(a subject is named as TASK:SUBJECT, e.g. cmmlu:chinese_history; your own "
                "multiple-choice file goes to --task-file)"
            )
        ts = out.setdefault(task, TaskSpec(task))
        if subject:
            if subject not in table[task]:
                close = [s for s in table[task] if subject in s or s in subject][:8]
                raise ValueError(
                    f"--tasks: {task} has no subject {subject!r}"
                    + (f" (close: {', '.join(close)})" if close else "")
                    + f"; its subjects: {', '.join(sorted(table[task]))}"
                )
            if subject not in ts.subjects:
                ts.subjects.append(subject)
        elif ts.subjects:
            ts.subjects.clear()  # "mmlu" after "mmlu:x" means all of mmlu
    if not out:
        raise ValueError(f"--tasks is empty; known tasks: {', '.join(BENCHMARKS)}")
    return list(out.values())


def check_data_dir(data_dir: Path, tasks: list[TaskSpec]) -> None:
    """A clear error when the benchmark folders are not where we look."""
    missing = [t.name for t in tasks if t.file is None and not (data_dir / t.name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"benchmark data not found: {', '.join(str(data_dir / m) for m in missing)} "
            f"does not exist.\n{DOWNLOAD_HELP}"
        )


def _read_rows(path: Path, columns: tuple[str, ...], fields: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """(line number, cells of ``fields``) of every data row; checks the header (or, without one, the
    column count)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        rows: list[tuple[int, list[str]]] = []
        line = 1
        for cells in reader:
            rows.append((line, cells))
            line = reader.line_num + 1
    if columns:
        if not rows:
            raise ValueError(f"{path}: the file is empty (expected a header {','.join(columns)})")
        line, header = rows[0]
        got = [h.strip() for h in header]
        lacking = [c for c in fields if c not in got]
        if lacking:
            raise ValueError(
                f"{path}:{line}: header {','.join(header)!r} lacks the column(s) "
                f"{', '.join(lacking)}; expected columns {','.join(columns)}"
            )
        pos = [got.index(c) for c in fields]
        width = len(header)
        out = []
        for ln, cells in rows[1:]:
            if len(cells) != width:
                raise ValueError(f"{path}:{ln}: {len(cells)} cells, expected {width} ({','.join(header)})")
            out.append((ln, [cells[p] for p in pos]))
        return out
    for ln, cells in rows:
        if len(cells) != 6:
            raise ValueError(
                f"{path}:{ln}: {len(cells)} cells, expected 6 columns "
                "(question, A, B, C, D, answer; MMLU files have no header)"
            )
    return rows


def _question(path: Path, line: int, index: int, cells: list[str]) -> Question:
    """cells = question, choice texts..., answer letter."""
    question, *choices, answer = cells
    letters = LETTERS[: len(choices)]
    answer = answer.strip()
    if answer not in letters or not answer:
        raise ValueError(f"{path}:{line}: answer {answer!r} is not one of the choices {', '.join(letters)}")
    return Question(index, question, choices, letters.index(answer))


def read_subject_file(path: Path, bench: Benchmark) -> list[Question]:
    rows = _read_rows(path, bench.columns, bench.fields)
    questions = [_question(path, ln, i, cells) for i, (ln, cells) in enumerate(rows)]
    if not questions:
        raise ValueError(f"{path}: no questions (the subject file is empty)")
    return questions


def load_benchmark(data_dir: Path, spec: TaskSpec, shots: int, limit: int | None) -> list[Subject]:
    """Subjects of one benchmark (all, or those named), questions cut to ``limit``, first-k shots."""
    bench = BENCHMARKS[spec.name]
    table = subject_table()[spec.name]
    names = spec.subjects or sorted(table)
    subjects = []
    for name in names:
        info = table[name]
        questions = read_subject_file(bench.path(data_dir, name, bench.eval_split), bench)
        pool = read_subject_file(bench.path(data_dir, name, "dev"), bench) if shots else []
        if shots > len(pool) and shots:
            raise ValueError(
                f"{bench.path(data_dir, name, 'dev')}: {len(pool)} few-shot rows, --shots asks for {shots}"
            )
        subjects.append(
            Subject(
                spec.name,
                name,
                info["name"],
                list(info["categories"]),
                questions[:limit] if limit else questions,
                pool[:shots],
                bench.description.format(name=info["name"]),
                bench.answer_cue,
            )
        )
    return subjects


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def json_objects(path: Path, flag: str, expected: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, object) of a JSON-lines file, read by seekforge's one file reader (so ``.gz``/``.zst``
    and a UTF-8 BOM work); a line that is not a JSON object is an error naming file and line."""
    from seekforge.data.readers import iter_records

    out = []
    for rec in iter_records(path):
        if rec.error is not None:
            raise ValueError(f"{flag} {rec.where}: {rec.error}")
        if not isinstance(rec.value, dict):
            raise ValueError(f"{flag} {rec.where}: expected {expected}")
        out.append((rec.row, rec.value))
    return out


def _file_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, record) from a .jsonl or a .csv with a header."""
    if not path.is_file():
        raise FileNotFoundError(f"--task-file {path}: no such file")
    if path.suffix == ".jsonl":
        return json_objects(path, "--task-file", "a JSON object with question, choices, answer")
    if path.suffix == ".csv":
        rows = list(_iter_csv_dicts(path))
        return rows
    raise ValueError(f"--task-file {path}: expected a .csv or .jsonl file")


def _iter_csv_dicts(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: the file is empty (expected a header: question,A,B[,C...],answer)")
        header = [h.strip() for h in header]
        out, line = [], reader.line_num + 1
        for cells in reader:
            if len(cells) != len(header):
                raise ValueError(
                    f"{path}:{line}: {len(cells)} cells, expected {len(header)} ({','.join(header)})"
                )
            rec = dict(zip(header, cells))
            rec["choices"] = [rec[c] for c in LETTERS if c in rec and rec[c] != ""]
            out.append((line, rec))
            line = reader.line_num + 1
    missing = [c for c in ("question", "A", "B", "answer") if c not in header]
    if missing:
        raise ValueError(
            f"{path}:1: header {','.join(header)!r} lacks the columns {', '.join(missing)} "
            "(expected question,A,B[,C...J],answer[,subject][,split])"
        )
    return out


def load_task_file(path: Path, shots: int, limit: int | None) -> list[Subject]:
    """A user's own multiple-choice file as one task named after the file (its stem).

    Records: ``question``, 2-10 choices (jsonl ``choices`` list; csv columns ``A``..``J``), ``answer``
    (a letter, or a 0-based index in jsonl); optional ``subject`` (accuracy per subject) and ``split``
    (rows with ``dev`` are the few-shot pool, taken first-k in file order, as for the benchmarks).
    Prompts use MMLU's English format, or C-Eval's Chinese one when the questions contain Chinese.
    """
    path = Path(path)
    task = path.stem
    by_subject: dict[str, tuple[list[Question], list[Question]]] = {}
    counts: dict[str, int] = {}
    zh = False
    for ln, rec in _file_records(path):
        missing = [k for k in ("question", "choices", "answer") if k not in rec]
        if missing:
            raise ValueError(
                f"{path}:{ln}: missing {', '.join(missing)} (expected question, "
                f"choices (jsonl) or A..J (csv), answer); got {', '.join(map(str, rec))}"
            )
        choices = rec["choices"]
        if (
            not isinstance(choices, list)
            or not 2 <= len(choices) <= 10
            or not all(isinstance(c, str) for c in choices)
        ):
            raise ValueError(f"{path}:{ln}: 'choices' must be 2 to 10 strings")
        answer = rec["answer"]
        if isinstance(answer, int) and not isinstance(answer, bool):
            if not 0 <= answer < len(choices):
                raise ValueError(f"{path}:{ln}: answer index {answer} is outside 0..{len(choices) - 1}")
            answer = LETTERS[answer]
        subject = str(rec.get("subject") or task)
        qs, dev = by_subject.setdefault(subject, ([], []))
        is_dev = str(rec.get("split", "")).strip().lower() == "dev"
        key = subject + ("/dev" if is_dev else "")
        idx = counts.get(key, 0)
        counts[key] = idx + 1
        q = _question(path, ln, idx, [str(rec["question"])] + choices + [str(answer)])
        (dev if is_dev else qs).append(q)
        zh = zh or has_cjk(q.question)
    if not by_subject or not any(qs for qs, _ in by_subject.values()):
        raise ValueError(f"{path}: no questions to evaluate")
    bench = BENCHMARKS["ceval" if zh else "mmlu"]
    out = []
    for subject, (qs, dev) in by_subject.items():
        if not qs:
            continue
        head = (
            "以下是关于{name}的单项选择题，请选出其中的正确答案。\n\n"
            if zh
            else "The following are multiple choice questions (with answers) about {name}.\n\n"
        )
        out.append(
            Subject(
                task,
                subject,
                subject.replace("_", " "),
                [],
                qs[:limit] if limit else qs,
                dev[:shots],
                head.format(name=subject.replace("_", " ")),
                bench.answer_cue,
            )
        )
    return out
