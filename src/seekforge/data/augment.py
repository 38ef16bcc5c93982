"""``seekforge data augment``: more training records from the ones you have.

Methods:

- ``eda`` - Easy Data Augmentation (:mod:`.augment_eda`), offline, no model;
- ``backtranslate`` - each text is translated into a pivot language and back (zh->en->zh,
  en->zh->en, or ``--pivot`` any language) by a model behind an OpenAI-compatible endpoint;
- ``paraphrase`` - the model rewrites each text following ``--instruction``.

Which texts change (``--target``): ``prompt`` (default: alpaca ``instruction``/``input``, the
user turns of sharegpt/openai chats, the ``text`` of classification/plain records),
``response`` (answers) or ``all``. Everything else in a record (labels, answers when only
prompts change, system prompts, extra fields) is copied unchanged, so a classification label or
an SFT answer stays attached to its variant. Records are read by the one file reader and
validated by the SFT loader's converters (a bad record is an error naming file:line).

Every output record is the source record with the changed texts, plus ``source_id`` (the
record's ``id`` or ``file:line``) and ``augment_method`` (``eda:sr``, ``backtranslate:zh-en-zh``,
``paraphrase``). Variants are checked against their source (:func:`.augment_run.judge_variant`):
too similar (MinHash), length ratio out of bounds, language changed, empty, or a duplicate of
another variant of the same record; each drop reason is counted in ``report.json``.
"""

from __future__ import annotations

import copy
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seekforge.data.augment_eda import EDA, EDAConfig
from seekforge.data.augment_run import (
    RunDir,
    Similarity,
    VariantChecks,
    client_numbers,
    inputs_digest,
    judge_variant,
    read_rows,
    record_id,
)
from seekforge.data.readers import Record
from seekforge.data.text import detect_language, simplify

log = logging.getLogger("seekforge.data")

METHODS = ("eda", "backtranslate", "paraphrase")
TARGETS = ("prompt", "response", "all")
LANG_NAMES = {
    "zh": "Chinese",
    "en": "English",
    "ja": "Japanese",
    "ko": "Korean",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "ru": "Russian",
}
PARAPHRASE_INSTRUCTION = {
    "en": "Rewrite the following text in different words, keeping its meaning and language. "
    "Reply with the rewritten text only.",
    "zh": "用不同的措辞改写下面的文字，保持原意和语言不变，只输出改写后的文字。",
}


@dataclass
class AugmentConfig:
    method: Literal["eda", "backtranslate", "paraphrase"]
    inputs: list[str]
    out: str
    n: int = 4  # variants per record
    seed: int = 0
    target: Literal["prompt", "response", "all"] = "prompt"
    text_field: str | None = None  # classification/plain records: the text column (default "text")
    keep_original: bool = False  # also write each source record (augment_method "original")
    eda: EDAConfig = field(default_factory=EDAConfig)
    pivot: str | None = None  # backtranslate: pivot language (default en, or zh for English text)
    instruction: str | None = None  # paraphrase: the rewrite instruction (default per language)
    temperature: float = 0.7
    max_tokens: int = 512
    checks: VariantChecks = field(default_factory=VariantChecks)
    overwrite: bool = False

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.target not in TARGETS:
            raise ValueError(f"--target: expected one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.n < 1:
            raise ValueError(f"--n: must be >= 1, got {self.n}")
        if self.method == "eda":
            self.eda.validate()
        if self.temperature < 0:
            raise ValueError(f"--temperature: must be >= 0, got {self.temperature}")
        self.checks.validate()

    def fingerprint(self, model: str | None) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "n": self.n,
            "seed": self.seed,
            "target": self.target,
            "text_field": self.text_field,
            "keep_original": self.keep_original,
        }
        if self.method == "eda":
            opts.update(
                sr=self.eda.sr, ri=self.eda.ri, rs=self.eda.rs, rd=self.eda.rd, synonyms=self.eda.synonyms
            )
        else:
            opts.update(
                pivot=self.pivot,
                instruction=self.instruction,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                model=model,
            )
        return {
            "command": "data augment",
            "method": self.method,
            "inputs": [str(p) for p in self.inputs],
            "inputs_sha256": inputs_digest(self.inputs),
            "options": opts,
        }


# --------------------------------------------------------------------------- which texts change

Slot = tuple[Any, ...]  # a path into a record: ("instruction",) or ("conversations", 2, "value")


def record_format(rows: list[Record], text_field: str | None) -> str:
    from seekforge.finetune.datasets import detect_format

    if text_field:
        return "text"
    return detect_format([r.value for r in rows], str(rows[0].path))


def slots_of(row: dict[str, Any], fmt: str, target: str, text_field: str | None, where: str) -> list[Slot]:
    """The paths of the texts to change in one record (validated by the SFT converters first)."""
    from seekforge.finetune.datasets import DEFAULT_COLUMNS, DEFAULT_TAGS, _Bad, convert_alpaca, convert_chat

    try:
        if fmt == "alpaca":
            convert_alpaca(row, DEFAULT_COLUMNS["alpaca"])
        elif fmt in ("sharegpt", "openai"):
            convert_chat(row, DEFAULT_COLUMNS[fmt], DEFAULT_TAGS[fmt])
    except _Bad as e:
        raise ValueError(f"{where}: {e}") from None
    want_prompt, want_response = target in ("prompt", "all"), target in ("response", "all")
    if fmt == "text":
        name = text_field or "text"
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise ValueError(f"{where}: no text in field {name!r} (keys: {sorted(row)}); set --text-field")
        if target == "response":
            raise ValueError(f"{where}: --target response needs alpaca/sharegpt/openai records with answers")
        return [(name,)]
    if fmt == "alpaca":
        names = (["instruction", "input"] if want_prompt else []) + (["output"] if want_response else [])
        return [(k,) for k in names if isinstance(row.get(k), str) and row[k].strip()]
    cols, tags = DEFAULT_COLUMNS[fmt], DEFAULT_TAGS[fmt]
    roles = ([tags["user_tag"]] if want_prompt else []) + ([tags["assistant_tag"]] if want_response else [])
    return [
        (cols["messages"], i, tags["content_tag"])
        for i, turn in enumerate(row[cols["messages"]])
        if turn.get(tags["role_tag"]) in roles
        and isinstance(turn.get(tags["content_tag"]), str)
        and turn[tags["content_tag"]].strip()
    ]


def get_slot(row: Any, slot: Slot) -> str:
    for key in slot:
        row = row[key]
    return row


def set_slot(row: Any, slot: Slot, value: str) -> None:
    for key in slot[:-1]:
        row = row[key]
    row[slot[-1]] = value


# --------------------------------------------------------------------------- model prompts


def translate_messages(text: str, target_lang: str) -> list[dict[str, str]]:
    if target_lang == "zh":
        ask = "把下面的文字翻译成中文，只输出译文。"
    else:
        ask = (
            f"Translate the following text into {LANG_NAMES.get(target_lang, target_lang)}. "
            "Reply with the translation only."
        )
    return [{"role": "user", "content": f"{ask}\n\n{text}"}]


def paraphrase_messages(text: str, instruction: str | None) -> list[dict[str, str]]:
    lang = detect_language(text)
    ask = instruction or PARAPHRASE_INSTRUCTION["zh" if lang == "zh" else "en"]
    return [{"role": "user", "content": f"{ask}\n\n{text}"}]


def pivot_for(lang: str, pivot: str | None) -> str:
    return pivot or ("zh" if lang == "en" else "en")


# --------------------------------------------------------------------------- the run


@dataclass
class Job:
    """One variant to make: record ``row`` (index), variant number ``k``, its texts by slot."""

    row: int
    k: int
    op: str
    texts: dict[Slot, str]


def augment(cfg: AugmentConfig, client_cfg=None) -> dict[str, Any]:
    """Run ``data augment``; returns the final report (also in ``OUT/report.json``)."""
    cfg.validate()
    rows = read_rows(cfg.inputs, "--input")
    fmt = record_format(rows, cfg.text_field)
    slots = [slots_of(r.value, fmt, cfg.target, cfg.text_field, r.where) for r in rows]
    client = None
    if cfg.method != "eda":
        if client_cfg is None:
            raise ValueError(f"--method {cfg.method} needs a model: pass --endpoint URL (and --model NAME)")
        from seekforge.llm_client import LLMClient

        client = LLMClient(client_cfg)
    try:
        if client is not None:
            client.preflight()  # before anything is written: a dead endpoint must not claim --out
        run = RunDir.claim(
            cfg.out, "augmented.jsonl", cfg.fingerprint(client.model if client else None), cfg.overwrite
        )
        if client is not None and client.cfg.cache is None:
            client.set_cache(run.cache_file)
        jobs = _eda_jobs(cfg, rows, slots) if cfg.method == "eda" else _model_jobs(cfg, rows, slots, client)
        return _collect(cfg, rows, slots, jobs, run, client)
    finally:
        if client is not None:
            client.close()


def _eda_jobs(cfg: AugmentConfig, rows: list[Record], slots: list[list[Slot]]) -> list[Job | None]:
    eda = EDA(cfg.eda)
    jobs: list[Job | None] = []
    for i, rec in enumerate(rows):
        # One generator per record, seeded by (seed, record): a record's variants do not change
        # when other records are added or removed.
        rng = random.Random(f"{cfg.seed}:{record_id(rec)}")
        for k, op in enumerate(eda.ops_for(cfg.n, rng)):
            jobs.append(
                Job(i, k, f"eda:{op}", {s: eda.variant(get_slot(rec.value, s), op, rng) for s in slots[i]})
            )
    return jobs


def _model_jobs(cfg: AugmentConfig, rows: list[Record], slots: list[list[Slot]], client) -> list[Job | None]:
    params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    units = [(i, k, s) for i in range(len(rows)) for k in range(cfg.n) for s in slots[i]]
    sources = [get_slot(rows[i].value, s) for i, _, s in units]
    langs = [detect_language(t) for t in sources]
    # The request seed is the variant number: variant k of every text is one fixed request, so a
    # re-run asks exactly the same questions and finds them all in the cache.
    if cfg.method == "paraphrase":
        requests = [
            (paraphrase_messages(t, cfg.instruction), {**params, "seed": cfg.seed + k})
            for t, (_, k, _) in zip(sources, units)
        ]
        answers = client.chat_many(requests)
        ops = ["paraphrase"] * len(units)
    else:
        pivots = [pivot_for(lang, cfg.pivot) for lang in langs]
        there = client.chat_many(
            [
                (translate_messages(t, p), {**params, "seed": cfg.seed + k})
                for t, p, (_, k, _) in zip(sources, pivots, units)
            ]
        )
        back_idx = [j for j, a in enumerate(there) if a is not None and a.text.strip()]
        back = client.chat_many(
            [
                (
                    translate_messages(there[j].text.strip(), langs[j]),
                    {**params, "seed": cfg.seed + units[j][1]},
                )
                for j in back_idx
            ]
        )
        answers = [None] * len(units)
        for j, a in zip(back_idx, back):
            answers[j] = a
        ops = [f"backtranslate:{lang}-{p}-{lang}" for lang, p in zip(langs, pivots)]
    by_variant: dict[tuple[int, int], Job | None] = {}
    for (i, k, s), a, op in zip(units, answers, ops):
        job = by_variant.setdefault((i, k), Job(i, k, op, {}))
        if job is None:
            continue
        if a is None:
            by_variant[(i, k)] = None  # a request failed for good: the variant is incomplete
            continue
        job.texts[s] = a.text.strip()
    return list(by_variant.values())


def _collect(
    cfg: AugmentConfig,
    rows: list[Record],
    slots: list[list[Slot]],
    jobs: list[Job | None],
    run: RunDir,
    client,
) -> dict[str, Any]:
    sim = Similarity(seed=cfg.seed + 1)
    drops: Counter = Counter()
    by_op: Counter = Counter()
    out: list[dict[str, Any]] = []
    seen: dict[int, set[str]] = {}
    if cfg.keep_original:
        for rec in rows:
            out.append(
                {**copy.deepcopy(rec.value), "source_id": record_id(rec), "augment_method": "original"}
            )
    made = 0
    for job in jobs:
        made += 1
        if job is None:
            drops["request_failed"] += 1
            continue
        rec = rows[job.row]
        source = "\n".join(get_slot(rec.value, s) for s in slots[job.row])
        variant = "\n".join(job.texts.get(s, "") for s in slots[job.row])
        reason = judge_variant(source, variant, cfg.checks, sim)
        key = simplify(variant)
        if reason is None and key in seen.setdefault(job.row, set()):
            reason = "duplicate"
        if reason is not None:
            drops[reason] += 1
            continue
        seen[job.row].add(key)
        row = copy.deepcopy(rec.value)
        for s, text in job.texts.items():
            set_slot(row, s, text)
        row["source_id"] = record_id(rec)
        row["augment_method"] = job.op
        by_op[job.op] += 1
        out.append(row)
    kept = sum(by_op.values())
    report = {
        "method": cfg.method,
        "format": record_format(rows, cfg.text_field),
        "records_in": len(rows),
        "variants_made": made,
        "kept": kept,
        "dropped": dict(sorted(drops.items())),
        "kept_by_method": dict(sorted(by_op.items())),
        **client_numbers(client.report() if client else None),
    }
    run.finish(out, report)
    log.info(
        "augment %s: %d records -> %d variants kept of %d (dropped: %s)%s",
        cfg.method,
        len(rows),
        kept,
        made,
        dict(drops) or "none",
        f"; {client.progress_line()}" if client else "",
    )
    return {**report, "complete": True, "output": str(Path(run.data_file))}
