"""seekforge blocks inside datatrove LocalPipelineExecutor runs (filtering, then MinHash 1-4).

datatrove's JsonlReader/Writer need orjson, which is not a seekforge dependency, so the test
reads and writes through two tiny steps of its own.
"""

from __future__ import annotations

import json

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
)

from seekforge.data.datatrove_blocks import (
    SeekforgeClean,
    SeekforgeLanguage,
    SeekforgeMinhashSignature,
    SeekforgePII,
    SeekforgeQualityFilter,
)

ZH = ("人工智能是计算机科学的一个重要分支，它研究如何让机器模拟人类的学习、推理和决策过程。"
      "近年来，随着计算能力的提升和数据规模的扩大，深度学习在图像识别和自然语言处理等领域取得了显著的进展。\n"
      "大语言模型是其中最受关注的方向之一。研究人员先在海量文本上进行预训练，让模型学会语言的基本规律，"
      "然后再通过指令微调和人类反馈，使模型能够更好地理解用户的意图。")
EN = ("The history of the printing press is closely tied to the spread of literacy in Europe. Before "
      "movable type, books were copied by hand, which made them rare and expensive.\nJohannes Gutenberg "
      "combined several existing technologies into a system that could produce pages quickly and with "
      "consistent quality. Within a few decades, printing shops had opened in most large cities. Historians "
      "still debate how much it changed the way people thought.")


class ReadJsonl(PipelineStep):
    name = "test reader"
    type = "reader"

    def __init__(self, path):
        super().__init__()
        self.path = str(path)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                yield Document(text=r["text"], id=r["id"], metadata=r.get("metadata", {}))


class WriteJsonl(PipelineStep):
    name = "test writer"
    type = "writer"

    def __init__(self, path):
        super().__init__()
        self.path = str(path)

    def run(self, data, rank: int = 0, world_size: int = 1):
        with open(self.path, "w", encoding="utf-8") as f:
            for doc in data:
                f.write(json.dumps({"id": doc.id, "text": doc.text, "metadata": doc.metadata},
                                   ensure_ascii=False) + "\n")
                yield doc


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_blocks_in_local_executor_then_minhash(tmp_path):
    raw = tmp_path / "raw.jsonl"
    docs = [
        {"id": "zh", "text": "<p>" + ZH + "</p>"},
        {"id": "en", "text": EN + "\nYou can write to the author at jane@example.com with questions."},
        {"id": "junk", "text": "点击这里下载"},
        {"id": "fr", "text": "Le chat dort sur la table depuis ce matin avec son ami le chien noir."},
        {"id": "zh_near", "text": ZH + "大家都这么认为。"},
    ]
    raw.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n", "utf-8")
    filtered = tmp_path / "filtered.jsonl"

    LocalPipelineExecutor(
        [ReadJsonl(raw), SeekforgeClean(), SeekforgeLanguage(languages=["zh", "en"]),
         SeekforgeQualityFilter(), SeekforgePII(), WriteJsonl(filtered)],
        tasks=1, workers=1, logging_dir=str(tmp_path / "logs" / "filter"),
    ).run()
    rows = {r["id"]: r for r in _read(filtered)}
    assert set(rows) == {"zh", "en", "zh_near"}
    assert rows["zh"]["text"] == ZH and rows["zh"]["metadata"]["language"] == "zh"
    assert "[EMAIL]" in rows["en"]["text"]

    mh = MinhashConfig()
    sigs, buckets, clusters = (str(tmp_path / x) for x in ("sigs", "buckets", "clusters"))
    LocalPipelineExecutor([ReadJsonl(filtered), SeekforgeMinhashSignature(sigs, config=mh)],
                          tasks=1, workers=1, logging_dir=str(tmp_path / "logs" / "s1")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(sigs, buckets, config=mh)], tasks=mh.num_buckets, workers=1,
                          logging_dir=str(tmp_path / "logs" / "s2")).run()
    LocalPipelineExecutor([MinhashDedupCluster(buckets, clusters, config=mh)], tasks=1, workers=1,
                          logging_dir=str(tmp_path / "logs" / "s3")).run()
    LocalPipelineExecutor(
        [ReadJsonl(filtered), MinhashDedupFilter(clusters), WriteJsonl(tmp_path / "dedup.jsonl")],
        tasks=1, workers=1, logging_dir=str(tmp_path / "logs" / "s4"),
    ).run()
    assert sorted(r["id"] for r in _read(tmp_path / "dedup.jsonl")) == ["en", "zh"]
