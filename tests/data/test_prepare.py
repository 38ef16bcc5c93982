"""End-to-end ``data prepare``: outputs, report, weights, determinism, resume, errors, CLI."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from seekforge.cli import main
from seekforge.config import ConfigError, load_config
from seekforge.data import prepare as P
from seekforge.data.readers import ReadError, iter_documents

VOCAB = str.split(
         "river mountain city village teacher student garden window market winter summer morning evening "
         "kitchen library doctor engine harbor forest island bridge castle letter journey silver copper "
         "valley desert ocean planet signal farmer painter sailor station museum theater lantern meadow "
         "orchard canyon glacier harvest festival compass mirror feather pillow basket ladder hammer "
         "blanket candle violin trumpet")
ZH_SENTENCES = [
    "春天来了，公园里的花都开了。", "他每天早上六点起床去跑步。", "这座城市的地铁线路越来越多了。",
    "我们在图书馆里读了一下午的书。", "妈妈做的红烧肉是全家人最爱吃的菜。", "今年夏天的雨水比往年多了不少。",
    "老师让同学们写一篇关于家乡的作文。", "周末的时候，很多人喜欢去郊外爬山。",
    "这家小店的面条已经卖了三十年。", "科学家发现了一种新的深海鱼类。", "他把旧自行车修好了，又骑着去上班。",
    "孩子们在雪地里堆了一个大雪人。", "火车晚点了两个小时，乘客们只好耐心等待。",
    "奶奶在阳台上种了许多番茄和辣椒。", "博物馆新展出了一批唐代的瓷器。",
    "这本小说讲述了一个渔民和大海的故事。",
    "晚饭后，一家人坐在院子里聊天。", "新修的公路让山里的水果更容易运出去。", "她用三年时间学会了弹钢琴。",
    "天气预报说明天会有大风降温。", "工厂引进了新的设备，产量提高了一倍。", "我们约好下个月一起去海边旅行。",
    "这座古桥已经有八百多年的历史了。", "医生提醒大家冬天要注意保暖。",
]


def en_doc(seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for i in range(12):
        w = rng.sample(VOCAB, 8)  # every 5-word window holds two random words: no repeated 5-grams
        lines.append(f"The {w[0]} of the {w[1]} and {w[2]} with a {w[3]} in {w[4]} for {w[5]} to {w[6]} "
                     f"at {w[7]} {seed}-{i}.")
    return "\n".join(lines)


def zh_doc(seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.sample(ZH_SENTENCES, 8))


def write_jsonl(path: Path, texts: list[str], **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t, **extra}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """Mixed en/zh corpus: clean docs, junk, an exact and a near duplicate, and PII."""
    docs = [en_doc(i) for i in range(8)] + [zh_doc(i) for i in range(8)]
    docs.append(docs[0])  # exact duplicate
    docs.append(docs[9] + "大家都很喜欢。")  # near duplicate (one short sentence added)
    docs.append("Buy now!!! Click here")  # junk: too short
    docs.append("\n".join(["Subscribe to our newsletter for the latest offers."] * 12))  # repetitive
    docs.append(zh_doc(99) + "联系人手机：13812345678，邮箱 wang@example.com。")  # PII
    return write_jsonl(tmp_path / "in" / "mixed.jsonl", docs)


def cfg_for(inputs, out, **kw) -> P.PrepareConfig:
    cfg = P.PrepareConfig(inputs=[str(i) for i in inputs], out=str(out), progress=False, workers=1)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def read_out(out: Path) -> list[dict]:
    rows = []
    for f in sorted(out.glob("part-*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh]
    return rows


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.glob("part-*"))}


def test_prepare_end_to_end(corpus, tmp_path):
    out = tmp_path / "out"
    report = P.prepare(cfg_for([corpus], out))
    rows = read_out(out)
    assert {tuple(sorted(r)) for r in rows} == {("id", "language", "source", "text")}
    assert report["totals"]["docs_in"] == 21 and report["totals"]["docs_out"] == len(rows) == 17
    drops = report["drops"]
    assert drops["dedup.exact"]["docs"] == 1 and drops["dedup.near"]["docs"] == 1
    assert drops["gopher_quality.too_few_words"]["examples"][0]["text"] == "Buy now!!! Click here"
    assert "gopher_repetition.dup_lines" in drops
    assert report["languages"]["out"]["zh"]["docs"] == 9 and report["languages"]["out"]["en"]["docs"] == 8
    assert report["pii_replaced"] == {"email": 1, "phone": 1}
    assert any("[PHONE]" in r["text"] and "[EMAIL]" in r["text"] for r in rows)
    assert report["dedup"]["largest_clusters"][0]["size"] == 2
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Drops by reason" in md and "dedup.near" in md and "| zh |" in md
    # the output folder is itself a readable input (the tokenizer reads it this way)
    docs = list(iter_documents(out))
    assert [d.text for d in docs] == [r["text"] for r in rows]
    assert docs[0].meta == {"language": rows[0]["language"]}


def test_weights_upsample_and_deterministic_downsample(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [en_doc(i) for i in range(4)])
    b = write_jsonl(tmp_path / "b.jsonl", [zh_doc(i) for i in range(40)])
    cfg = cfg_for([], tmp_path / "o1", sources=[P.SourceConfig(name="en", paths=[str(a)], weight=2),
                                                P.SourceConfig(name="zh", paths=[str(b)], weight=0.5)])
    cfg.dedup.minhash = False  # the zh docs share sentences; this test is about weights
    rep = P.prepare(cfg)
    rows = read_out(tmp_path / "o1")
    en = [r for r in rows if r["source"] == "en"]
    assert len(en) == 8 and sum(r["id"].endswith("#copy1") for r in en) == 4
    zh_ids = sorted(r["id"] for r in rows if r["source"] == "zh")
    assert 10 <= len(zh_ids) <= 30 and rep["sources"]["zh"]["sampled_out"] == 40 - len(zh_ids)
    cfg.out = str(tmp_path / "o2")
    P.prepare(cfg)
    assert sorted(r["id"] for r in read_out(tmp_path / "o2") if r["source"] == "zh") == zh_ids


def test_same_output_for_any_worker_count(corpus, tmp_path):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        cfg = cfg_for([corpus], out, workers=workers, batch_docs=2)
        cfg.output.shard_docs = 7
        P.prepare(cfg)
        outs.append(shard_bytes(out))
    assert len(outs[0]) == 3 and outs[0] == outs[1]


def test_resume_after_interruption(corpus, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    cfg = cfg_for([corpus], ref)
    cfg.output.shard_docs = 5
    P.prepare(cfg)

    out = tmp_path / "out"
    cfg.out = str(out)
    real_write = P._ShardWriter.write
    calls = {"n": 0}

    def flaky_write(self, record, line=None):
        calls["n"] += 1
        if calls["n"] == 12:  # in the middle of the third shard (5 + 5 docs written before)
            raise KeyboardInterrupt
        real_write(self, record, line)

    monkeypatch.setattr(P._ShardWriter, "write", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(cfg)
    # nothing partial looks complete: no report, no third shard, the folder refuses to be read
    assert not (out / "report.json").exists()
    assert sorted(f.name for f in out.glob("part-*")) == ["part-00000.jsonl.gz", "part-00001.jsonl.gz"]
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(ReadError, match="unfinished"):
        list(iter_documents(out))

    monkeypatch.setattr(P._ShardWriter, "write", real_write)
    report = P.prepare(cfg)
    assert report["totals"]["shards_resumed"] == 2
    assert shard_bytes(out) == shard_bytes(ref)
    ref_report = json.loads((ref / "report.json").read_text())
    assert report["drops"] == ref_report["drops"]
    assert report["totals"]["docs_out"] == ref_report["totals"]["docs_out"]


def test_changed_config_refuses_to_resume_unless_overwrite(corpus, tmp_path):
    out = tmp_path / "out"
    P.prepare(cfg_for([corpus], out))
    cfg = cfg_for([corpus], out)
    cfg.dedup.minhash = False
    with pytest.raises(P.PrepareError, match="config keys changed: dedup"):
        P.prepare(cfg)
    cfg.overwrite = True
    assert P.prepare(cfg)["drops"].get("dedup.near") is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    with pytest.raises(P.PrepareError, match="not a `data prepare` output"):
        P.prepare(cfg_for([corpus], tmp_path / "other"))


def test_empty_output_names_the_filter(tmp_path):
    f = write_jsonl(tmp_path / "short.jsonl", ["hi there", "ok then", "yes"])
    with pytest.raises(P.PrepareError, match=r"mostly by length.too_short.*filters.length.enabled=false"):
        P.prepare(cfg_for([f], tmp_path / "out"))
    assert (tmp_path / "out" / "report.md").exists() and not (tmp_path / "out" / "report.json").exists()


def test_bad_inputs(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": en_doc(1)}) + "\n{not json\n" + json.dumps({"text": en_doc(2)}) + "\n")
    report = P.prepare(cfg_for([f], tmp_path / "o1"))
    assert report["sources"]["bad"]["read"]["malformed"] == 1
    assert f"{f}:2: invalid JSON" in report["sources"]["bad"]["read"]["problems"][0]
    with pytest.raises(ReadError, match=rf"{f}:2: invalid JSON"):
        P.prepare(cfg_for([f], tmp_path / "o2", strict=True))
    g = write_jsonl(tmp_path / "g.jsonl", ["x"])
    with pytest.raises(ReadError, match="no text field 'body'; its keys are 'text'"):
        P.prepare(cfg_for([g], tmp_path / "o3", text_fields=["body"]))


def test_per_source_filter_overrides_and_yaml(tmp_path):
    poems = write_jsonl(tmp_path / "poems.jsonl", ["白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。"])
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(
        f"sources:\n  - name: poems\n    paths: [{poems}]\n"
        "    filters: {gopher_quality: {zh: {min_stop_words: 3, stop_word_chars: null}}}\n"
        "workers: 1\nprogress: false\n",
        encoding="utf-8",
    )
    cfg = load_config(P.PrepareConfig, yaml_path, [f"out={tmp_path / 'o'}"])
    assert cfg.resolved_filters()["poems"].gopher_quality.zh.min_stop_words == 3
    assert cfg.filters.gopher_quality.zh.min_stop_words == 2
    with pytest.raises(P.PrepareError, match="few_stop_words"):
        P.prepare(cfg)
    with pytest.raises(ConfigError, match="poems.*gopher_qualty"):
        load_config(P.PrepareConfig, None, [f"sources=[{{name: poems, paths: [{poems}], "
                                            "filters: {gopher_qualty: {}}}]"])


def test_decontamination(tmp_path):
    docs = [en_doc(i) for i in range(4)]
    train = write_jsonl(tmp_path / "train.jsonl", docs)
    leaked_line = docs[2].split("\n")[3] + " " + docs[2].split("\n")[4]
    evalset = write_jsonl(tmp_path / "eval.jsonl", [leaked_line])
    cfg = cfg_for([train], tmp_path / "o")
    cfg.decontaminate.paths = [str(evalset)]
    report = P.prepare(cfg)
    assert report["drops"]["decontaminate.eval_overlap"]["docs"] == 1
    assert report["decontamination"]["eval_docs"] == 1


def test_cli(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["data", "prepare", "--input", str(corpus), "--out", str(out), "--workers", "1",
               "--no-progress", "--set", "dedup.minhash=false"])
    assert rc == 0 and "kept 18/21 documents" in capsys.readouterr().out
    rc = main(["data", "prepare", "--input", str(corpus), "--out", str(out), "--set", "dedup.minhas=false"])
    assert rc == 2 and "did you mean 'minhash'" in capsys.readouterr().err.lower()


def test_shared_corpora_sanity(shared_data, tmp_path):
    """A slice of the shared demo corpora: Tang poems mostly survive, some C4 junk goes."""
    tang = tmp_path / "tang.jsonl"
    with (shared_data / "pretrain" / "tang_poems.jsonl").open(encoding="utf-8") as f:
        tang.write_text("".join(next(f) for _ in range(1500)), encoding="utf-8")
    cfg = cfg_for([], tmp_path / "o", workers=2, sources=[
        P.SourceConfig(name="c4", paths=[str(shared_data / "pretrain" / "c4_demo.jsonl")]),
        P.SourceConfig(name="tang", paths=[str(tang)],
                       filters={"gopher_quality": {"zh": {"min_stop_words": None}}}),
    ])
    report = P.prepare(cfg)
    src = report["sources"]
    assert src["tang"]["docs_out"] / src["tang"]["docs_in"] > 0.85
    assert 0.5 < src["c4"]["docs_out"] / src["c4"]["docs_in"] < 0.95


def test_parquet_output_is_readable(corpus, tmp_path):
    cfg = cfg_for([corpus], tmp_path / "pq")
    cfg.output.format = "parquet"
    report = P.prepare(cfg)
    assert [s["file"] for s in report["shards"]] == ["part-00000.parquet"]
    docs = list(iter_documents(tmp_path / "pq"))
    assert len(docs) == report["totals"]["docs_out"] and {d.meta["language"] for d in docs} == {"en", "zh"}
