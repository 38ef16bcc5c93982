"""Content safety: term/regex matching (evasions caught, innocent words pass), stream hold-back, the
policy file's errors, and the server's input/output moderation and /v1/moderations driven by ``openai``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from seekforge.infer import EngineConfig, SamplingParams
from seekforge.serve import ServerOptions
from seekforge.serve.safety import SafetyPolicy

from .conftest import run_server

REPO = Path(__file__).resolve().parents[2]

POLICY = {
    "categories": {
        "insult": {"severity": "medium", "terms": ["ass", "hell", "idiot", "白痴"]},
        "violence": {"terms": ["kill yourself", "杀人"], "regexes": [r"how\s+to\s+make\s+a\s+bomb"]},
        "pii": {"severity": "low", "regexes": [r"\b\d{4}-\d{4}-\d{4}-\d{4}\b"]},
    },
    "allow": ["hello kitty"],
    "block_at": "medium",
}


@pytest.fixture(scope="module")
def policy() -> SafetyPolicy:
    return SafetyPolicy.from_dict(POLICY)


CAUGHT = [
    ("you ass", "ass"), ("ＹＯＵ ＡＳＳ", "ＡＳＳ"), ("A.S.S!", "A.S.S"), ("a s s", "a s s"),
    ("what the HELL", "HELL"), ("h-e-l-l no", "h-e-l-l"), ("an id\u200biot", "id\u200biot"),
    ("kill   your-self", "kill   your-self"), ("KILL YOURSELF", "KILL YOURSELF"),
    ("他在杀人", "杀人"), ("他在殺人", "殺人"),  # traditional -> simplified
    ("杀 人", "杀 人"), ("杀-人", "杀-人"), ("你是白癡", "白癡"), ("白　痴", "白　痴"),  # ideographic space
    ("How to make a   bomb?", "How to make a   bomb"),
]
PASSES = ["class", "assassin", "grass", "bass guitar", "pass the assert", "c l a s s", "hello", "shell",
          "Michelle", "Shelly's hello kitty", "idiotic", "skill yourself", "killer yourself", "杀",
          "人", "how to make a cake", "card 1234-5678-9012-3456"]  # pii is below block_at


@pytest.mark.parametrize("text,matched", CAUGHT)
def test_evasions_are_caught(policy, text, matched) -> None:
    v = policy.check(text)
    assert v.blocked, text
    m = min(v.matches, key=lambda m: m.start)
    assert text[m.start:m.end] == matched


@pytest.mark.parametrize("text", PASSES)
def test_innocent_words_pass(policy, text) -> None:
    assert not policy.check(text).blocked, (text, policy.check(text).matches)


def test_severity_below_block_at_is_reported_not_blocked(policy) -> None:
    v = policy.check("card 1234-5678-9012-3456")
    assert [m.category for m in v.matches] == ["pii"] and not v.blocked and v.scores["pii"] < 0.5


def test_example_policy_file_loads_and_blocks() -> None:
    p = SafetyPolicy.from_file(REPO / "configs" / "safety_example.yaml")
    assert p.check("You IDIOT").blocked and p.check("你这个白癡").blocked
    assert not p.check("an idiotic plan, said the idiom dictionary").blocked


@pytest.mark.parametrize("text,error", [
    ("categories: {}\n", "expected a mapping with 'categories"),
    ("categories: {x: [a]}\nblock_at: huge\n", "'block_at' must be one of"),
    ("categories: {x: {terms: [a], severity: extreme}}\n", "categories.x.severity"),
    ("categories: {x: {regexes: ['(']}}\n", "categories.x.regexes: '(' is not a valid regex"),
    ("categories: {x: ['...']}\n", "categories.x.terms: '...' has no letters or digits"),
    ("categories: {x: [a]}\ncolour: red\n", "unknown key(s) ['colour']"),
    ("categories: {x: {}}\n", "categories.x: lists no terms and no regexes"),
    ("categories: {x: [a]}\nclassifier: {url: http://x, model: /y}\n", "'classifier' must be a mapping"),
    ("categories: [\n", "invalid YAML"),
])
def test_policy_file_errors_name_the_file_and_field(tmp_path, text, error) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as e:
        SafetyPolicy.from_file(f)
    assert str(f) in str(e.value) and error in str(e.value)
    with pytest.raises(FileNotFoundError):
        SafetyPolicy.from_file(tmp_path / "missing.yaml")


def test_stream_guard_catches_a_split_phrase_and_delays_clean_text_by_the_window(policy) -> None:
    g = policy.stream_guard()
    sent = g.feed("Well, you are an id").text + g.feed("iot and more").text
    assert g.blocked is not None and sent == "Well, you are an "
    # Clean text, one character at a time: everything but the last hold_chars characters is out.
    g, sent = policy.stream_guard(), ""
    text = "The model learns to predict the next token; 它学会预测下一个词元。" * 3
    for i, ch in enumerate(text, 1):
        sent += g.feed(ch).text
        assert len(sent) >= i - policy.hold_chars and text.startswith(sent)
    sent += g.finish().text
    assert sent == text and g.blocked is None
    # A listed word still growing at the end is held until its word boundary decides it.
    g = policy.stream_guard()
    out = [g.feed(c).text for c in ["x" * 40, " ass", "ert done"]] + [g.finish().text]
    assert "".join(out) == "x" * 40 + " assert done" and g.blocked is None


def _term_from_greedy_output(text: str) -> str:
    """A piece of the model's own greedy answer to list as a term (CJK pair, else a whole word)."""
    m = re.search(r"[\u4e00-\u9fff]{2}", text[8:]) or re.search(r"\b[A-Za-z]{3,}\b", text[8:])
    assert m, f"no usable term in {text!r}"
    return m.group(0)


@pytest.fixture(scope="module")
def greedy(tiny_model_dir):
    """The tiny model's greedy answer to MSGS (long enough to pick a term from), and a policy listing a
    piece of it."""
    cfg = EngineConfig(max_batch=4, max_len=256, queue_size=16)
    with run_server(tiny_model_dir, cfg) as s:
        prompt = s.engine.chat_prompt(MSGS)
        params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
        text = s.engine.generate([prompt], params)[0].text
    term = _term_from_greedy_output(text)
    spec = {"categories": {"listed": [term], "insult": ["idiot", "白痴"]}, "hold_chars": 8}
    return text, term, SafetyPolicy.from_dict(spec)


MSGS = [{"role": "user", "content": "写一首关于春天的诗"}]


def test_server_moderates_input_output_and_streams(tiny_model_dir, greedy) -> None:
    text, term, policy = greedy
    blocks: list[tuple[str, list[str]]] = []
    policy.on_block(lambda where, cats: blocks.append((where, cats)))
    keep = text[:policy.check(text).first_start]
    cfg = EngineConfig(max_batch=4, max_len=256, queue_size=16)
    with run_server(tiny_model_dir, cfg, ServerOptions(safety=policy)) as s:
        c = openai.OpenAI(base_url=s.api, api_key="x", max_retries=0, timeout=60)
        # Input: a listed word in any message is an OpenAI-style 400 with the content-policy code.
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "你这白癡"}])
        assert e.value.code == "content_policy_violation" and e.value.body["param"] == "messages"
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="tiny-chat", prompt="you I.D.I.O.T", max_tokens=2)
        assert e.value.code == "content_policy_violation" and e.value.body["param"] == "prompt"
        ok = c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "an idiom"}],
                                       max_tokens=2)
        assert ok.choices[0].finish_reason in ("length", "stop")
        # Output: generation stops at the listed piece; the text before it is kept.
        kw = dict(model="tiny-chat", messages=MSGS, max_tokens=60, temperature=0,
                  extra_body={"ignore_eos": True})
        r = c.chat.completions.create(**kw)
        assert r.choices[0].finish_reason == "content_filter" and r.choices[0].message.content == keep
        chunks = list(c.chat.completions.create(stream=True, **kw))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == keep
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] \
            == ["content_filter"]
        # n=2 streamed: both choices are cut and the stream still ends.
        texts = ["", ""]
        for ch in c.chat.completions.create(stream=True, n=2, **kw):
            for choice in ch.choices:
                texts[choice.index] += choice.delta.content or ""
        assert texts == [keep, keep]
        deadline = time.monotonic() + 10  # the cut requests were cancelled: their slots are free
        while s.engine.free_slots() != 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.engine.free_slots() == 4
        assert blocks[:2] == [("input", ["insult"]), ("input", ["insult"])]
        assert blocks[2:] == [("output", ["listed"])] * 4 and policy.blocked_total == 6
        # /v1/moderations in OpenAI's shape, read by the openai client.
        res = c.moderations.create(input=["a clean sentence", f"xx {term} yy", "白 癡"]).results
        assert [x.flagged for x in res] == [False, True, True]
        assert res[1].categories.model_dump()["listed"] is True
        assert res[2].category_scores.model_dump()["insult"] == 1.0


def test_moderations_without_a_policy_is_404(server) -> None:
    r = httpx.post(server.api + "/moderations", json={"input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_remote_moderation_endpoint_as_the_classifier(tiny_model_dir) -> None:
    """Server B's /v1/moderations (any OpenAI-compatible endpoint) is server A's semantic classifier."""
    remote = SafetyPolicy.from_dict({"categories": {"violence": ["kill yourself"]}})
    cfg = EngineConfig(max_batch=2, max_len=128)
    with run_server(tiny_model_dir, cfg, ServerOptions(safety=remote)) as b:
        local = SafetyPolicy.from_dict({"categories": {"insult": ["idiot"]},
                                        "classifier": {"url": b.api, "threshold": 0.9}})
        with run_server(tiny_model_dir, cfg, ServerOptions(safety=local)) as a:
            c = openai.OpenAI(base_url=a.api, api_key="x", max_retries=0, timeout=60)
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="tiny-chat",
                                          messages=[{"role": "user", "content": "K.ill yourself"}])
            assert "violence" in e.value.message
            r = c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2)
            assert r.choices[0].message.content is not None


def test_unreachable_remote_classifier_fails_closed(tiny_model_dir) -> None:
    """A classifier that does not answer: prompts and /v1/moderations get a 503 in OpenAI's shape
    (never a 500, never an unchecked pass), and the client's one retry is counted."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    policy = SafetyPolicy.from_dict({"categories": {"insult": ["idiot"]}, "classifier": {"url": dead}})
    cfg = EngineConfig(max_batch=2, max_len=128)
    with run_server(tiny_model_dir, cfg, ServerOptions(safety=policy)) as a:
        r = httpx.post(a.api + "/chat/completions", timeout=60,
                       json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "classifier_unavailable"
        assert dead in r.json()["error"]["message"]
        r = httpx.post(a.api + "/moderations", json={"input": "hi"}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    usage = policy.classifier.client.usage
    assert usage.failed == 2 and usage.requests == 4 and usage.retries == 2
    # checking answers only: the answer that could not be checked is withheld
    policy = SafetyPolicy.from_dict({"categories": {"insult": ["idiot"]}, "apply_to": ["output"],
                                     "classifier": {"url": dead}})
    with run_server(tiny_model_dir, cfg, ServerOptions(safety=policy)) as a:
        c = openai.OpenAI(base_url=a.api, api_key="x", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=4)
        assert r.choices[0].finish_reason == "content_filter" and not r.choices[0].message.content


def test_hf_sequence_classifier(tmp_path, tokenizer_dir) -> None:
    """A Hugging Face sequence classifier directory; ``safe`` is ignored, other labels flag."""
    for flags in (True, False):
        model_dir = _classifier_dir(tmp_path / str(flags), tokenizer_dir, flags)
        p = SafetyPolicy.from_dict({"categories": {"x": ["zzz"]}, "classifier": {"model": str(model_dir)}})
        [v] = p.moderate(["一句话 a sentence"])
        assert set(v.scores) == {"violence"} and v.blocked == flags
        assert (v.scores["violence"] > 0.99) == flags


def test_the_docs_policy_example_runs() -> None:
    """docs/serve.md's policy heredoc, and what its curl example asks /v1/moderations."""
    doc = (REPO / "docs" / "serve.md").read_text(encoding="utf-8")
    yaml_text = doc.split("cat > policy.yaml <<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    p = SafetyPolicy.from_dict(yaml.safe_load(yaml_text))
    verdicts = p.moderate(["an idiomatic phrase", "你这个白癡", "K.I.L.L  yourself"])
    assert [v.blocked for v in verdicts] == [False, True, True]
    assert not p.check("card 1234-5678-9012-3456").blocked and p.check("card 1234-5678-9012-3456").matches


def test_streamed_tool_calls_pass_through_moderation_intact(tiny_model_dir) -> None:
    """Held events keep their token ids, so the tool-call parser sees markers and text in order."""
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}}}
    policy = SafetyPolicy.from_dict({"categories": {"insult": ["idiot"]}, "hold_chars": 16})
    opts = ServerOptions(safety=policy)
    with run_server(tiny_model_dir, EngineConfig(max_batch=2, max_len=512), opts) as s:
        c = openai.OpenAI(base_url=s.api, api_key="x", max_retries=0, timeout=120)
        ask = [{"role": "user", "content": "现在几点?"}]
        kw = dict(model="tiny-chat", messages=ask, tools=[tool], tool_choice="required", max_tokens=200,
                  seed=0)
        whole = c.chat.completions.create(**kw).choices[0]
        with c.chat.completions.stream(**kw) as stream:
            final = stream.get_final_completion().choices[0]
    assert whole.finish_reason == final.finish_reason == "tool_calls"
    got = [(t.function.name, t.function.arguments) for t in final.message.tool_calls]
    assert got == [(t.function.name, t.function.arguments) for t in whole.message.tool_calls]
    assert all(isinstance(json.loads(args)["utc"], bool) for _, args in got)


def _classifier_dir(path: Path, tokenizer_dir, flags: bool) -> Path:
    """A tiny BERT sequence classifier (labels safe / violence) whose answer is fixed by its bias."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=512, num_labels=2,
                     id2label={0: "safe", 1: "violence"}, label2id={"safe": 0, "violence": 1},
                     pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 8.0] if flags else [8.0, 0.0]))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_output_classifier_withholds_the_answer(tmp_path, tokenizer_dir, tiny_model_dir) -> None:
    """A classifier verdict has no position: a whole answer is withheld, a stream keeps what it sent."""
    spec = {"categories": {"x": ["zzqqxx"]}, "apply_to": ["output"], "hold_chars": 8,
            "classifier": {"model": str(_classifier_dir(tmp_path / "cls", tokenizer_dir, flags=True))}}
    policy = SafetyPolicy.from_dict(spec)
    opts = ServerOptions(safety=policy)
    with run_server(tiny_model_dir, EngineConfig(max_batch=2, max_len=256), opts) as s:
        c = openai.OpenAI(base_url=s.api, api_key="x", max_retries=0, timeout=60)
        kw = dict(model="tiny-chat", messages=MSGS, max_tokens=40, temperature=0,
                  extra_body={"ignore_eos": True})
        full = s.engine.generate([s.engine.chat_prompt(MSGS)],
                                 SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0].text
        r = c.chat.completions.create(**kw)  # prompts are not checked (apply_to: output)
        assert r.choices[0].finish_reason == "content_filter" and r.choices[0].message.content == ""
        chunks = [ch.choices[0] for ch in c.chat.completions.create(stream=True, **kw) if ch.choices]
        sent = "".join(ch.delta.content or "" for ch in chunks)
        assert chunks[-1].finish_reason == "content_filter"
        assert full.startswith(sent) and 0 < len(sent) <= len(full) - 8
