"""``seekforge data domains``: cluster documents into topics offline and label each with its domain.

Two document representations, both sparse and L2-normalised, clustered by spherical k-means
(k-means on cosine similarity; Dhillon & Modha 2001) with k-means++ seeding (Arthur &
Vassilvitskii 2007) and a few restarts:

- ``tfidf`` (default): words (jieba for Chinese, letter/digit runs otherwise), sublinear TF x
  smoothed IDF over a vocabulary of the ``max_terms`` most frequent terms with
  ``min_df <= df <= max_df * N``;
- ``minhash``: the document's MinHash signature (the one ``data prepare`` deduplicates with:
  character 7-grams for CJK, word 5-grams otherwise), each (position, value) pair a hashed
  feature, so that the dot product of two documents estimates their Jaccard similarity;
- ``embeddings``: dense vectors computed elsewhere (a ``.npy``, one row per document), which is
  where an embedding model - and BERTopic's first stage - plugs in (docs/data.md).

The report lists each domain's size, sources, languages and top terms (highest summed TF-IDF
over the domain's documents, akin to BERTopic's class-based TF-IDF), and - with ``label_field`` - purity
and normalised mutual information against a known label (e.g. ``source``), which is how the
two representations were compared (docs/data.md).

Output folder: ``domain-NN/part-00000.jsonl.gz`` per domain (every input field plus ``domain``)
with a ``report.json`` in the ``data prepare`` format, so the whole folder and each domain
folder are valid inputs to ``data tokenize``, ``tokenizer train`` and the readers.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import regex

from seekforge.config import ConfigError
from seekforge.data.readers import PREPARED_FORMAT, PREPARED_REPORT, iter_documents
from seekforge.data.text import detect_language, split_words
from seekforge.utils import atomic_dir

_WORD = regex.compile(r"[\p{L}\p{N}]+")
_LETTER = regex.compile(r"\p{L}")


@dataclass
class DomainsConfig:
    input: list[str] = field(default_factory=list)  # a data prepare output (or any readable input)
    out: str = ""
    k: int = 20
    method: Literal["tfidf", "minhash", "embeddings"] = "tfidf"
    # method=embeddings: a .npy of shape (documents, dim), one row per input document in input
    # order, from any embedding model (sentence-transformers, a seekforge model's mean hidden
    # states, ...): the rows are clustered by the same spherical k-means.
    embeddings: str | None = None
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    max_terms: int = 50_000  # vocabulary size (most frequent terms)
    min_df: int = 2  # a term must occur in this many documents ...
    max_df: float = 0.5  # ... and in at most this share of them (drops function words)
    top_terms: int = 12  # per domain, in the report
    iterations: int = 30
    restarts: int = 3  # k-means runs from different seeds; the tightest is kept
    label_field: str | None = None  # e.g. "source": report purity/NMI of the domains against it
    seed: int = 0

    def validate(self) -> None:
        if self.k < 2:
            raise ConfigError(f"k must be >= 2 (number of domains), got {self.k}")
        if not 0.0 < self.max_df <= 1.0:
            raise ConfigError(f"max_df must be in (0, 1], got {self.max_df}")
        if self.min_df < 1 or self.max_terms < 1 or self.iterations < 1 or self.restarts < 1:
            raise ConfigError("min_df, max_terms, iterations and restarts must be >= 1")
        if (self.method == "embeddings") != bool(self.embeddings):
            raise ConfigError(
                "method=embeddings and embeddings=FILE.npy go together (got method="
                f"{self.method!r}, embeddings={self.embeddings!r}); methods: tfidf, minhash, embeddings"
            )


class Sparse(NamedTuple):
    """Rows of a sparse matrix in CSR form (row i: indices/data[indptr[i]:indptr[i+1]])."""

    indptr: np.ndarray  # int64, n_rows + 1
    indices: np.ndarray  # int64
    data: np.ndarray  # float64
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1


def _normalise_rows(m: Sparse) -> Sparse:
    rows = np.repeat(np.arange(m.n_rows), np.diff(m.indptr))
    norms = np.sqrt(np.bincount(rows, weights=m.data**2, minlength=m.n_rows))
    return m._replace(data=m.data / np.maximum(norms, 1e-12)[rows])


def terms_of(text: str, lang: str) -> list[str]:
    """Topic terms: jieba words for Chinese, lower-cased letter/digit runs otherwise; at least
    one letter (numbers are not topics)."""
    words = split_words(text, "zh") if lang == "zh" else _WORD.findall(text.lower())
    return [w for w in words if _LETTER.search(w) and (lang == "zh" or len(w) > 1)]


class Vocabulary(NamedTuple):
    terms: list[str]
    idf: np.ndarray


def tfidf_matrix(docs_terms: list[list[str]], cfg: DomainsConfig) -> tuple[Sparse, Vocabulary]:
    n = len(docs_terms)
    df: Counter = Counter()
    for terms in docs_terms:
        df.update(set(terms))
    max_count = cfg.max_df * n
    kept = [t for t, c in df.most_common() if cfg.min_df <= c <= max_count][: cfg.max_terms]
    if not kept:
        raise ConfigError(
            f"no term occurs in at least min_df={cfg.min_df} and at most max_df={cfg.max_df} "
            f"of the {n} documents; lower min_df or raise max_df"
        )
    index = {t: i for i, t in enumerate(kept)}
    idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept])
    indptr, indices, data = [0], [], []
    for terms in docs_terms:
        counts = Counter(index[t] for t in terms if t in index)
        for j, c in sorted(counts.items()):
            indices.append(j)
            data.append((1.0 + math.log(c)) * idf[j])
        indptr.append(len(indices))
    m = Sparse(
        np.array(indptr, dtype=np.int64),
        np.array(indices, dtype=np.int64),
        np.array(data, dtype=np.float64),
        len(kept),
    )
    return _normalise_rows(m), Vocabulary(kept, idf)


def dense_rows(path: str, n_docs: int) -> Sparse:
    """Embeddings from a .npy file as unit-norm rows (the spherical k-means input)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"embeddings: {file} not found (expected a .npy of shape (documents, dim))")
    emb = np.load(file)
    if emb.ndim != 2 or emb.shape[0] != n_docs or not np.isfinite(emb).all():
        raise ConfigError(
            f"embeddings: {file} has shape {emb.shape}; expected ({n_docs}, dim) with finite "
            f"values, one row per input document in input order"
        )
    n, d = emb.shape
    data = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return Sparse(
        np.arange(0, n * d + 1, d, dtype=np.int64),
        np.tile(np.arange(d, dtype=np.int64), n),
        data.astype(np.float64).ravel(),
        d,
    )


def minhash_matrix(
    texts: list[str], langs: list[str], word_ngram: int = 1, char_ngram: int = 2, bits: int = 18
) -> Sparse:
    """Rows of hashed (signature position, value) features, one per MinHash permutation.

    Shingles are single words (character pairs for CJK): the sketch then estimates the Jaccard
    similarity of two documents' vocabularies. With dedup's 5-gram shingles documents of
    different sources share almost nothing and clustering is at chance (NMI 0.01, docs/data.md)."""
    from seekforge.data.dedup import DedupConfig, MinHasher, shingle_hashes
    from seekforge.data.text import simplify

    cfg = DedupConfig(word_ngram=word_ngram, char_ngram=char_ngram)
    hasher = MinHasher(cfg)
    sigs = hasher.signatures([shingle_hashes(simplify(t), lang, cfg) for t, lang in zip(texts, langs)])
    n, p = sigs.shape
    with np.errstate(over="ignore"):
        mixed = sigs.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.arange(p, dtype=np.uint64)
    cols = (mixed >> np.uint64(64 - bits)).astype(np.int64)
    indptr = np.arange(0, n * p + 1, p, dtype=np.int64)
    return Sparse(indptr, cols.ravel(), np.full(n * p, 1.0 / math.sqrt(p)), 1 << bits)


# --------------------------------------------------------------------------- spherical k-means


def _similarities(x: Sparse, centroids: np.ndarray, chunk_rows: int = 2048) -> np.ndarray:
    """Cosine similarity of every row to every centroid (rows and centroids have unit norm)."""
    k = centroids.shape[0]
    out = np.zeros((x.n_rows, k))
    ct = np.ascontiguousarray(centroids.T)  # (n_cols, k): one gather per non-zero
    for a in range(0, x.n_rows, chunk_rows):
        b = min(a + chunk_rows, x.n_rows)
        p0, p1 = x.indptr[a], x.indptr[b]
        if p1 == p0:
            continue
        contrib = ct[x.indices[p0:p1]] * x.data[p0:p1, None]
        starts = x.indptr[a:b] - p0
        nonempty = np.diff(x.indptr[a : b + 1]) > 0
        sums = np.add.reduceat(contrib, np.minimum(starts, p1 - p0 - 1), axis=0)
        out[a:b][nonempty] = sums[nonempty]
    return out


def _row_dense(x: Sparse, i: int) -> np.ndarray:
    v = np.zeros(x.n_cols)
    sl = slice(x.indptr[i], x.indptr[i + 1])
    v[x.indices[sl]] = x.data[sl]
    return v


def _centroids(x: Sparse, labels: np.ndarray, k: int) -> np.ndarray:
    rows = np.repeat(labels, np.diff(x.indptr))
    c = np.bincount(rows * x.n_cols + x.indices, weights=x.data, minlength=k * x.n_cols).reshape(k, x.n_cols)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def _kmeans_pp(x: Sparse, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [_row_dense(x, int(rng.integers(x.n_rows)))]
    best = _similarities(x, centers[0][None, :])[:, 0]
    for _ in range(1, k):
        dist = np.clip(1.0 - best, 0.0, None) ** 2
        total = dist.sum()
        i = int(rng.choice(x.n_rows, p=dist / total)) if total > 0 else int(rng.integers(x.n_rows))
        centers.append(_row_dense(x, i))
        best = np.maximum(best, _similarities(x, centers[-1][None, :])[:, 0])
    return np.stack(centers)


class Clustering(NamedTuple):
    labels: np.ndarray  # int64 per row
    mean_similarity: float  # mean cosine similarity of the rows to their centroid (higher: tighter)


def spherical_kmeans(x: Sparse, k: int, iterations: int, restarts: int, seed: int) -> Clustering:
    best: Clustering | None = None
    for r in range(restarts):
        rng = np.random.default_rng(seed + r)
        centroids = _kmeans_pp(x, k, rng)
        labels = np.full(x.n_rows, -1)
        for _ in range(iterations):
            sims = _similarities(x, centroids)
            new = sims.argmax(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            sizes = np.bincount(labels, minlength=k)
            for c in np.flatnonzero(sizes == 0):  # empty domain: re-seed with the worst-fitting row
                worst = int(sims[np.arange(x.n_rows), labels].argmin())
                labels[worst] = c
            centroids = _centroids(x, labels, k)
        score = float(_similarities(x, centroids)[np.arange(x.n_rows), labels].mean())
        if best is None or score > best.mean_similarity:
            best = Clustering(labels, score)
    assert best is not None
    return best


# --------------------------------------------------------------------------- agreement with labels


def purity(pred: np.ndarray, truth: list[str]) -> float:
    """Share of documents whose domain's most common label is their own."""
    by_domain: dict[int, Counter] = {}
    for p, t in zip(pred.tolist(), truth):
        by_domain.setdefault(p, Counter())[t] += 1
    return sum(c.most_common(1)[0][1] for c in by_domain.values()) / len(truth)


def nmi(pred: np.ndarray, truth: list[str]) -> float:
    """Normalised mutual information, I(P;T) / mean(H(P), H(T)) (arithmetic normalisation)."""
    _, t = np.unique(np.array(truth), return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    joint = np.zeros((p.max() + 1, t.max() + 1))
    np.add.at(joint, (p, t), 1.0)
    joint /= joint.sum()
    pp, pt = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pp, pt)[nz])).sum())
    hp = float(-(pp[pp > 0] * np.log(pp[pp > 0])).sum())
    ht = float(-(pt[pt > 0] * np.log(pt[pt > 0])).sum())
    if hp == 0.0 or ht == 0.0:
        return 1.0 if hp == ht else 0.0
    return mi / ((hp + ht) / 2)


# --------------------------------------------------------------------------- the command


class LoadedDoc(NamedTuple):
    record: dict[str, Any]  # what is written back, plus "domain"
    text: str
    lang: str


def _load(cfg: DomainsConfig) -> list[LoadedDoc]:
    docs = []
    for d in iter_documents(cfg.input, text_fields=cfg.text_fields):
        record = {"text": d.text, "source": d.source, "id": d.id, **d.meta}
        lang = record.get("language") if isinstance(record.get("language"), str) else detect_language(d.text)
        docs.append(LoadedDoc(record, d.text, lang))
    return docs


def cluster_documents(
    texts: list[str], langs: list[str], cfg: DomainsConfig
) -> tuple[Clustering, Sparse, Vocabulary]:
    """Domain of every document, plus the TF-IDF matrix and vocabulary (for the top terms)."""
    if cfg.k > len(texts):
        raise ConfigError(
            f"k={cfg.k} is larger than the number of documents ({len(texts)}) in "
            f"{', '.join(map(str, cfg.input)) or 'the input'}; use k <= {len(texts)}"
        )
    tfidf, vocab = tfidf_matrix([terms_of(t, lang) for t, lang in zip(texts, langs)], cfg)
    if cfg.method == "embeddings":
        x = dense_rows(str(cfg.embeddings), len(texts))
    else:
        x = tfidf if cfg.method == "tfidf" else minhash_matrix(texts, langs)
    return spherical_kmeans(x, cfg.k, cfg.iterations, cfg.restarts, cfg.seed), tfidf, vocab


def _top_terms(tfidf: Sparse, vocab: Vocabulary, labels: np.ndarray, k: int, n: int) -> list[list[str]]:
    rows = np.repeat(labels, np.diff(tfidf.indptr))
    mass = np.bincount(
        rows * tfidf.n_cols + tfidf.indices, weights=tfidf.data, minlength=k * tfidf.n_cols
    ).reshape(k, tfidf.n_cols)
    return [
        [vocab.terms[j] for j in np.argsort(-mass[c], kind="stable")[:n] if mass[c, j] > 0] for c in range(k)
    ]


def find_domains(cfg: DomainsConfig) -> dict[str, Any]:
    cfg.validate()
    if not cfg.input or not cfg.out:
        raise ConfigError("data domains needs --input PATH... and --out DIR")
    t0 = time.time()
    docs = _load(cfg)
    if not docs:
        raise ConfigError(f"no documents in {cfg.input}")
    texts, langs = [d.text for d in docs], [d.lang for d in docs]
    clustering, tfidf, vocab = cluster_documents(texts, langs, cfg)
    labels = clustering.labels
    tops = _top_terms(tfidf, vocab, labels, cfg.k, cfg.top_terms)
    width = max(2, len(str(cfg.k - 1)))
    domains: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    with atomic_dir(cfg.out) as tmp:
        for c in range(cfg.k):
            members = np.flatnonzero(labels == c)
            name = f"domain-{c:0{width}d}"
            sub = tmp / name
            sub.mkdir()
            nbytes = 0
            with gzip.GzipFile(sub / "part-00000.jsonl.gz", "wb", compresslevel=3, mtime=0) as f:
                for i in members.tolist():
                    nbytes += len(texts[i].encode("utf-8"))
                    f.write(json.dumps({**docs[i].record, "domain": c}, ensure_ascii=False).encode() + b"\n")
            shard = {"file": "part-00000.jsonl.gz", "docs": int(len(members)), "bytes": nbytes}
            info = {
                "domain": c,
                "folder": name,
                "docs": int(len(members)),
                "bytes": nbytes,
                "top_terms": tops[c],
                "sources": dict(Counter(docs[i].record["source"] for i in members).most_common(5)),
                "languages": dict(Counter(langs[i] for i in members).most_common()),
            }
            (sub / PREPARED_REPORT).write_text(
                json.dumps(
                    {"format": PREPARED_FORMAT, "shards": [shard], "domain": info},
                    ensure_ascii=False,
                    indent=1,
                ),
                encoding="utf-8",
            )
            shards.append({**shard, "file": f"{name}/part-00000.jsonl.gz"})
            domains.append(info)
        report: dict[str, Any] = {
            "format": PREPARED_FORMAT,  # the folder reads like a data prepare output
            "shards": shards,
            "domains": domains,
            "method": cfg.method,
            "k": cfg.k,
            "docs": len(docs),
            "vocabulary": len(vocab.terms),
            "mean_similarity": round(clustering.mean_similarity, 4),
            "config": asdict(cfg),
            "elapsed_s": round(time.time() - t0, 2),
        }
        if cfg.label_field:
            truth = [str(d.record.get(cfg.label_field)) for d in docs]
            report["agreement"] = {
                "label_field": cfg.label_field,
                "labels": len(set(truth)),
                "purity": round(purity(labels, truth), 4),
                "nmi": round(nmi(labels, truth), 4),
            }
        (tmp / PREPARED_REPORT).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Domains: {report['docs']} documents, k={report['k']}, method {report['method']}", ""]
    if "agreement" in report:
        a = report["agreement"]
        lines += [
            f"Agreement with `{a['label_field']}` ({a['labels']} labels): purity {a['purity']:.3f}, "
            f"NMI {a['nmi']:.3f}",
            "",
        ]
    lines += ["| domain | docs | MB | languages | sources | top terms |", "|---|---|---|---|---|---|"]
    for d in report["domains"]:
        langs = ", ".join(f"{k} {v}" for k, v in d["languages"].items())
        srcs = ", ".join(f"{k} {v}" for k, v in d["sources"].items())
        lines.append(
            f"| {d['folder']} | {d['docs']} | {d['bytes'] / 1e6:.2f} | {langs} | {srcs} | "
            f"{' '.join(d['top_terms'])} |"
        )
    return "\n".join(lines) + "\n"
