"""What ``seekforge data prepare`` counts and reports: per-shard stats, their sum, report.json/.md.

Each shard's :class:`ShardStats` is saved in its done marker (so a resumed run reports the same
totals); :func:`build_report` sums the markers into ``report.json`` and :func:`report_markdown`
renders it as ``report.md``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from seekforge.config import to_dict
from seekforge.data.filters import FiltersConfig
from seekforge.data.prepare_config import PrepareConfig, SourceConfig
from seekforge.data.readers import PREPARED_FORMAT, ReadStats
from seekforge.utils import human_bytes, human_count


def _bump(d: dict[str, dict[str, int]], key: str, docs: int, nbytes: int) -> None:
    e = d.setdefault(key, {"docs": 0, "bytes": 0})
    e["docs"] += docs
    e["bytes"] += nbytes


@dataclass
class ShardStats:
    """What happened in one shard; JSON-serialisable, summed over shards for the report."""

    docs_in: int = 0
    bytes_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    drops: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[list[str]]] = field(default_factory=dict)
    lang_in: dict[str, dict[str, int]] = field(default_factory=dict)
    lang_out: dict[str, dict[str, int]] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)
    c4_lines_removed: dict[str, int] = field(default_factory=dict)
    source_drops: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> reason -> docs
    # representative doc index -> [duplicates found, representative id, first duplicate id, its snippet]
    clusters: dict[str, list] = field(default_factory=dict)

    def _source(self, name: str) -> dict[str, int]:
        empty = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "sampled_out": 0, "dropped": 0}
        return self.sources.setdefault(name, empty)

    def _source_drop(self, source: str, reason: str) -> None:
        per_reason = self.source_drops.setdefault(source, {})
        per_reason[reason] = per_reason.get(reason, 0) + 1

    def count_input(self, source: str, nbytes: int) -> None:
        """One input document read."""
        self.docs_in += 1
        self.bytes_in += nbytes
        s = self._source(source)
        s["docs_in"] += 1
        s["bytes_in"] += nbytes

    def count_sampled_out(self, source: str, nbytes: int) -> None:
        """One input document given 0 copies by its source's weight."""
        self._source(source)["sampled_out"] += 1
        _bump(self.drops, "weight.sampled_out", 1, nbytes)
        self._source_drop(source, "weight.sampled_out")

    def count_language(self, lang: str, nbytes: int) -> None:
        """The detected language of a processed input document (kept or dropped)."""
        _bump(self.lang_in, lang, 1, nbytes)

    def count_drop(self, source: str, doc_id: str, reason: str, nbytes: int, snippet: str,
                   max_examples: int, duplicate_of: tuple[int, str] | None = None) -> None:
        """One document removed for ``reason``; ``duplicate_of`` = (index, id) of the document kept."""
        _bump(self.drops, reason, 1, nbytes)
        self._source(source)["dropped"] += 1
        self._source_drop(source, reason)
        examples = self.examples.setdefault(reason, [])
        if len(examples) < max_examples:
            examples.append([doc_id, snippet])
        if duplicate_of is not None:
            rep, rep_id = duplicate_of
            c = self.clusters.setdefault(str(rep), [0, rep_id, doc_id, snippet])
            c[0] += 1

    def count_c4_lines_removed(self, removed: dict[str, int]) -> None:
        """Lines the C4 filter cut from a document that passed the filters."""
        for key, v in removed.items():
            self.c4_lines_removed[key] = self.c4_lines_removed.get(key, 0) + v

    def count_pii(self, replaced: dict[str, int]) -> None:
        """PII the scrubber replaced in a document that survived dedup."""
        for key, v in replaced.items():
            self.pii[key] = self.pii.get(key, 0) + v

    def count_output(self, source: str, lang: str, nbytes: int) -> None:
        """One document (or weighted copy) written."""
        self.docs_out += 1
        self.bytes_out += nbytes
        s = self._source(source)
        s["docs_out"] += 1
        s["bytes_out"] += nbytes
        _bump(self.lang_out, lang, 1, nbytes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sum_shard_stats(markers: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' stats (as saved in their done markers) added up."""
    total: dict[str, Any] = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "sources": {},
                             "drops": {}, "examples": {}, "lang_in": {}, "lang_out": {}, "pii": {},
                             "c4_lines_removed": {}, "clusters": {}, "source_drops": {}}
    for m in markers:
        s = m["stats"]
        for k in ("docs_in", "bytes_in", "docs_out", "bytes_out"):
            total[k] += s[k]
        for name, d in s["sources"].items():
            t = total["sources"].setdefault(name, Counter())
            t.update(d)
        for key in ("drops", "lang_in", "lang_out"):
            for name, d in s[key].items():
                _bump(total[key], name, d["docs"], d["bytes"])
        for key in ("pii", "c4_lines_removed"):
            for name, v in s[key].items():
                total[key][name] = total[key].get(name, 0) + v
        for name, d in s.get("source_drops", {}).items():
            t = total["source_drops"].setdefault(name, Counter())
            t.update(d)
        for reason, ex in s["examples"].items():
            total["examples"].setdefault(reason, []).extend(ex)
        for rep, c in s["clusters"].items():
            if rep in total["clusters"]:
                total["clusters"][rep][0] += c[0]
            else:
                total["clusters"][rep] = list(c)
    total["sources"] = {k: dict(v) for k, v in total["sources"].items()}
    return total


def build_report(cfg: PrepareConfig, sources: list[SourceConfig], markers: list[dict[str, Any]],
                 read_stats: dict[str, ReadStats], fingerprint: dict[str, Any], decon_info: dict[str, Any],
                 elapsed: float, workers: int, resumed: int) -> dict[str, Any]:
    """``report.json``: totals, per-source and per-reason counts, dedup clusters, the config."""
    total = sum_shard_stats(markers)
    clusters = sorted(total["clusters"].items(), key=lambda kv: (-kv[1][0], int(kv[0])))
    top = [{"size": c[0] + 1, "kept": c[1], "example_duplicate": c[2], "snippet": c[3]}
           for _, c in clusters[: cfg.dedup.clusters_in_report]]
    drops = {
        reason: {**d, "examples": [{"id": i, "text": t} for i, t in
                                   total["examples"].get(reason, [])[: cfg.output.examples_per_reason]]}
        for reason, d in sorted(total["drops"].items(), key=lambda kv: -kv[1]["docs"])
    }
    return {
        "format": PREPARED_FORMAT,
        "shards": [{"file": m["file"], "docs": m["stats"]["docs_out"], "bytes": m["stats"]["bytes_out"]}
                   for m in markers if m["file"]],
        "totals": {
            "docs_in": total["docs_in"], "bytes_in": total["bytes_in"],
            "docs_out": total["docs_out"], "bytes_out": total["bytes_out"],
            "elapsed_s": round(elapsed, 2),
            "mb_per_s": round(total["bytes_in"] / 1e6 / max(elapsed, 1e-9), 3),
            "workers": workers, "shards": len(markers), "shards_resumed": resumed,
        },
        "sources": {s.name: {"paths": s.paths, "weight": s.weight, **total["sources"].get(s.name, {}),
                             "drops": dict(total["source_drops"].get(s.name, Counter()).most_common()),
                             "read": _read_info(read_stats[s.name])} for s in sources},
        "drops": drops,
        "languages": {"in": total["lang_in"], "out": total["lang_out"]},
        "pii_replaced": total["pii"],
        "c4_lines_removed": total["c4_lines_removed"],
        "dedup": {
            "exact": total["drops"].get("dedup.exact", {}).get("docs", 0),
            "near": total["drops"].get("dedup.near", {}).get("docs", 0),
            "clusters_with_duplicates": len(clusters),
            "largest_clusters": top,
            "minhash": {"word_ngram": cfg.dedup.word_ngram, "char_ngram": cfg.dedup.char_ngram,
                        "bands": cfg.dedup.num_bands, "rows": cfg.dedup.rows_per_band,
                        "p_candidate_at_jaccard": {str(j): round(cfg.dedup.candidate_probability(j), 3)
                                                   for j in (0.5, 0.7, 0.8, 0.9)}},
        },
        "decontamination": decon_info,
        "fingerprint": fingerprint["hash"],
        "config": to_dict(cfg),
    }


def _read_info(rs: ReadStats) -> dict[str, Any]:
    return {"files": rs.files, "empty": rs.empty, "malformed": rs.malformed,
            "decode_errors": rs.decode_errors,
            "skipped_files": rs.skipped_files[:20], "problems": rs.problems[:10]}


def empty_message(report: dict[str, Any]) -> str:
    """Why nothing survived, and which setting to loosen."""
    t = report["totals"]
    if t["docs_in"] == 0:
        return "the inputs contain no documents (check the paths, text_fields and txt_mode)"
    drops = report["drops"]
    parts = [f"{r} removed {d['docs']}" for r, d in drops.items()]
    head = next(iter(drops), "?")
    filt = head.split(".")[0]
    return (f"no documents left: all {t['docs_in']} input documents were removed, mostly by {head} "
            f"({'; '.join(parts)}). Loosen or disable it, e.g. --set filters.{filt}.enabled=false"
            if filt in {f.name for f in dataclasses.fields(FiltersConfig)} else
            f"no documents left: all {t['docs_in']} input documents were removed ({'; '.join(parts)})")


def _pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def report_markdown(r: dict[str, Any]) -> str:
    """``report.md``: the report as tables a person reads."""
    t = r["totals"]
    lines = [
        "# data prepare report", "",
        f"- documents: {human_count(t['docs_in'])} in → {human_count(t['docs_out'])} out "
        f"({_pct(t['docs_out'], t['docs_in'])})",
        f"- text: {human_bytes(t['bytes_in'])} in → {human_bytes(t['bytes_out'])} out "
        f"({_pct(t['bytes_out'], t['bytes_in'])})",
        f"- time: {t['elapsed_s']:.1f} s, {t['mb_per_s']:.2f} MB/s with {t['workers']} worker(s); "
        f"{t['shards']} shard(s), {t['shards_resumed']} resumed",
        "", "## Sources", "",
        "| source | weight | docs in | docs out | bytes in | bytes out | malformed | top drop reasons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["sources"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(s["drops"].items())[:4]) or "-"
        lines.append(f"| {name} | {s['weight']} | {s.get('docs_in', 0)} | {s.get('docs_out', 0)} | "
                     f"{human_bytes(s.get('bytes_in', 0))} | {human_bytes(s.get('bytes_out', 0))} | "
                     f"{s['read']['malformed']} | {top} |")
    lines += ["", "## Drops by reason", "", "| reason | docs | % of input | bytes |", "|---|---|---|---|"]
    for reason, d in r["drops"].items():
        share = _pct(d["docs"], t["docs_in"])
        lines.append(f"| {reason} | {d['docs']} | {share} | {human_bytes(d['bytes'])} |")
    lines += ["", "### Examples", ""]
    for reason, d in r["drops"].items():
        for ex in d["examples"]:
            lines.append(f"- **{reason}** `{ex['id']}`: {ex['text'].replace('|', '¦')}")
    lines += ["", "## Languages", "", "| language | docs in | docs out | bytes out |", "|---|---|---|---|"]
    lin, lout = r["languages"]["in"], r["languages"]["out"]
    for lang in sorted(set(lin) | set(lout), key=lambda k: -lin.get(k, {}).get("docs", 0)):
        lines.append(f"| {lang} | {lin.get(lang, {}).get('docs', 0)} | {lout.get(lang, {}).get('docs', 0)} | "
                     f"{human_bytes(lout.get(lang, {}).get('bytes', 0))} |")
    d = r["dedup"]
    mh = d["minhash"]
    lines += ["", "## Deduplication", "",
              f"- exact duplicates removed: {d['exact']}; near duplicates removed: {d['near']}; "
              f"clusters with duplicates: {d['clusters_with_duplicates']}",
              f"- MinHash: word {mh['word_ngram']}-grams / CJK character {mh['char_ngram']}-grams, "
              f"{mh['bands']} bands × {mh['rows']} rows; P(candidate | Jaccard 0.8) = "
              f"{mh['p_candidate_at_jaccard']['0.8']}", ""]
    if d["largest_clusters"]:
        lines += ["| size | kept | a duplicate | its text |", "|---|---|---|---|"]
        for c in d["largest_clusters"]:
            lines.append(f"| {c['size']} | `{c['kept']}` | `{c['example_duplicate']}` | "
                         f"{c['snippet'][:100].replace('|', '¦')} |")
    lines += ["", "## PII replaced", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(r["pii_replaced"].items())] or ["- none"]
    if r["c4_lines_removed"]:
        lines += ["", "## C4 lines removed (documents kept)", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(r["c4_lines_removed"].items())]
    if r["decontamination"]:
        dc = r["decontamination"]
        lines += ["", "## Decontamination", "",
                  f"- {dc['eval_ngrams']} {dc['ngram']}-grams from {dc['eval_docs']} eval documents "
                  f"({dc['eval_docs_too_short']} too short to use); documents removed: "
                  f"{r['drops'].get('decontaminate.eval_overlap', {}).get('docs', 0)}"]
    problems = [p for s in r["sources"].values() for p in s["read"]["problems"]]
    if problems:
        lines += ["", "## Input problems (first few)", ""] + [f"- {p}" for p in problems[:10]]
    return "\n".join(lines) + "\n"
