"""``seekforge data prepare`` against datatrove 0.10 on the shared demo corpora (zh + en).

Corpus: ../shared/data/pretrain c4_demo.jsonl (English web), wiki_demo.txt (one article per line)
and tang_poems.jsonl (classical Chinese), with the per-source settings in ``SOURCES`` below.

Rows (each in a fresh subprocess, ``--repeats`` interleaved rounds, median reported):
  * seekforge data prepare, full pipeline (clean, LID, 5 filters, PII, exact + MinHash dedup,
    gzip shards, report) with 1 worker and with one worker per core;
  * peer: datatrove's own blocks on the same documents, in one process (datatrove parallelises
    over tasks, so its per-core rate is what scales): GopherRepetition -> GopherQuality ->
    C4Quality(filter_no_terminal_punct=False) -> FineWebQuality (the FineWeb chain) with the
    English defaults for English documents and FineWeb-2's cmn_Hani settings (no C4) for Chinese
    ones (the demo config's per-source overrides mirrored), then MinHash stage-1 signatures
    (shingling + hashing, no file I/O). Reading, cleaning, PII, dedup decisions and writing are
    NOT in the peer row, so it is a lower bound on its cost.
datatrove's word tokenizers need spaCy (and jieba for Chinese). They are not seekforge
dependencies; install them anywhere and pass the folder:

    pip install --target /tmp/peer-site spacy orjson
    .venv/bin/python bench/data_prepare.py --peer-site /tmp/peer-site          # ~2-3 min on 2 cores
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
DATA = REPO.parent / "shared" / "data" / "pretrain"

# The benchmark's prepare config: three sources, each with the filter overrides its kind of text needs.
SOURCES = [
    {"name": "c4", "paths": [str(DATA / "c4_demo.jsonl")]},  # English web text: the full chain
    # One Wikipedia article per line, up-sampled x2. The dump lost its line breaks, and FineWeb's
    # line rules judge a one-line document by its last character: no FineWeb rules here.
    {"name": "wiki", "paths": [str(DATA / "wiki_demo.txt")], "txt_mode": "lines", "weight": 2,
     "filters": {"fineweb": {"enabled": False}}},
    # Classical poetry: 的/了/是 are rare in literary Chinese, so no stop-word rule.
    {"name": "tang", "paths": [str(DATA / "tang_poems.jsonl")],
     "filters": {"gopher_quality": {"zh": {"min_stop_words": None}}}},
]

# FineWeb-2 cmn_Hani function words
ZH_STOP = ["的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人", "中", "为",
           "他", "與", "後", "也", "而", "由"]


def _cpu() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _docs():
    from seekforge.data.readers import iter_documents

    return {"c4": [d.text for d in iter_documents(DATA / "c4_demo.jsonl")],
            "wiki": [d.text for d in iter_documents(DATA / "wiki_demo.txt", txt_mode="lines")],
            "tang": [d.text for d in iter_documents(DATA / "tang_poems.jsonl")]}


def stage_seekforge(workers: int, out: Path) -> dict:
    from seekforge.config import load_config
    from seekforge.data.prepare import PrepareConfig, prepare

    cfg = load_config(PrepareConfig, None, [f"out={out}", f"workers={workers}", "progress=false",
                                            "overwrite=true"],
                      base={"sources": SOURCES, "language": {"languages": ["zh", "en"]}})
    t0, c0 = time.perf_counter(), _cpu()
    report = prepare(cfg)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    kept = {k: f"{v['docs_out']}/{v['docs_in']}" for k, v in report["sources"].items()}
    return {"seconds": seconds, "cpu": cpu, "mb": report["totals"]["bytes_in"] / 1e6, "kept": kept}


def stage_datatrove() -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.hashing import HashConfig

    from seekforge.data.text import detect_language

    en = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
          FineWebQualityFilter()]
    zh = [  # FineWeb-2 configs/cmn_Hani.yml
        GopherRepetitionFilter(dup_line_frac=0.287, dup_para_frac=0, dup_line_char_frac=0,
                               dup_para_char_frac=0,
                               top_n_grams=((2, 0.256), (3, 0.201), (4, 0.171)),
                               dup_n_grams=((5, 0.198), (6, 0.182), (7, 0.167), (8, 0.154), (9, 0.14),
                                            (10, 0.127)), language="cmn_Hani"),
        GopherQualityFilter(min_avg_word_length=1, max_avg_word_length=5, max_non_alpha_words_ratio=0.735,
                            stop_words=ZH_STOP, language="cmn_Hani"),
        FineWebQualityFilter(line_punct_thr=0.106, short_line_thr=999, char_duplicates_ratio=0.1,
                             new_line_ratio=0.178, language="cmn_Hani"),
    ]
    # Mirror SOURCES' per-source overrides: no FineWeb rules for the wiki dump
    # (its line breaks are lost), no stop-word rule for the Tang poems.
    zh_tang = [zh[0], GopherQualityFilter(min_avg_word_length=1, max_avg_word_length=5,
                                          max_non_alpha_words_ratio=0.735, min_stop_words=None,
                                          language="cmn_Hani"), zh[2]]
    chains = {("c4", False): en, ("c4", True): zh, ("wiki", False): en[:3], ("wiki", True): zh[:2],
              ("tang", False): en, ("tang", True): zh_tang}
    # sha1 (FineWeb's choice): datatrove 0.10's default xxhash path passes str, which xxhash>=4
    # rejects ("Strings must be encoded before hashing").
    mh = MinhashConfig(hash_config=HashConfig(hash_fc="sha1"))
    sig_en = MinhashDedupSignature(tempfile.mkdtemp(), config=mh)
    sig_zh = MinhashDedupSignature(tempfile.mkdtemp(), config=mh, language="cmn_Hani")
    docs = _docs()
    # warm the lazily loaded spaCy/jieba tokenizers outside the timed region
    for chain in (en, zh, zh_tang):
        for f in chain:
            f.filter(Document(text="warm up 预热。", id="w"))
    mb = sum(len(t.encode("utf-8")) for texts in docs.values() for t in texts) / 1e6
    t0, c0 = time.perf_counter(), _cpu()
    kept = {}
    for name, texts in docs.items():
        n = 0
        for i, text in enumerate(texts):
            is_zh = detect_language(text) == "zh"
            doc = Document(text=text, id=str(i))
            ok = True
            for f in chains[name, is_zh]:
                res = f.filter(doc)
                if res is not True and not (isinstance(res, tuple) and res[0]):
                    ok = False
                    break
            if ok:
                n += 1
                sig = sig_zh if is_zh else sig_en
                shingles = sig.get_shingles(doc.text)
                if shingles.size:
                    sig.get_signature(shingles)
        kept[name] = f"{n}/{len(texts)}"
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu() - c0, "mb": mb, "kept": kept}


def run_stage(name: str, peer_site: str | None, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--work", str(work)]
    if peer_site:
        cmd += ["--peer-site", peer_site]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--peer-site", help="folder with spacy+orjson for datatrove (pip install --target DIR)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "seekforge-bench-prepare")
    args = ap.parse_args()
    if args.peer_site:
        sys.path.append(args.peer_site)  # appended: the venv's numpy etc. keep precedence
    if args.stage:
        if args.stage == "datatrove":
            res = stage_datatrove()
        else:
            workers = int(args.stage.split("-")[1])
            res = stage_seekforge(workers, args.work / args.stage)
        print(json.dumps(res))
        return

    cores = os.cpu_count() or 1
    names = ["seekforge-1"] + ([f"seekforge-{cores}"] if cores > 1 else []) + ["datatrove"]
    results: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.repeats):  # interleaved: load bursts from other jobs hit every row alike
        for n in names:
            results[n].append(run_stage(n, args.peer_site, args.work))
    labels = {f"seekforge-{cores}": f"seekforge data prepare, {cores} workers",
              "seekforge-1": "seekforge data prepare, 1 worker",
              "datatrove": "datatrove 0.10 filters + MinHash sig, 1 process (peer)"}
    print(f"corpus: c4_demo + wiki_demo + tang_poems; {cores} cores; median of {args.repeats}\n")
    print("| pipeline | MB | seconds | MB/s | MB per CPU-second | kept c4 | kept wiki | kept tang |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        ok = [r for r in results[n] if "error" not in r]
        if not ok:
            err = results[n][0]["error"][:90]
            hint = " (pass --peer-site with spacy, orjson)" if n == "datatrove" else ""
            print(f"| {labels[n]} | - | - | n/a: {err}{hint} | - | - | - | - |")
            continue
        sec = statistics.median(r["seconds"] for r in ok)
        cpu = statistics.median(r["cpu"] for r in ok)
        mb = ok[0]["mb"]
        k = ok[0]["kept"]
        print(f"| {labels[n]} | {mb:.2f} | {sec:.1f} | {mb / sec:.2f} | {mb / cpu:.2f} | {k.get('c4')} | "
              f"{k.get('wiki')} | {k.get('tang')} |")
    print("\nwiki is up-sampled x2 by the config (so 'kept' can exceed 'in'). The peer row covers only "
          "filtering and signatures.")


if __name__ == "__main__":
    main()
