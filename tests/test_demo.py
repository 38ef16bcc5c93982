"""``seekforge demo``'s own pieces: the mixed Chinese + English corpus and the greedy/sampled samples."""

from __future__ import annotations

import json

from seekforge import demo
from seekforge.data.readers import iter_documents
from seekforge.infer import Engine, EngineConfig, SamplingParams


def test_demo_corpus_mixes_tang_poems_and_english(tmp_path) -> None:
    corpus = tmp_path / "raw.jsonl"
    corpus.write_text(json.dumps({"text": "Return the number of items in the container.", "id": "a"}) + "\n",
                      encoding="utf-8")
    prepared = demo.prepare_data(corpus, tmp_path)
    report = json.loads((prepared / "report.json").read_text(encoding="utf-8"))
    sources = report["sources"]
    assert sources["stdlib_docstrings"]["docs_out"] == 1
    # Every poem survives, up-sampled TANG_WEIGHT times.
    assert sources["tang_poems"]["docs_out"] == sources["tang_poems"]["docs_in"] * demo.TANG_WEIGHT
    assert sources["english"]["docs_out"] == sources["english"]["docs_in"] * demo.ENGLISH_WEIGHT
    texts = [d.text for d in iter_documents(prepared)]
    assert any(t.startswith("床前明月光，疑是地上霜。") for t in texts)


def test_show_samples_prints_greedy_and_sampled_continuations(tiny_model_dir, capsys) -> None:
    demo.show_samples(tiny_model_dir, "cpu", max_tokens=6)
    out = capsys.readouterr().out
    with Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=1)) as eng:
        greedy = eng.generate([demo.SAMPLE_PROMPTS[0]], SamplingParams(max_tokens=6, temperature=0))[0].text
        sampled = eng.generate([demo.SAMPLE_PROMPTS[0]], SamplingParams(max_tokens=6, **demo.SAMPLED))[0].text
    lines = out.splitlines()
    i = lines.index(f"   {demo.SAMPLE_PROMPTS[0]}")
    assert lines[i + 1] == f"     greedy : {demo._one_line(greedy)}"
    assert lines[i + 2] == f"     sampled: {demo._one_line(sampled)}"
    assert sum(line.startswith("     sampled: ") for line in lines) == len(demo.SAMPLE_PROMPTS)
