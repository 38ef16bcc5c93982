"""``data domains``: topic clusters agree with known corpora, output folders, report, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from seekforge.cli import main
from seekforge.config import ConfigError
from seekforge.data import domains as D
from seekforge.data.readers import iter_documents
from seekforge.data.text import detect_language


def labelled(shared: Path, per_corpus: int = 40) -> tuple[list[str], list[str]]:
    rng = random.Random(0)
    pre = shared / "pretrain"
    paras = (pre / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    shakespeare = ["\n\n".join(paras[s : s + 8]) for s in rng.sample(range(len(paras) - 8), per_corpus)]
    with open(pre / "c4_demo.jsonl", encoding="utf-8") as f:
        c4 = [json.loads(line)["text"] for line in f][:per_corpus]
    with open(pre / "tang_poems.jsonl", encoding="utf-8") as f:
        poems = [json.loads(line)["text"] for line in f][:2000]
    tang = ["\n".join(rng.sample(poems, 5)) for _ in range(per_corpus)]
    texts = shakespeare + c4 + tang
    return texts, ["shakespeare"] * per_corpus + ["c4"] * per_corpus + ["tang"] * per_corpus


# Measured on this sample: tfidf NMI 0.69 purity 0.83, minhash 0.59 / 0.68 (chance: ~0 / 0.33).
@pytest.mark.parametrize(("method", "min_nmi", "min_purity"), [("tfidf", 0.6, 0.75), ("minhash", 0.45, 0.6)])
def test_domains_recover_known_corpora(shared_data: Path, method: str, min_nmi: float, min_purity: float):
    texts, labels = labelled(shared_data)
    cfg = D.DomainsConfig(k=3, method=method, restarts=2)
    clustering, _, _ = D.cluster_documents(texts, [detect_language(t) for t in texts], cfg)
    assert D.nmi(clustering.labels, labels) >= min_nmi, (method, D.nmi(clustering.labels, labels))
    assert D.purity(clustering.labels, labels) >= min_purity
    again, _, _ = D.cluster_documents(texts, [detect_language(t) for t in texts], cfg)
    assert np.array_equal(again.labels, clustering.labels)  # fixed seed: same domains


def test_nmi_and_purity_match_definitions():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    truth = [str(x) for x in rng.integers(0, 4, 300)]
    pred = rng.integers(0, 6, 300)
    assert D.nmi(pred, truth) == pytest.approx(metrics.normalized_mutual_info_score(truth, pred), abs=1e-9)
    assert D.purity(np.array([0, 0, 0, 1, 1]), ["a", "a", "b", "b", "b"]) == pytest.approx(0.8)  # (2 + 2) / 5
    assert D.purity(np.array([0, 0, 0, 0]), ["a", "a", "b", "c"]) == pytest.approx(0.5)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_writes_domain_folders_and_report(shared_data: Path, tmp_path: Path, capsys):
    texts, labels = labelled(shared_data, per_corpus=15)
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"text": t, "corpus": c} for t, c in zip(texts, labels)])
    out = tmp_path / "domains"
    assert main(["data", "domains", "--input", str(inp), "--k", "3", "--out", str(out),
                 "--label-field", "corpus"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["k"] == 3 and report["docs"] == len(texts)
    assert sum(d["docs"] for d in report["domains"]) == len(texts)
    assert all(d["top_terms"] for d in report["domains"])
    assert report["agreement"]["label_field"] == "corpus" and report["agreement"]["purity"] >= 0.7
    assert "purity" in capsys.readouterr().out and (out / "report.md").is_file()
    # The folder reads like a prepare output: every document once, with its domain and fields.
    docs = list(iter_documents(out))
    assert sorted(d.text for d in docs) == sorted(texts)
    assert all(d.meta["domain"] in (0, 1, 2) and d.meta["corpus"] in labels for d in docs)
    # ... and so does each domain folder on its own.
    for d in report["domains"]:
        part = list(iter_documents(out / d["folder"]))
        assert len(part) == d["docs"] and {p.meta["domain"] for p in part} <= {d["domain"]}
    # Chinese poems are one domain, named by Chinese terms.
    tang_domain = {doc.meta["domain"] for doc in docs if doc.meta["corpus"] == "tang"}
    assert len(tang_domain) == 1
    terms = report["domains"][tang_domain.pop()]["top_terms"]
    assert all(detect_language(t) == "zh" for t in terms[:5]), terms


def test_k_larger_than_documents_is_refused(tmp_path: Path, capsys):
    rows = [{"text": f"document number {i} about rivers"} for i in range(5)]
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["data", "domains", "--input", str(inp), "--k", "20", "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "k=20 is larger than the number of documents (5)" in err and "use k <= 5" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="k must be >= 2"):
        D.DomainsConfig(k=1).validate()
    with pytest.raises(ConfigError, match=r"max_df must be in \(0, 1\]"):
        D.DomainsConfig(max_df=1.5).validate()


def test_precomputed_embeddings_plug_in(tmp_path: Path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    truth = rng.integers(0, 3, 60)
    emb = centers[truth] + 0.1 * rng.normal(size=(60, 16))
    np.save(tmp_path / "emb.npy", emb)
    texts = [f"alpha{i % 5} beta{i % 7} gamma{i % 4}" for i in range(60)]  # terms for the report only
    cfg = D.DomainsConfig(k=3, method="embeddings", embeddings=str(tmp_path / "emb.npy"), min_df=1)
    clustering, _, _ = D.cluster_documents(texts, ["en"] * 60, cfg)
    assert D.nmi(clustering.labels, [str(t) for t in truth]) == pytest.approx(1.0)
    np.save(tmp_path / "short.npy", emb[:10])
    short = D.DomainsConfig(k=3, method="embeddings", embeddings=str(tmp_path / "short.npy"))
    with pytest.raises(ConfigError, match=r"short.npy has shape \(10, 16\); expected \(60, dim\)"):
        D.cluster_documents(texts, ["en"] * 60, short)
    with pytest.raises(ConfigError, match="method=embeddings and embeddings=FILE.npy go together"):
        D.DomainsConfig(method="embeddings").validate()
