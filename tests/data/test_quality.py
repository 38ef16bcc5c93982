"""The quality classifier: training report, held-out metrics, model folder checks, prepare filter."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from seekforge.cli import main
from seekforge.config import ConfigError, load_config
from seekforge.data import quality as Q
from seekforge.data.prepare import PrepareConfig, prepare

NAV = (
    "首页 新闻 体育 娱乐 财经 科技 汽车 房产 教育 旅游 游戏 视频 图片 论坛 登录 注册 下载 客户端 热门 推荐 "
    "更多 返回顶部 联系我们 关于我们 网站地图 友情链接"
).split()
ADS = (
    "点击领取",
    "限时特价",
    "全场包邮",
    "代开发票",
    "免费咨询",
    "微信同号",
    "加盟热线",
    "低价出售",
    "立即抢购",
)


def zh_crawl_junk(rng: random.Random) -> str:
    """Navigation bars, ads and price lines: what an unfiltered Chinese crawl is full of."""
    lines = []
    for _ in range(rng.randint(5, 20)):
        k = rng.randrange(3)
        if k == 0:
            lines.append(" ".join(rng.sample(NAV, rng.randint(3, 8))))
        elif k == 1:
            lines.append(f"{rng.choice(ADS)} 电话：1{rng.randint(3, 9)}{rng.randint(10**8, 10**9 - 1)}")
        else:
            lines.append(
                f"¥{rng.randint(9, 999)} {rng.choice(ADS)}{rng.choice(NAV)} 已售{rng.randint(1, 9999)}件"
            )
    return "\n".join(lines)


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def labelled(shared_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """Positives: curated answers (alpaca zh + en outputs); negatives: C4 web text + zh crawl junk."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("quality")
    pos = [
        r["output"]
        for f in ("alpaca_en_demo.json", "alpaca_zh_demo.json")
        for r in json.loads((shared_data / "sft" / f).read_text(encoding="utf-8"))[:250]
        if len(r["output"]) >= 40
    ]
    with open(shared_data / "pretrain" / "c4_demo.jsonl", encoding="utf-8") as f:
        neg = [json.loads(line)["text"] for line in f][:250]
    neg += [zh_crawl_junk(rng) for _ in range(250)]
    return _jsonl(root / "pos.jsonl", pos), _jsonl(root / "neg.jsonl", neg)


@pytest.fixture(scope="module")
def model_dir(labelled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qm") / "model"
    pos, neg = labelled
    assert (
        main(["data", "quality", "train", "--positive", str(pos), "--negative", str(neg), "--out", str(out)])
        == 0
    )
    return out


def test_train_writes_model_and_held_out_metrics(model_dir: Path, labelled):
    meta = json.loads((model_dir / "quality.json").read_text())
    assert (meta["format"], meta["version"]) == (Q.MODEL_FORMAT, Q.MODEL_VERSION)
    report = json.loads((model_dir / "report.json").read_text())
    held = report["heldout"]
    n_pos, n_neg = (len(p.read_text().splitlines()) for p in labelled)
    assert held["docs"] == round(0.1 * n_pos) + round(0.1 * n_neg)  # 10% of each class held out
    assert report["train"] == {
        "positives": n_pos - round(0.1 * n_pos),
        "negatives": n_neg - round(0.1 * n_neg),
    }
    assert held["auc"] >= 0.9 and held["precision"] >= 0.7 and held["recall"] >= 0.7, held
    by_lang = report["heldout_by_language"]
    assert by_lang["zh"]["auc"] >= 0.95 and by_lang["en"]["auc"] >= 0.85, by_lang  # answers vs C4: harder


def test_scores_are_probabilities_and_independent_of_batching(model_dir: Path, labelled):
    model = Q.load_quality_model(model_dir)
    texts = [json.loads(line)["text"] for line in labelled[0].read_text().splitlines()[:40]]
    texts += ["", "a", "好", "abcd", "", ""]  # empty and shorter-than-n documents, also last
    together = model.score(texts)
    alone = np.array([model.score([t])[0] for t in texts])
    assert np.all((together >= 0) & (together <= 1))
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.score(texts, batch_docs=7), together, rtol=0, atol=1e-6)


def test_featurizer_keeps_windows_inside_documents():
    spec = Q.Featurizer(orders=[1, 2, 3], bits=16)
    feats = Q.featurize(["ab", "cde", "", "f"], spec)
    # per document: chars + bigrams + trigrams that fit: "ab" 2+1+0, "cde" 3+2+1, "" 0, "f" 1
    assert feats.counts.tolist() == [3.0, 6.0, 0.0, 1.0]
    # The same text hashes to the same buckets alone and after other documents.
    alone = Q.featurize(["cde"], spec)
    for a, b in zip(alone.orders, feats.orders):
        start = 2 if len(b.bucket) > 2 else 0
        assert b.bucket[start : start + len(a.bucket)].tolist() == a.bucket.tolist()


def test_auc_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * labels, 2)  # with ties
    assert Q.roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    m = Q.classification_metrics(scores, labels, 0.5)
    assert m["precision"] == pytest.approx(metrics.precision_score(labels, scores >= 0.5), abs=1e-4)
    assert m["recall"] == pytest.approx(metrics.recall_score(labels, scores >= 0.5), abs=1e-4)


def test_prepare_filters_by_score_and_keeps_it(model_dir: Path, labelled, tmp_path: Path):
    rng = random.Random(1)
    good = [json.loads(line)["text"] for line in labelled[0].read_text().splitlines()[-30:]]
    junk = [
        zh_crawl_junk(rng) + "\n" + "这是一个非常好的购物网站，欢迎大家来这里选购商品。" for _ in range(30)
    ]
    inp = _jsonl(tmp_path / "mix.jsonl", good + junk)
    base = [
        f"inputs=[{inp}]",
        "workers=1",
        "progress=false",
        "filters.gopher_repetition.enabled=false",
        "filters.gopher_quality.enabled=false",
        "filters.fineweb.enabled=false",
        "dedup.minhash=false",
    ]
    off = prepare(load_config(PrepareConfig, None, [*base, f"out={tmp_path / 'off'}"]))
    on = prepare(
        load_config(
            PrepareConfig,
            None,
            [
                *base,
                f"out={tmp_path / 'on'}",
                f"quality.model={model_dir}",
                "quality.threshold=0.5",
                "quality.keep_score=true",
            ],
        )
    )
    dropped = on["drops"]["quality.score"]["docs"]
    assert "quality.score" not in off["drops"] and dropped >= 25
    assert on["totals"]["docs_out"] == off["totals"]["docs_out"] - dropped
    with gzip.open(tmp_path / "on" / "part-00000.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert rows and all(0.5 <= r["quality"] <= 1 for r in rows)
    # threshold 0 keeps everything the heuristics kept
    zero = prepare(
        load_config(
            PrepareConfig,
            None,
            [*base, f"out={tmp_path / 'zero'}", f"quality.model={model_dir}", "quality.threshold=0"],
        )
    )
    assert zero["totals"]["docs_out"] == off["totals"]["docs_out"]
    # A model retrained into the same folder is a changed input: resuming the run refuses it.
    weights = np.load(model_dir / "weights.npy")
    np.save(model_dir / "weights.npy", weights)  # same values, new file: size/mtime fingerprint
    with pytest.raises(ValueError, match="different settings"):
        prepare(
            load_config(
                PrepareConfig,
                None,
                [*base, f"out={tmp_path / 'zero'}", f"quality.model={model_dir}", "quality.threshold=0"],
            )
        )


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high"])
def test_threshold_outside_unit_interval_is_refused(value: str):
    with pytest.raises(ConfigError, match=r"quality\.threshold"):
        load_config(PrepareConfig, None, [f"quality.threshold={value}", "quality.model=x"])


def test_keep_score_needs_a_model():
    with pytest.raises(ConfigError, match=r"quality\.keep_score needs quality\.model"):
        load_config(PrepareConfig, None, ["quality.keep_score=true"])


def test_foreign_or_other_version_model_dir_is_refused(model_dir: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="quality.model"):
        Q.load_quality_model(tmp_path / "missing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.bin").write_bytes(b"\xba\x16\x4f\x2f")  # e.g. a fastText model
    with pytest.raises(ConfigError, match="has no quality.json"):
        Q.load_quality_model(foreign)
    meta = json.loads((model_dir / "quality.json").read_text())
    for key, value, expect in (
        ("format", "sklearn", "format is 'sklearn', expected 'seekforge.quality'"),
        ("version", 99, "version is 99; this seekforge reads version 1"),
    ):
        other = tmp_path / f"other-{key}"
        other.mkdir()
        (other / "quality.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(ConfigError, match=expect):
            Q.load_quality_model(other)


def test_cli_errors_name_the_key(tmp_path: Path, capsys):
    inp = _jsonl(tmp_path / "in.jsonl", ["春天来了，公园里的花都开了。我们在图书馆里读了一下午的书。"] * 2)
    assert (
        main(
            [
                "data",
                "prepare",
                "--input",
                str(inp),
                "--out",
                str(tmp_path / "o"),
                "--set",
                "quality.threshold=2",
            ]
        )
        != 0
    )
    assert "quality.threshold must be a number in [0, 1]" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                "prepare",
                "--input",
                str(inp),
                "--out",
                str(tmp_path / "o"),
                "--set",
                f"quality.model={tmp_path}",
            ]
        )
        != 0
    )
    assert "has no quality.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    assert main(["data", "quality", "train", "--positive", str(inp), "--out", str(tmp_path / "m")]) != 0
    assert "--negative" in capsys.readouterr().err


SHARE = r"must be a share in \[0, 1\]"


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("filters.fineweb.zh.line_punct_thr=1.7", r"filters\.fineweb\.zh\.line_punct_thr " + SHARE),
        ("filters.gopher_repetition.en.dup_line_frac=-0.1", r"gopher_repetition\.en\.dup_line_frac " + SHARE),
        ("filters.gopher_repetition.zh.top_ngrams=[[2,3]]", r"top_ngrams \(n=2\) " + SHARE),
    ],
)
def test_filter_shares_outside_unit_interval_are_refused(override: str, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        load_config(PrepareConfig, None, [override])
