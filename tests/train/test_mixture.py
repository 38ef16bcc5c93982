"""Data mixtures: row allocation, weight schedules, the mixture loader, config errors, a real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seekforge.config import ConfigError
from seekforge.data.shards import TokenShards
from seekforge.train.config import load_train_config
from seekforge.train.loader import MixtureLoader, PackedRows, PretrainLoader
from seekforge.train.metrics import read_metrics
from seekforge.train.mixture import (
    FixedWeights,
    LossDrivenWeights,
    PiecewiseWeights,
    Point,
    allocate_rows,
    parse_schedule,
    parse_sources,
)
from seekforge.train.trainer import Trainer


def _mixture(tiny_shards, counting_shards, wa=0.75, wb=0.25) -> dict[str, str]:
    return {"data.train.prose.path": str(tiny_shards), "data.train.prose.weight": wa,
            "data.train.count.path": str(counting_shards), "data.train.count.weight": wb}


# ---------------------------------------------------------------------------------------------
# allocation and schedules


def test_allocation_tracks_the_weights_within_one_row_over_any_span():
    rng = np.random.default_rng(0)
    carry = np.zeros(3)
    total = np.zeros(3, dtype=np.int64)
    owed = np.zeros(3)
    for step in range(200):
        w = rng.dirichlet(np.ones(3)) if step % 50 < 25 else np.array([0.7, 0.3, 0.0])
        counts, carry = allocate_rows(w, 6, carry)
        assert counts.sum() == 6 and (counts >= 0).all()
        total += counts
        owed += w * 6
        assert np.abs(total - owed).max() < 1.0 + 1e-9
    # a weight of 0 from the start never gets a row, even with an uneven split of few rows
    counts, _ = allocate_rows(np.array([0.0, 0.5, 0.5]), 3, np.zeros(3))
    assert counts[0] == 0 and counts.sum() == 3


def test_piecewise_weights_step_or_interpolate():
    a, b = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    steps = PiecewiseWeights([Point(0.0, a), Point(0.3, b)], interpolate=False)
    assert np.allclose(steps.weights(0.29), a) and np.allclose(steps.weights(0.3), b)
    assert np.allclose(steps.weights(1.0), b)
    lin = PiecewiseWeights([Point(0.2, a), Point(0.6, b)], interpolate=True)
    assert np.allclose(lin.weights(0.0), a) and np.allclose(lin.weights(0.4), [0.7, 0.3])
    assert np.allclose(lin.weights(0.9), b)


def test_loss_driven_weights_favour_the_source_that_improved_least_and_keep_the_floor():
    sched = LossDrivenWeights(np.array([1.0, 1.0, 1.0]), step_size=5.0, floor=0.3)
    assert sched.needs_reference and np.allclose(sched.weights(0.0), 1 / 3)
    sched.observe(np.array([8.0, 8.0, 8.0]))  # the reference (untrained model)
    assert not sched.needs_reference and np.allclose(sched.weights(0.0), 1 / 3)
    for _ in range(3):  # source 0 stalls at 90% of its start, 1 and 2 fall to 50% and 40%
        sched.observe(np.array([7.2, 4.0, 3.2]))
    w = sched.weights(0.5)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] > w[1] > w[2]
    assert w.min() >= 0.3 / 3 - 1e-12 and w[2] == pytest.approx(0.1, abs=1e-3)  # starved but for the floor
    other = LossDrivenWeights(np.ones(3), 5.0, 0.3)
    other.load_state_dict(sched.state_dict())
    assert np.array_equal(other.weights(0.5), w) and not other.needs_reference


def test_fixed_weights_are_normalised():
    assert np.allclose(FixedWeights(np.array([3.0, 1.0])).weights(0.7), [0.75, 0.25])


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("extra, message", [
    ({"data.train.prose.weight": -1}, "data.train.prose.weight: must be >= 0"),
    ({"data.train.prose.weight": 0, "data.train.count.weight": 0}, "the source weights sum to 0"),
    ({"data.train.prose.wieght": 1}, "data.train.prose: unknown key 'wieght'; valid keys: path, weight, val"),
    ({"data.schedule.kind": "piecewise", "data.schedule.points": "[{at: 0, weights: {prose: 1, poems: 1}}]"},
     "data.schedule.points[0].weights: unknown source 'poems'; the sources in data.train are: prose, count"),
    ({"data.schedule.kind": "piecewise", "data.schedule.points": "[{at: 0.5}, {at: 0.2}]"},
     "data.schedule.points[1].at: 0.2 must be larger than the previous point's 0.5"),
    ({"data.schedule.kind": "piecewise", "data.schedule.points": "[{at: 0, weights: {prose: 0}}]"},
     "data.schedule.points[0].weights: the weights sum to 0"),
    ({"data.schedule.kind": "loss", "data.schedule.floor": 1.5}, "data.schedule.floor: must be in [0, 1)"),
    ({"data.schedule.kind": "loss", "eval_every": 0}, "eval_every is 0"),
    ({"data.schedule.kind": "dorami"},
     "data.schedule.kind: 'dorami' is not one of ['fixed', 'piecewise', 'loss']"),
    ({"data.val": "elsewhere/"}, "data.val: not used with a mixture"),
])
def test_bad_mixture_settings_name_the_key(overrides, tiny_shards, counting_shards, tmp_path, extra, message):
    sets = {**_mixture(tiny_shards, counting_shards), "eval_every": 5, **extra}
    with pytest.raises(ConfigError) as e:
        load_train_config(None, overrides(tmp_path / "run", **sets))
    assert message in str(e.value)


def test_schedule_needs_a_mixture(overrides, tmp_path):
    with pytest.raises(ConfigError, match="data.schedule.kind: 'loss' needs a mixture in data.train"):
        load_train_config(None, overrides(tmp_path, **{"data.schedule.kind": "loss"}))


def test_a_source_without_shards_is_named(overrides, tiny_shards, counting_shards, tmp_path):
    empty = tmp_path / "not_shards"
    empty.mkdir()
    sets = {**_mixture(tiny_shards, counting_shards), "data.train.count.path": str(empty)}
    cfg = load_train_config(None, overrides(tmp_path / "run", **sets))
    with pytest.raises(ConfigError, match=r"data.train.count.path: .*not_shards is not a token-shard folder"):
        Trainer(cfg).run()
    sets = {**_mixture(tiny_shards, counting_shards), "data.train.count.val": str(empty)}
    cfg = load_train_config(None, overrides(tmp_path / "run2", **sets))
    with pytest.raises(ConfigError, match=r"data.train.count.val: .*not_shards is not a token-shard folder"):
        Trainer(cfg).run()


def test_sources_parse_in_order_with_shorthand():
    sources = parse_sources({"a": "x/", "b": {"path": "y/", "weight": 2}})
    assert [(s.name, s.path, s.weight) for s in sources] == [("a", "x/", 1.0), ("b", "y/", 2.0)]
    spec = parse_schedule(type("S", (), {"kind": "piecewise", "points": [{"at": 0, "weights": "uniform"},
                                                                         {"at": 0.5}],
                                         "interpolate": False, "step_size": 1.0, "floor": 0.1})(), sources)
    assert np.allclose(spec.points[0].weights, [0.5, 0.5])
    assert np.allclose(spec.points[1].weights, [1 / 3, 2 / 3])


# ---------------------------------------------------------------------------------------------
# the loader


def _loader(tiny_shards, counting_shards, weights, rank=0, world=1, accum=2, schedule=None) -> MixtureLoader:
    rows = [PackedRows(TokenShards(p, "train"), 32, seed=0) for p in (tiny_shards, counting_shards)]
    return MixtureLoader(rows, ["prose", "count"], schedule or FixedWeights(np.array(weights)), 100, 4, accum,
                         rank, world)


def test_mixture_loader_realises_the_weights_and_oversamples_the_small_source(tiny_shards, counting_shards):
    ld = _loader(tiny_shards, counting_shards, [0.25, 0.75])
    prose = {tuple(r) for r in PackedRows(TokenShards(tiny_shards, "train"), 32, 0).rows(0, 400)}
    from_prose = 0
    for _ in range(40):
        for b in ld.next_step():
            from_prose += sum(tuple(r) in prose for r in b["input_ids"].tolist())
    assert ld.source_rows.tolist() == [80, 240]  # 320 rows, exactly 1:3
    assert from_prose == 80  # and those rows really came from that source
    assert ld.epoch > 1.0  # the small counting corpus was repeated
    record = ld.eval_record()
    assert record["mix_share/count"] == 0.75 and record["mix_tokens/prose"] == 80 * 32
    assert record["mix_weight/prose"] == 0.25


def test_mixture_loader_ranks_partition_the_step_and_resume_exactly(tiny_shards, counting_shards):
    single = _loader(tiny_shards, counting_shards, [0.6, 0.4], accum=2)
    ranks = [_loader(tiny_shards, counting_shards, [0.6, 0.4], rank=r, world=2, accum=1) for r in range(2)]
    for _ in range(3):
        one = torch.cat([b["input_ids"] for b in single.next_step()])
        two = torch.cat([ld.next_step()[0]["input_ids"] for ld in ranks])
        assert torch.equal(one, two)
    sched = LossDrivenWeights(np.array([0.5, 0.5]), 2.0, 0.1)
    a = _loader(tiny_shards, counting_shards, None, schedule=sched)
    a.observe_eval({"val_bpb/prose": 5.0, "val_bpb/count": 5.0})
    for i in range(5):
        a.next_step()
        if i == 2:
            a.observe_eval({"val_bpb/prose": 4.5, "val_bpb/count": 2.0})
    sched_b = LossDrivenWeights(np.array([0.5, 0.5]), 2.0, 0.1)
    b = _loader(tiny_shards, counting_shards, None, schedule=sched_b)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.current_weights(), b.current_weights()) and a.current_weights()[0] > 0.5
    for _ in range(3):
        assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a.next_step(), b.next_step()))
    with pytest.raises(ValueError, match="no validation bits/byte for source"):
        a.observe_eval({"val_bpb/prose": 4.0})
    # a mixture's position means nothing to a single-source loader, and the reverse
    single = PretrainLoader(PackedRows(TokenShards(tiny_shards, "train"), 32, seed=0), 4, 2)
    with pytest.raises(ValueError, match="saved by a mixture of sources prose,count"):
        single.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="sources=None; this run has .*sources=prose,count"):
        b.load_state_dict(single.state_dict())


# ---------------------------------------------------------------------------------------------
# a real run


def test_a_mixture_run_logs_per_source_bpb_and_the_realised_mix(overrides, tiny_shards, counting_shards,
                                                               tmp_path):
    sets = {**_mixture(tiny_shards, counting_shards, 0.5, 0.5), "eval_every": 4, "max_steps": 12,
            "data.schedule.kind": "loss", "data.schedule.step_size": 20.0, "tensorboard": True,
            "data.train.count.val": str(counting_shards)}  # the same val split, named explicitly
    cfg = load_train_config(None, overrides(tmp_path / "run", **sets))
    summary = Trainer(cfg).run()
    reference, *evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_bpb" in r]
    assert reference["step"] == 0 and "train_loss" not in reference  # the untrained model, before step 1
    assert [r["step"] for r in evals] == [4, 8, 12]
    for r in evals:
        assert r["mix_share/prose"] + r["mix_share/count"] == pytest.approx(1.0)
        assert r["val_bpb/prose"] > 0 and r["val_bpb/count"] > 0
        assert r["mix_tokens/prose"] + r["mix_tokens/count"] == r["tokens"]
    # the first interval follows the starting weights; then the source whose bpb fell least (as a
    # fraction of its step-0 value) gains weight, exactly as the update rule says
    assert evals[0]["mix_share/prose"] == 0.5
    left = {n: evals[0][f"val_bpb/{n}"] / reference[f"val_bpb/{n}"] for n in ("prose", "count")}
    lagging = max(left, key=left.get)
    expect = 1 / (1 + np.exp(20.0 * (min(left.values()) - max(left.values()))))
    assert evals[0][f"mix_weight/{lagging}"] == pytest.approx(0.9 * expect + 0.05)
    assert summary["val_bpb/prose"] == evals[-1]["val_bpb/prose"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert {"mix_share/prose", "val_bpb/count", "mix_weight/count"} <= set(acc.Tags()["scalars"])


def test_sources_from_different_tokenizers_are_refused(overrides, tiny_shards, tmp_path):
    from seekforge.data.tokenize import tokenize_to_shards
    from seekforge.tokenizer import train_tokenizer

    texts = [f"{i} one two three four five. 一二三四五。" * 20 for i in range(100)]
    tok = train_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "tok300")
    src = tmp_path / "c.txt"
    src.write_text("\n\n".join(texts), encoding="utf-8")
    other = tmp_path / "other"
    tokenize_to_shards(src, tok, other, val_fraction=0.1, txt_mode="paragraphs", workers=0)
    sets = {"data.train.prose.path": str(tiny_shards), "data.train.count.path": str(other)}
    cfg = load_train_config(None, overrides(tmp_path / "run", **sets))
    with pytest.raises(ConfigError, match="data.train.count.path: .* must use the same tokenizer"):
        Trainer(cfg).run()
