"""Which document representation separates domains better: TF-IDF words or MinHash sketches?

A labelled sample from ../shared/data/pretrain - Shakespeare (8-paragraph excerpts), Wikipedia
(1500-character chunks of the articles), C4 web pages, Tang poems (five-poem anthologies) - is
clustered by ``seekforge.data.domains`` with k = 4 (the number of corpora) and k = 12, and the
domains are compared with the corpus labels: purity and NMI, plus scikit-learn's
``normalized_mutual_info_score`` as the reference for our NMI, and the wall time.

    python bench/data_domains.py [--per-corpus 300]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def labelled_sample(data: Path, per_corpus: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    pre = data / "pretrain"
    paras = (pre / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    shakespeare = ["\n\n".join(paras[s : s + 8]) for s in rng.sample(range(len(paras) - 8), per_corpus)]
    articles = (pre / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()
    chunks = [a[i : i + 1500] for a in articles for i in range(0, len(a) - 500, 1500)]
    wiki = rng.sample(chunks, min(per_corpus, len(chunks)))
    with open(pre / "c4_demo.jsonl", encoding="utf-8") as f:
        c4 = [json.loads(line)["text"] for line in f][:per_corpus]
    with open(pre / "tang_poems.jsonl", encoding="utf-8") as f:
        poems = [json.loads(line)["text"] for line in f]
    tang = ["\n".join(rng.sample(poems, 5)) for _ in range(per_corpus)]
    texts, labels = [], []
    for name, docs in (("shakespeare", shakespeare), ("wiki", wiki), ("c4", c4), ("tang", tang)):
        texts += docs
        labels += [name] * len(docs)
    return texts, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--per-corpus", type=int, default=300)
    args = ap.parse_args()

    from seekforge.data import domains as D
    from seekforge.data.text import detect_language

    texts, labels = labelled_sample(args.data, args.per_corpus)
    langs = [detect_language(t) for t in texts]
    try:
        from sklearn.metrics import normalized_mutual_info_score as sk_nmi
    except ImportError:
        sk_nmi = None
    print(f"{len(texts)} documents: " + ", ".join(f"{n} {labels.count(n)}" for n in dict.fromkeys(labels)))
    print("| method | k | purity | NMI | NMI (scikit-learn) | mean cos to centroid | seconds |")
    print("|---|---|---|---|---|---|---|")
    for method in ("tfidf", "minhash"):
        for k in (4, 12):
            cfg = D.DomainsConfig(k=k, method=method)
            t0 = time.perf_counter()
            clustering, _, _ = D.cluster_documents(texts, langs, cfg)
            dt = time.perf_counter() - t0
            ref = f"{sk_nmi(labels, clustering.labels):.3f}" if sk_nmi else "n/a"
            pur, nmi = D.purity(clustering.labels, labels), D.nmi(clustering.labels, labels)
            tight = clustering.mean_similarity
            print(f"| {method} | {k} | {pur:.3f} | {nmi:.3f} | {ref} | {tight:.3f} | {dt:.1f} |")


if __name__ == "__main__":
    main()
