"""Writing and showing results: results.json, samples/TASK.jsonl, results.md, the stdout table, --compare.

The output directory is written whole and atomically (``seekforge.utils.atomic_dir``): a crashed
run leaves the previous results in place, never half a directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seekforge.utils import atomic_dir


def write_outputs(
    out_dir: str | Path, results: dict[str, Any], samples: dict[str, list[dict[str, Any]]]
) -> Path:
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "results.json").write_text(
            json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if samples:
            (tmp / "samples").mkdir()
            for task, rows in samples.items():
                with open(tmp / "samples" / f"{task}.jsonl", "w", encoding="utf-8") as f:
                    for row in rows:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "results.md").write_text(markdown(results), encoding="utf-8")
    return out_dir


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, float, int]]:
    """(name, metric, value, n) of every headline number: task/category accuracies, ppl, gen metrics."""
    rows: list[tuple[str, str, float, int]] = []
    for task, r in results.get("tasks", {}).items():
        rows.append((task, "acc", r["acc"], r["n"]))
        for cat, c in r.get("categories", {}).items():
            rows.append((f"{task} / {cat}", "acc", c["acc"], c["n"]))
    for name, r in results.get("ppl", {}).items():
        rows.append((f"ppl {name}", "bits_per_byte", r["bits_per_byte"], r["tokens"]))
    for name, r in results.get("gen", {}).items():
        for metric in ("bleu", "rouge1", "rouge2", "rougeL", "exact_match"):
            rows.append((f"gen {name}", metric, r[metric], r["n"]))
    return rows


def summary_table(results: dict[str, Any]) -> str:
    rows = [[name, metric, f"{value:.4f}", str(n)] for name, metric, value, n in summary_rows(results)]
    return _table(["task", "metric", "value", "n"], rows)


def markdown(results: dict[str, Any]) -> str:
    cfg = results.get("config", {})
    out = [
        f"# seekforge eval: {results.get('model', '')}",
        "",
        f"{cfg.get('shots', '')}-shot multiple choice; {results.get('seconds', 0):.1f} s.",
        "",
        summary_table(results),
        "",
    ]
    for task, r in results.get("tasks", {}).items():
        out += [
            f"## {task} ({r['shots']}-shot): acc {r['acc']:.4f} on {r['n']} questions"
            + (f", {r['truncated']} left-truncated" if r.get("truncated") else ""),
            "",
        ]
        rows = [[s, f"{v['acc']:.4f}", str(v["n"])] for s, v in r["subjects"].items()]
        out += [_table(["subject", "acc", "n"], rows), ""]
    return "\n".join(out)


def compare(dirs: list[str | Path]) -> str:
    """Side-by-side headline numbers of several runs; deltas against the first."""
    runs = []
    for d in dirs:
        f = Path(d) / "results.json"
        if not f.is_file():
            raise FileNotFoundError(
                f"--compare {d}: no results.json (a `seekforge eval --out` directory expected)"
            )
        try:
            runs.append(json.loads(f.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}:{e.lineno}: not valid JSON ({e.msg})") from None
    keys: list[tuple[str, str]] = []
    values: list[dict[tuple[str, str], float]] = []
    for r in runs:
        vals = {}
        for name, metric, value, _ in summary_rows(r):
            vals[(name, metric)] = value
            if (name, metric) not in keys:
                keys.append((name, metric))
        values.append(vals)
    names = [Path(d).name for d in dirs]
    header = ["task", "metric", names[0]] + [f"{n} (Δ)" for n in names[1:]]
    rows = []
    for key in keys:
        base = values[0].get(key)
        row = [key[0], key[1], "-" if base is None else f"{base:.4f}"]
        for v in values[1:]:
            x = v.get(key)
            if x is None:
                row.append("-")
            elif base is None:
                row.append(f"{x:.4f}")
            else:
                row.append(f"{x:.4f} ({x - base:+.4f})")
        rows.append(row)
    return _table(header, rows)
