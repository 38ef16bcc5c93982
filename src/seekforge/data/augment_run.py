"""What ``data augment`` and ``data synth`` share: the output folder's life cycle, reading input
records, and the filters that judge a generated text.

Output folder (``OUT``):

- ``run.json`` - what this folder is for (command, method, inputs' content hash, options, model).
  A second run into the same folder with different settings is refused with the differences
  listed, because its response cache and outputs belong to the other run (``--overwrite``
  discards them);
- ``cache/responses.sqlite`` - the model's answers (:class:`seekforge.llm_client.ResponseCache`),
  so a re-run or a run resumed after a kill only pays for requests not answered yet;
- ``report.json`` - rewritten as the run goes with ``"complete": false``; the final version says
  ``"complete": true`` and is written after the data file;
- the data file (``augmented.jsonl`` / ``synth.jsonl``) - written atomically at the end only, and
  removed when a run starts, so it exists only as the complete output of the run in ``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import regex

from seekforge.data.dedup import DedupConfig, LSHIndex, MinHasher, exact_key, shingle_hashes
from seekforge.data.readers import Record, expand_inputs, iter_records
from seekforge.data.text import detect_language, simplify
from seekforge.utils import atomic_write_text

RUN_FILE = "run.json"
REPORT_FILE = "report.json"
CACHE_FILE = "cache/responses.sqlite"
REPORT_CLIENT_KEYS = (
    "requests",
    "cache_hits",
    "failed",
    "retries",
    "prompt_tokens",
    "completion_tokens",
    "cost",
)


# --------------------------------------------------------------------------- the output folder


def inputs_digest(paths: Iterable[str | Path]) -> str:
    """sha256 over the bytes of every input file (folders and globs expanded in reading order)."""
    h = hashlib.sha256()
    for _, path in expand_inputs(list(paths), None):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


@dataclass
class RunDir:
    """An output folder claimed by one run (see the module docstring)."""

    path: Path
    data_name: str

    @property
    def data_file(self) -> Path:
        return self.path / self.data_name

    @property
    def cache_file(self) -> Path:
        return self.path / CACHE_FILE

    @classmethod
    def claim(cls, out: str | Path, data_name: str, fingerprint: dict[str, Any], overwrite: bool) -> RunDir:
        """Check ``out`` is empty or holds this same run; refuse a different one (unless
        ``overwrite``); write ``run.json``; remove an earlier data file and mark the report running."""
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {path}: exists and is not a folder")
        run = cls(path, data_name)
        manifest = path / RUN_FILE
        if manifest.exists() or run.cache_file.exists():
            old = _read_json(manifest) if manifest.exists() else {"run.json": "missing"}
            if old != fingerprint:
                if not overwrite:
                    diff = [
                        f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}"
                        for k in sorted(set(old) | set(fingerprint))
                        if old.get(k) != fingerprint.get(k)
                    ]
                    raise ValueError(
                        f"--out {path} holds a different run's cache and outputs ("
                        + "; ".join(diff[:6])
                        + "); use another --out, or --overwrite to discard them"
                    )
                for name in (RUN_FILE, REPORT_FILE, data_name, "cache"):
                    target = path / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(manifest, json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n")
        if run.data_file.exists():
            run.data_file.unlink()
        run.write_report({"complete": False})
        return run

    def write_report(self, report: dict[str, Any]) -> None:
        atomic_write_text(self.path / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    def finish(self, rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
        """Data file first, then the report saying ``complete: true``."""
        atomic_write_text(self.data_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.write_report({**report, "complete": True, "output": self.data_name, "rows": len(rows)})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return {"run.json": f"unreadable ({e})"}
    return data if isinstance(data, dict) else {"run.json": "not an object"}


def client_numbers(client_report: dict[str, Any] | None) -> dict[str, Any]:
    """The report.json fields every model-calling command has (zeros when no model was called)."""
    base = {k: 0 for k in REPORT_CLIENT_KEYS if k != "cost"}
    if client_report is None:
        return base
    return {
        **base,
        **{k: client_report[k] for k in REPORT_CLIENT_KEYS if k in client_report},
        "model": client_report.get("model"),
        "elapsed_s": client_report.get("elapsed_s"),
    }


# --------------------------------------------------------------------------- reading records


def read_rows(inputs: str | Path | list[str | Path], what: str) -> list[Record]:
    """Every record of the inputs; a malformed one or a non-object is an error naming file:line."""
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    for p in paths:
        if not any(ch in str(p) for ch in "*?[") and not Path(p).exists():
            raise FileNotFoundError(f"{what}: {p} does not exist")
    rows = []
    for rec in iter_records(paths):
        if rec.error is not None:
            raise ValueError(f"{what}: {rec.where}: {rec.error}")
        if not isinstance(rec.value, dict):
            raise ValueError(f"{what}: {rec.where}: expected a JSON object, got {type(rec.value).__name__}")
        rows.append(rec)
    if not rows:
        raise ValueError(f"{what}: no records in {', '.join(map(str, paths))}")
    return rows


def record_id(rec: Record) -> str:
    """The record's own ``id`` field when it has one, else its place (``file:line``)."""
    own = rec.value.get("id") if isinstance(rec.value, dict) else None
    return str(own) if isinstance(own, (str, int)) and not isinstance(own, bool) else rec.where


# --------------------------------------------------------------------------- judging a generated text

# Boilerplate of chat models talking about themselves or declining; a training example that says
# this teaches the student to say it too.
REFUSAL = regex.compile(
    r"\bas an? (?:ai|artificial intelligence|language model|large language model)\b"
    r"|\bi(?:'m| am) (?:sorry|unable|not able)\b|\bi (?:cannot|can't|can not) (?:help|assist|provide|do)\b"
    r"|作为(?:一个|一名)?(?:ai|人工智能|语言模型|大语言模型|ai助手|ai语言模型)"
    r"|(?:抱歉|对不起)[，,]?\s*我(?:无法|不能)|我无法(?:回答|提供|完成|满足)",
    regex.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    return REFUSAL.search(text) is not None


class Similarity:
    """MinHash resemblance between texts and an LSH index of everything kept so far.

    Shingles are word bigrams / character 3-grams (``DedupConfig(word_ngram=2, char_ngram=3)``),
    smaller than corpus dedup's 5 words / 7 characters: instructions and variants are a sentence
    or two, and with long shingles one changed word makes a one-sentence pair look unrelated.
    """

    def __init__(self, seed: int = 1):
        self.cfg = DedupConfig(word_ngram=2, char_ngram=3, seed=seed)
        self.hasher = MinHasher(self.cfg)
        self.index = LSHIndex(self.cfg.num_bands)
        self._next = 0

    def signature(self, text: str) -> np.ndarray:
        return self.hasher.signature(shingle_hashes(simplify(text), detect_language(text), self.cfg))

    def jaccard(self, a: str, b: str) -> float:
        """MinHash estimate of the Jaccard similarity of the two texts' shingle sets."""
        sa, sb = self.signature(a), self.signature(b)
        return float(np.mean(sa == sb))

    def seen(self, text: str, add: bool = True) -> bool:
        """Whether a near-duplicate (or exact duplicate) of ``text`` was added before; adds it."""
        doc = self._next
        self._next += 1
        key = exact_key(text)
        if self.index.find_exact(key) is not None:
            return True
        keys = self.hasher.band_keys(self.signature(text))
        if add:
            self.index.add_exact(key, doc)
            return self.index.query_and_add(keys, doc) is not None
        return any(band.get(k) is not None for band, k in zip(self.index.bands, keys.tolist()))


@dataclass
class VariantChecks:
    """Bounds a variant must meet against its source text."""

    max_similarity: float = 0.9  # MinHash Jaccard at or above this: too similar (a copy)
    min_length_ratio: float = 0.5  # variant/source characters outside [min, max]: too different
    max_length_ratio: float = 2.0
    same_language: bool = True  # the variant's detected language must be the source's

    def validate(self) -> None:
        if not 0.0 <= self.max_similarity <= 1.0:
            raise ValueError(f"--max-similarity: must be in [0, 1], got {self.max_similarity}")
        if not 0 < self.min_length_ratio <= 1 <= self.max_length_ratio:
            raise ValueError(
                f"--length-ratio: expected 0 < min <= 1 <= max, got "
                f"{self.min_length_ratio}, {self.max_length_ratio}"
            )


def judge_variant(source: str, variant: str, checks: VariantChecks, sim: Similarity) -> str | None:
    """Why ``variant`` should be dropped (a report key), or None to keep it."""
    if not variant.strip():
        return "empty"
    if simplify(variant) == simplify(source):
        return "unchanged"  # e.g. EDA synonym replacement on a text without a known synonym
    if sim.jaccard(source, variant) >= checks.max_similarity:
        return "too_similar"
    if checks.same_language and detect_language(variant) != detect_language(source):
        return "language_changed"
    ratio = len(variant.strip()) / max(1, len(source.strip()))
    if not checks.min_length_ratio <= ratio <= checks.max_length_ratio:
        return "length_ratio"
    return None
