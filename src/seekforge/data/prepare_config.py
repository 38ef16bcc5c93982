"""The configuration of ``seekforge data prepare``: sources, language keep-list, output shards.

``PrepareConfig`` nests the per-step configs that live next to their step (``CleanConfig``,
``FiltersConfig``, ``PIIConfig``, ``DedupConfig``, ``DecontamConfig``); it is loaded with
``seekforge.config.load_config`` (YAML + ``--set key=value``) like every other stage.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seekforge.config import ConfigError, deep_merge, from_dict, to_dict
from seekforge.data.clean import CleanConfig
from seekforge.data.dedup import DecontamConfig, DedupConfig
from seekforge.data.filters import FiltersConfig
from seekforge.data.pii import PIIConfig
from seekforge.data.quality import QualityFilterConfig


@dataclass
class SourceConfig:
    """One named input. ``weight`` resamples it: 2 = every document twice, 0.5 = a
    deterministic half (chosen by a hash of the document id), 1.5 = all once, half twice."""

    name: str = ""
    paths: list[str] = field(default_factory=list)
    weight: float = 1.0
    text_fields: list[str] | None = None  # default: the top-level text_fields
    txt_mode: Literal["file", "paragraphs", "lines"] | None = None
    # Overrides of the top-level ``filters`` for this source only, same keys, e.g.
    # {gopher_quality: {zh: {min_stop_words: null}}} for classical poetry.
    filters: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.weight < 0 or not math.isfinite(self.weight):
            raise ConfigError(f"source {self.name!r}: weight must be a finite number >= 0, got {self.weight}")


@dataclass
class LanguageConfig:
    # Keep-list of language codes (zh, en, ja, ko, other; or fastText codes). Empty: keep all.
    languages: list[str] = field(default_factory=list)
    fasttext_model: str | None = None  # path to lid.176.bin (needs `pip install fasttext`)
    min_score: float = 0.65  # fastText confidence below which the script-based guess is used


@dataclass
class OutputConfig:
    format: Literal["jsonl.gz", "jsonl", "parquet"] = "jsonl.gz"
    shard_docs: int = 100_000  # input documents per shard (also the resume granularity)
    shard_mb: float = 512.0  # ... or this many MB of input text, whichever comes first
    keep_meta: bool = False  # also write the input records' other fields under "meta"
    examples_per_reason: int = 3  # dropped-document examples per reason in the report


@dataclass
class PrepareConfig:
    """Everything ``data prepare`` does. Inputs come as ``sources`` and/or plain ``inputs``."""

    inputs: list[str] = field(default_factory=list)  # each path becomes a source named after it
    sources: list[SourceConfig] = field(default_factory=list)
    out: str = ""
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    joiner: str = "\n\n"  # between several text fields of one record
    txt_mode: Literal["file", "paragraphs", "lines"] = "file"
    strict: bool = False  # raise on the first malformed record instead of skipping it
    workers: int = 0  # 0: all CPU cores
    batch_docs: int = 256
    progress: bool = True
    overwrite: bool = False  # start over even if `out` holds a (different) earlier run
    clean: CleanConfig = field(default_factory=CleanConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    quality: QualityFilterConfig = field(default_factory=QualityFilterConfig)  # model-based filter, off
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        if self.batch_docs < 1:
            raise ConfigError(f"batch_docs must be >= 1, got {self.batch_docs}")
        if self.output.shard_docs < 1 or self.output.shard_mb <= 0:
            raise ConfigError("output.shard_docs and output.shard_mb must be positive")
        self.quality.validate()
        for i, src in enumerate(self.sources):
            if not src.paths:
                raise ConfigError(f"sources[{i}] ({src.name or 'unnamed'}): paths is empty")
        self.resolved_filters()  # surfaces bad per-source overrides at load time

    # Source list with names filled in and unique: config sources first, then plain inputs.
    def resolved_sources(self) -> list[SourceConfig]:
        out: list[SourceConfig] = []
        seen: set[str] = set()
        for i, src in enumerate([*self.sources, *(SourceConfig(paths=[p]) for p in self.inputs)]):
            name = src.name or default_source_name(src.paths[0] if src.paths else f"source{i}")
            base, k = name, 2
            while name in seen:
                name, k = f"{base}-{k}", k + 1
            seen.add(name)
            out.append(dataclasses.replace(src, name=name))
        return out

    def resolved_filters(self) -> dict[str, FiltersConfig]:
        """Per-source filter configs: the global one with each source's overrides merged in."""
        base = to_dict(self.filters)
        out = {}
        for src in self.resolved_sources():
            if src.filters:
                try:
                    out[src.name] = from_dict(FiltersConfig, deep_merge(base, src.filters),
                                              prefix=f"sources.{src.name}.filters.")
                except ConfigError as e:
                    raise ConfigError(f"source {src.name!r}: {e}") from None
            else:
                out[src.name] = self.filters
        return out


def default_source_name(path: str) -> str:
    """A source's name when the config gives none: the file name up to its first dot."""
    p = Path(path.rstrip("/"))
    name = p.name.split(".")[0] if p.suffix else p.name
    return name or "input"
