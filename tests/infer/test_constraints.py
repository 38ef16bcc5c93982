"""Constrained decoding in the engine: a random-weight tiny model with the real tokenizer produces
output that parses / matches whenever it finishes by stop, in batches mixed with free requests."""

from __future__ import annotations

import json
import re

import pytest

from seekforge.infer import Constraint, Engine, EngineConfig, GrammarError, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"},
                   "color": {"enum": ["red", "绿色"]}},
    "required": ["ok", "n", "color"],
}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    with Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=6, max_len=256)) as eng:
        yield eng


def sampled(n: int, seed: int, constraint: Constraint | None = None, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=1.0, seed=seed, constraint=constraint, **kw)


def check_schema(value: object) -> None:
    assert isinstance(value, dict) and set(value) == {"ok", "n", "color"}
    assert isinstance(value["ok"], bool) and isinstance(value["n"], int) and value["color"] in ("red", "绿色")


def test_json_schema_in_a_batch_with_free_requests(engine) -> None:
    free = [sampled(30, 100 + i, ignore_eos=True) for i in range(2)]
    alone = [r.token_ids for r in engine.generate(["Hello", "我们"], free)]
    constrained = [sampled(120, i, Constraint.json_schema(SCHEMA)) for i in range(4)]
    # 6 requests on 6 slots: two unconstrained rows decode in the same batches as four constrained ones.
    res = engine.generate(["Hello", "我们"] + ["Give me JSON"] * 4, free + constrained)
    assert [r.token_ids for r in res[:2]] == alone  # masking other rows does not touch free ones
    stops = [r for r in res[2:] if r.finish_reason == "stop"]
    assert len(stops) >= 3
    for r in stops:
        assert r.token_ids[-1] in engine.eos_ids  # ended by EOS, which the grammar allowed only at the end
        check_schema(json.loads(r.text))


def test_json_object_parses_when_stopped(engine) -> None:
    res = engine.generate(["{"] * 6, [sampled(60, i, Constraint.json_object()) for i in range(6)])
    stops = [r for r in res if r.finish_reason == "stop"]
    assert stops, [r.text for r in res]
    for r in stops:
        assert isinstance(json.loads(r.text), dict)
    for r in res:
        assert r.finish_reason in ("stop", "length")
        if r.finish_reason == "length":
            assert len(r.token_ids) == 60 and r.text.lstrip().startswith("{")


def test_regex_and_grammar(engine) -> None:
    pattern = r"\d{3}-[a-z]{2,6}"
    res = engine.generate(["id:"] * 4, [sampled(40, i, Constraint.regex(pattern)) for i in range(4)])
    for r in res:
        assert r.finish_reason == "stop" and re.fullmatch(pattern, r.text), r.text
    ebnf = 'root ::= "yes" | "no" | "可能"'
    res = engine.generate(["?"] * 3, [sampled(10, i, Constraint.grammar(ebnf))
                                      for i in range(3)])
    assert all(r.finish_reason == "stop" and r.text in ("yes", "no", "可能") for r in res)


def test_cut_output_says_length(engine) -> None:
    r = engine.generate(["x"], sampled(3, 0, Constraint.json_schema(SCHEMA)))[0]
    assert r.finish_reason == "length" and len(r.token_ids) == 3 and r.text.startswith("{")


@pytest.mark.parametrize("constraint, needle", [
    (Constraint.regex("(ab"), "regex"),
    (Constraint.grammar("root ::= undefined_rule"), "EBNF grammar"),
    (Constraint.json_schema({"type": "no-such-type"}), "JSON schema"),
])
def test_bad_constraint_is_a_value_error(engine, constraint, needle) -> None:
    with pytest.raises(GrammarError, match=needle) as info:
        engine.submit("x", sampled(5, 0, constraint))
    assert isinstance(info.value, ValueError) and info.value.param == "constraint"


def test_constraint_validation() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        Constraint.json_schema("{nope")
    with pytest.raises(ValueError, match="must be an object"):
        Constraint.json_schema("[1]")
    with pytest.raises(ValueError, match="constraint must be"):
        SamplingParams(constraint={"type": "json_object"}).validate()


def test_speculative_decoding_keeps_constraints_exact(tiny_model_dir, engine) -> None:
    """MTP drafts are verified against the masked distribution: greedy output equals plain decoding."""
    greedy = [SamplingParams(max_tokens=40, temperature=0.0, constraint=Constraint.json_schema(SCHEMA)),
              SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)]
    prompts = ["Give me JSON", "Hello"]
    plain = engine.generate(prompts, greedy)
    cfg = EngineConfig(max_batch=4, max_len=256, speculative=True)
    with Engine.from_pretrained(tiny_model_dir, cfg) as spec:
        fast = spec.generate(prompts, greedy)
        seeded = spec.generate(["Give me JSON"] * 3, [sampled(120, i, Constraint.json_schema(SCHEMA))
                                                      for i in range(3)])
        assert spec.stats.draft_tokens_total > 0
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    for r in seeded:
        if r.finish_reason == "stop":
            check_schema(json.loads(r.text))
