"""Preference data: (prompt, chosen, rejected) pairs read and validated like SFT data.

Formats (LLaMA-Factory's ``ranking`` datasets, plus OpenAI messages), auto-detected for plain files:

* ``sharegpt`` ``{"conversations": [...ending with a user turn], "chosen": {"from": "gpt", "value"},
               "rejected": {...}, "system"?}``
* ``alpaca``   ``{"instruction", "input"?, "chosen": str, "rejected": str, "system"?, "history"?}``
* ``openai``   ``{"messages": [...ending with a user turn], "chosen": {"role": "assistant",
               "content"}, "rejected": {...}}``

``chosen``/``rejected`` may also be plain strings. Files are read by the reader SFT uses
(:func:`seekforge.finetune.datasets.read_records`), registries are ``dataset_info.json`` entries
with ``"ranking": true``. A bad row is reported as ``file:row: reason`` and skipped; a pair whose
two answers are identical teaches nothing (its loss gradient is zero) and is counted and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from seekforge.finetune.datasets import (
    DEFAULT_COLUMNS,
    DEFAULT_TAGS,
    BadRow,
    DataError,
    DataReport,
    DatasetSpec,
    _Bad,
    _check_keys,
    _check_tags,
    convert_alpaca,
    convert_chat,
    read_datasets,
    read_records,
)

log = logging.getLogger("seekforge.finetune")

PAIR_FORMATS = ("alpaca", "sharegpt", "openai")
PAIR_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {**DEFAULT_COLUMNS["alpaca"], "chosen": "chosen", "rejected": "rejected"},
    "sharegpt": {**DEFAULT_COLUMNS["sharegpt"], "chosen": "chosen", "rejected": "rejected"},
    "openai": {**DEFAULT_COLUMNS["openai"], "chosen": "chosen", "rejected": "rejected"},
}
for _cols in PAIR_COLUMNS.values():
    _cols.pop("response", None)  # alpaca pairs have chosen/rejected instead of output


@dataclass
class PreferencePair:
    prompt: list[dict[str, str]]  # system? + alternating turns, ending with the user's
    chosen: str
    rejected: str
    source: str  # "file.json:17"

    def chat(self, answer: str) -> list[dict[str, str]]:
        return [*self.prompt, {"role": "assistant", "content": answer}]


@dataclass
class PairReport(DataReport):
    identical: int = 0  # pairs skipped because chosen == rejected

    def summary(self, show: int = 5) -> str:
        text = super().summary(show)
        if self.identical:
            text += f"\n{self.identical} pairs skipped: chosen == rejected"
        return text

    def skipped_any(self) -> bool:
        return bool(self.bad or self.identical)


def detect_pair_format(rows: list[Any], where: str) -> str:
    for row in rows[:50]:
        if not isinstance(row, dict):
            continue
        keys = set(row)
        if not {"chosen", "rejected"} <= keys:
            raise DataError(
                f"{where}: rows have keys {sorted(keys)}; preference data needs 'chosen' and 'rejected' "
                "(plus 'conversations', 'messages' or 'instruction' for the prompt)"
            )
        if "messages" in keys:
            return "openai"
        if "conversations" in keys:
            return "sharegpt"
        if "instruction" in keys:
            return "alpaca"
        raise DataError(
            f"{where}: cannot tell the prompt column from the keys {sorted(keys)}; expected "
            "'conversations' (sharegpt), 'messages' (openai) or 'instruction' (alpaca)"
        )
    raise DataError(f"{where}: no JSON object rows to detect the format from")


def _answer_turn(value: Any, column: str, tags: dict[str, str]) -> dict[str, Any]:
    """A chosen/rejected value (a message object or a string) -> an assistant message in ``tags``' keys."""
    if value is None:
        raise _Bad(f"missing field: {column!r}")
    if isinstance(value, str):
        value = {tags["role_tag"]: tags["assistant_tag"], tags["content_tag"]: value}
    if not isinstance(value, dict):
        raise _Bad(
            f"bad content: {column!r} is a {type(value).__name__}, expected a message object or a string"
        )
    content = value.get(tags["content_tag"])
    if isinstance(content, str) and not content.strip():
        raise _Bad(f"empty answer: {column!r}")
    if value.get(tags["role_tag"]) != tags["assistant_tag"]:
        raise _Bad(f"wrong role: {column!r} must be an {tags['assistant_tag']!r} message")
    return value


def convert_pair(row: dict, fmt: str, cols: dict[str, str], tags: dict[str, str]) -> tuple[list, str, str]:
    """One row -> (prompt messages, chosen text, rejected text), validated like an SFT row."""
    if fmt == "alpaca":
        answers = []
        for key in ("chosen", "rejected"):
            value = row.get(cols[key])
            if isinstance(value, str) and not value.strip():
                raise _Bad(f"empty answer: {cols[key]!r}")
            answers.append(convert_alpaca(row, {**cols, "response": cols[key]}))
        return answers[0][:-1], answers[0][-1]["content"], answers[1][-1]["content"]
    turns = row.get(cols["messages"])
    if not isinstance(turns, list):
        raise _Bad(
            f"bad conversation: {cols['messages']!r} must be a list of messages ending with the prompt"
        )
    out = []
    for key in ("chosen", "rejected"):
        answer = _answer_turn(row.get(cols[key]), cols[key], tags)
        out.append(convert_chat({**row, cols["messages"]: [*turns, answer]}, cols, tags))
    return out[0][:-1], out[0][-1]["content"], out[1][-1]["content"]


def load_pairs(
    specs: list[DatasetSpec], max_samples: int | None = None
) -> tuple[list[PreferencePair], PairReport]:
    """Read and validate every dataset's pairs; raise :class:`DataError` if none is usable."""
    report = PairReport()
    pairs: list[PreferencePair] = read_datasets(specs, _load_one, report, max_samples, "preference data",
                                                "preference pairs")
    log.info(
        "preference data: %d pairs from %s",
        len(pairs),
        ", ".join(f"{n} ({c})" for n, c in report.per_dataset.items()),
    )
    return pairs, report


def _load_one(spec: DatasetSpec, report: PairReport) -> list[PreferencePair]:
    records = read_records(spec.path)
    where = spec.name if spec.name == str(spec.path) else f"dataset {spec.name!r} ({spec.path})"
    values = [r.value for r in records]
    fmt = detect_pair_format(values, where) if spec.formatting == "auto" else spec.formatting
    if fmt not in PAIR_FORMATS:
        raise DataError(
            f"{where}: format {fmt!r} has no preference pairs; use one of {', '.join(PAIR_FORMATS)}"
        )
    _check_keys(
        [c for c in spec.columns if c != "tools"], PAIR_COLUMNS[fmt], f"{where} columns (format {fmt})"
    )
    cols = {**PAIR_COLUMNS[fmt], **spec.columns}
    tags = _check_tags(spec.tags, fmt, where) if fmt in DEFAULT_TAGS else dict(DEFAULT_TAGS["openai"])
    out = []
    for rec in records:
        report.rows += 1
        try:
            if rec.error is not None:
                raise _Bad(rec.error)
            if not isinstance(rec.value, dict):
                raise _Bad(f"not an object: {type(rec.value).__name__}")
            prompt, chosen, rejected = convert_pair(rec.value, fmt, cols, tags)
        except _Bad as e:
            report.bad.append(BadRow(str(rec.path), rec.row, str(e)))
            continue
        if chosen.strip() == rejected.strip():
            report.identical += 1
            continue
        out.append(PreferencePair(prompt, chosen, rejected, f"{rec.path.name}:{rec.row}"))
    return out
