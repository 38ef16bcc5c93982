"""Data-pipeline throughput and tokenizer compression, against plain ``tokenizers`` as reference.

Part 1 -- compression. Trains two 32k byte-level BPEs on the same English + Chinese shared data
(wiki_demo.txt, c4_demo.jsonl, tang_poems.jsonl, alpaca_zh_demo.json instruction+input+output):
one with seekforge's zh+en pre-tokenizer, one with the ``tokenizers`` default ByteLevel (GPT-2)
regex. Reports bytes/token and chars/token on held-out English (wiki articles) and Chinese
(Tang poems, alpaca_zh). Held-out documents are picked by a hash of their text (10%; 20% of the
30 wiki articles).

Part 2 -- throughput on ../shared/data/pretrain/ (all files): MB/s of input text and peak RSS for
  * ``seekforge data prepare`` (MinHash on), when ``seekforge.data.prepare`` exists;
  * ``tokenize_to_shards`` with its default (in-process on < 8 cores) and with a process pool;
  * reference: one ``encode_batch_fast`` call over the same texts already in memory (no reading,
    no writing) -- the ceiling for anything built on ``tokenizers``.
Each measurement runs in a fresh subprocess (clean ru_maxrss), interleaved over ``--repeats`` rounds
with the median reported, because this machine is shared with other jobs.

Part 3 -- quality-classifier scoring (``seekforge.data.quality``), one process: documents per
CPU-second (= per core; numpy runs these kernels on one thread) over a zh+en mix (C4, Tang poems,
alpaca zh/en answers), for the default 2**20 buckets and for 2**18; reference: scikit-learn's
``HashingVectorizer(analyzer="char", ngram_range=(1, 4))`` + ``LogisticRegression``, the same
model class, fitted on the same documents (skipped when scikit-learn is missing).

    .venv/bin/python bench/data_throughput.py                  # ~2-4 minutes on 2 cores
    .venv/bin/python bench/data_throughput.py --repeats 1 --vocab-size 8000   # quicker
    .venv/bin/python bench/data_throughput.py --only quality                  # part 3 only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


# ------------------------------------------------------------------------------ part 1: compression


def held_out(text: str, fraction: float = 0.1) -> bool:
    from seekforge.data.tokenize import _is_val

    return _is_val(text, fraction)


def corpora(data: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(training texts, {held-out set name: texts}), all read through seekforge's readers."""
    from seekforge.data.readers import iter_documents

    pre, sft = data / "pretrain", data / "sft"
    # wiki_demo.txt holds one article per line.
    wiki = [d.text for d in iter_documents(pre / "wiki_demo.txt", txt_mode="lines")]
    c4 = [d.text for d in iter_documents(pre / "c4_demo.jsonl")]
    tang = [d.text for d in iter_documents(pre / "tang_poems.jsonl")]
    alpaca = [d.text for d in iter_documents(sft / "alpaca_zh_demo.json", text_fields=("instruction", "input",
                                                                                         "output"))]
    # Only 30 wiki articles: hold out 20% of them so the English set is not one or two documents.
    train = c4 + [t for t in wiki if not held_out(t, 0.2)] + [t for t in tang + alpaca if not held_out(t)]
    heldout = {
        "en: wiki (held out)": [t for t in wiki if held_out(t, 0.2)],
        "zh: Tang poems (held out)": [t for t in tang if held_out(t)],
        "zh: alpaca_zh (held out)": [t for t in alpaca if held_out(t)],
    }
    return train, heldout


def compression(data: Path, vocab_size: int, work: Path) -> tuple[str, Path]:
    from seekforge.tokenizer import train_tokenizer
    from seekforge.tokenizer.evaluate import measure

    train, heldout = corpora(data)
    mb = sum(len(t.encode("utf-8")) for t in train) / 1e6
    dirs, seconds = {}, {}
    for kind in ("seekforge", "bytelevel"):
        t0 = time.perf_counter()
        dirs[kind] = train_tokenizer(train, vocab_size, work / f"tok-{kind}", pretokenizer=kind)
        seconds[kind] = time.perf_counter() - t0
    lines = [f"Tokenizers: vocab {vocab_size}, trained on {len(train)} docs / {mb:.1f} MB; training time "
             f"seekforge {seconds['seekforge']:.1f}s, ByteLevel default {seconds['bytelevel']:.1f}s.", "",
             "| held-out set | MB | seekforge bytes/tok | ByteLevel bytes/tok | seekforge chars/tok | "
             "ByteLevel chars/tok | tokens seekforge/ByteLevel |",
             "|---|---|---|---|---|---|---|"]
    for name, texts in heldout.items():
        a, b = measure(dirs["seekforge"], texts).total, measure(dirs["bytelevel"], texts).total
        lines.append(f"| {name} ({len(texts)} docs) | {a.bytes / 1e6:.3f} | {a.bytes_per_token:.3f} | "
                     f"{b.bytes_per_token:.3f} | {a.chars_per_token:.3f} | {b.chars_per_token:.3f} | "
                     f"{a.tokens / b.tokens:.3f} |")
    return "\n".join(lines), dirs["seekforge"]


# ------------------------------------------------------------------------------ part 2: throughput


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, largest child) peak resident memory in MB.

    This process: VmHWM from /proc (Linux). Not ru_maxrss: Linux carries ru_maxrss across
    fork+exec, so a child of the big benchmark process would report the parent's peak.
    Children (pool workers, forked from here): ru_maxrss, which counts pages shared with us.
    """
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) / 1024
    return own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale


def stage(name: str, data: Path, tok: Path, out: Path) -> dict:
    """Run one measurement in this (fresh) process; returns seconds, MB and peak memory."""
    from seekforge.data.readers import iter_documents

    files = sorted(p for p in (data / "pretrain").iterdir() if p.is_file())
    if name == "prepare":
        from seekforge.config import load_config
        from seekforge.data.prepare import PrepareConfig, prepare

        cfg = load_config(PrepareConfig, None, [], base={"inputs": [str(p) for p in files], "out": str(out),
                                                         "progress": False})
        t0, c0 = time.perf_counter(), _cpu_seconds()
        report = prepare(cfg)
        seconds = time.perf_counter() - t0
        mb = report["totals"]["bytes_in"] / 1e6  # UTF-8 text read, like the tokenize rows
    elif name.startswith("tokenize"):
        import seekforge.utils  # noqa: F401  (imports torch: a one-time ~1 s, not throughput)
        from seekforge.data.tokenize import tokenize_to_shards

        workers = _cores() if name == "tokenize-pool" else None
        t0, c0 = time.perf_counter(), _cpu_seconds()
        m = tokenize_to_shards(files, tok, out, workers=workers)
        seconds = time.perf_counter() - t0
        mb = sum(s["bytes"] for s in m["splits"].values()) / 1e6
    elif name == "reference":
        from tokenizers import Tokenizer

        texts = [d.text for d in iter_documents(files)]
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        backend = Tokenizer.from_file(str(tok / "tokenizer.json"))
        t0, c0 = time.perf_counter(), _cpu_seconds()
        backend.encode_batch_fast(texts, add_special_tokens=False)
        seconds = time.perf_counter() - t0
    else:
        raise ValueError(name)
    cpu = _cpu_seconds() - c0
    rss_self, rss_child = _peak_rss_mb()
    return {"seconds": seconds, "cpu_seconds": cpu, "mb": mb, "rss_mb": rss_self, "child_rss_mb": rss_child}


def run_stage(name: str, data: Path, tok: Path, work: Path, round_: int) -> dict:
    out = work / f"out-{name}-{round_}"  # fresh each round: `data prepare` resumes a finished run
    cmd = [sys.executable, __file__, "--stage", name, "--data", str(data), "--tok", str(tok),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput(data: Path, tok: Path, work: Path, repeats: int) -> str:
    try:
        import seekforge.data.prepare  # noqa: F401

        names = ["prepare"]
    except ImportError:
        names = []
    names += ["tokenize", "tokenize-pool", "reference"]
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):  # interleaved rounds: a burst of load from other jobs hits all rows alike
        for n in names:
            results[n].append(run_stage(n, data, tok, work, r))
    labels = {"prepare": "seekforge data prepare (MinHash on)",
              "tokenize": "seekforge data tokenize (default: in-process, library threads)",
              "tokenize-pool": f"seekforge data tokenize (--workers {_cores()}: process pool)",
              "reference": "reference: tokenizers encode_batch_fast, in memory"}
    lines = ["| stage | MB | seconds (median) | MB/s | MB per CPU-second | peak RSS MB (main/worker) |",
             "|---|---|---|---|---|---|"]
    for n in names:
        ok = [r for r in results[n] if "error" not in r]
        if not ok:
            lines.append(f"| {labels[n]} | - | - | failed: {results[n][0]['error'][:80]} | - | - |")
            continue
        sec = statistics.median(r["seconds"] for r in ok)
        mb = ok[0]["mb"]
        rss = max(r["rss_mb"] for r in ok)
        child = max(r["child_rss_mb"] for r in ok)
        cpu = statistics.median(r["cpu_seconds"] for r in ok)
        lines.append(f"| {labels[n]} | {mb:.2f} | {sec:.2f} | {mb / sec:.2f} | {mb / cpu:.2f} | "
                     f"{rss:.0f} / {child:.0f} |")
    if "prepare" not in names:
        lines.append("| seekforge data prepare | - | - | n/a (seekforge.data.prepare missing) | - | - |")
    return "\n".join(lines)


def _quality_corpus(data: Path) -> tuple[list[str], list[int], dict[str, list[str]]]:
    """(training texts, labels, {name: documents to score})."""
    from seekforge.data.readers import iter_documents

    pre, sft = data / "pretrain", data / "sft"
    c4 = [d.text for d in iter_documents(pre / "c4_demo.jsonl")]
    tang = [d.text for d in iter_documents(pre / "tang_poems.jsonl")][:6000]
    answers = [d.text for f in ("alpaca_en_demo.json", "alpaca_zh_demo.json")
               for d in iter_documents(sft / f, text_fields=("output",))]
    train = answers[::2] + c4[::2]
    labels = [1] * len(answers[::2]) + [0] * len(c4[::2])
    sets = {"C4 web pages": c4 * 20, "Tang poems": tang, "alpaca answers (zh+en)": answers * 3}
    sets["all three"] = [d for docs in sets.values() for d in docs]
    return train, labels, sets


def _best_cpu(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def quality_scoring(data: Path, repeats: int) -> str:
    import numpy as np

    from seekforge.data import quality as Q

    train, labels, sets = _quality_corpus(data)
    y = np.array(labels, dtype=np.float64)
    scorers = {}
    for bits in (20, 18):
        cfg = Q.QualityTrainConfig(positive=["-"], negative=["-"], out="-", epochs=2,
                                   featurizer=Q.Featurizer(bits=bits))
        scorers[f"seekforge 2**{bits}"] = Q.fit(train, y, cfg).score
    try:
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.linear_model import LogisticRegression

        vec = HashingVectorizer(analyzer="char", ngram_range=(1, 4), n_features=1 << 20, alternate_sign=False)
        clf = LogisticRegression(max_iter=200).fit(vec.transform([t[:2000] for t in train]), labels)
        scorers["scikit-learn"] = lambda docs: clf.decision_function(vec.transform([d[:2000] for d in docs]))
    except ImportError:
        pass
    lines = ["Documents per CPU-second (one core); documents are scored on their first 2000 characters. "
             "scikit-learn: HashingVectorizer(char 1-4, 2**20) + LogisticRegression.\n",
             "| documents | count | avg chars | " + " | ".join(scorers) + " |",
             "|---|---|---|" + "---|" * len(scorers)]
    for name, docs in sets.items():
        chars = sum(min(len(d), 2000) for d in docs) / len(docs)
        rates = [f"{len(docs) / _best_cpu(lambda f=f, d=docs: f(d), repeats):,.0f}" for f in scorers.values()]
        lines.append(f"| {name} | {len(docs)} | {chars:.0f} | " + " | ".join(rates) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["quality"], help="run only this part")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--tok", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:  # child process: one measurement, JSON on the last stdout line
        print(json.dumps(stage(args.stage, args.data, args.tok, args.out)))
        return
    if not (args.data / "pretrain").is_dir():
        sys.exit(f"{args.data}/pretrain not found; pass --data PATH")
    if args.only == "quality":
        load0 = os.getloadavg()[0]
        print("## Quality classifier scoring\n")
        print(quality_scoring(args.data, args.repeats))
        print(f"\nload average (1 min) before/after: {load0:.1f} / {os.getloadavg()[0]:.1f}")
        return
    with tempfile.TemporaryDirectory(prefix="seekforge-bench-") as tmp:
        work = Path(tmp)
        table, tok = compression(args.data, args.vocab_size, work)
        print("## Tokenizer compression (higher bytes/token = fewer tokens for the same text)\n")
        print(table)
        load0 = os.getloadavg()[0]
        print(f"\n## Throughput on {args.data / 'pretrain'} ({args.repeats} interleaved rounds, "
              f"{_cores()} cores)\n")
        print(throughput(args.data, tok, work, args.repeats))
        # Wall-clock MB/s only means something on an idle machine; MB per CPU-second much less
        # depends on what else runs.
        print("\n## Quality classifier scoring\n")
        print(quality_scoring(args.data, args.repeats))
        print(f"\nload average (1 min) before/after: {load0:.1f} / {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
