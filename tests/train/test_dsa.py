"""DeepSeek-V3.2 training: a V3 run converted to V3.2 by `seekforge train`, the dense warm-up (only
the indexers move) and the sparse stage, resume, and the errors for bad stage/shape settings."""

from __future__ import annotations

import pytest
import torch

from seekforge.config import ConfigError
from seekforge.model import load_model
from seekforge.model.hf import read_safetensors
from seekforge.train import Trainer
from seekforge.train.config import load_train_config
from seekforge.train.metrics import read_metrics

DSA = {"model.index_topk": 16, "model.index_n_heads": 4, "model.index_head_dim": 16}


@pytest.fixture
def from_dir(overrides):
    """A run that continues from the model directory ``source`` with ``model.*`` fields added."""
    def make(source, out_dir, **extra):
        items = [o for o in overrides(out_dir, **extra) if not o.startswith("model=")]
        return load_train_config(None, [f"model.preset={source}", *items])

    return make


def test_v3_checkpoint_converts_to_v32_and_trains_in_both_stages(make_config, from_dir, tmp_path):
    Trainer(make_config(out_dir=tmp_path / "v3", max_steps=4)).run()
    v3_dir = tmp_path / "v3" / "latest"
    v3 = read_safetensors(v3_dir)

    warm = from_dir(v3_dir, tmp_path / "warm", dsa_stage="dense_warmup", max_steps=4, **DSA)
    Trainer(warm).run()
    warm_dir = tmp_path / "warm" / "latest"
    warmed = read_safetensors(warm_dir)
    assert load_model(warm_dir, device="cpu").config.index_topk == 16
    for name, tensor in v3.items():  # the main model is frozen during the warm-up
        assert torch.equal(warmed[name], tensor), name
    assert any(".indexer." in k for k in warmed)
    records = read_metrics(tmp_path / "warm" / "metrics.jsonl")
    losses = [r["indexer_loss"] for r in records if "train_loss" in r]
    assert len(losses) == 4 and all(x > 0 for x in losses)  # KL(attention || indexer) is logged
    assert all(0 <= r["indexer_recall"] <= 1 for r in records if "train_loss" in r)  # and the top-k recall

    sparse = from_dir(warm_dir, tmp_path / "sparse", dsa_stage="sparse", max_steps=3)
    Trainer(sparse).run()
    trained = read_safetensors(tmp_path / "sparse" / "latest")
    name = "model.layers.0.self_attn.q_a_proj.weight"
    assert not torch.equal(trained[name], warmed[name])  # the model itself trains in the sparse stage


def test_dsa_stage_errors_name_the_key(make_config, from_dir, tmp_path):
    with pytest.raises(ConfigError, match="dsa_stage"):
        make_config(dsa_stage="warmup")
    with pytest.raises(ConfigError, match="dsa_stage.*index_topk"):
        Trainer(make_config(dsa_stage="sparse", max_steps=1)).run()
    Trainer(make_config(out_dir=tmp_path / "v3", max_steps=1)).run()
    smaller = {**DSA, "model.kv_lora_rank": 16}
    bad = from_dir(tmp_path / "v3" / "latest", tmp_path / "bad", max_steps=1, **smaller)
    with pytest.raises(ValueError, match=r"kv_a_layernorm.weight has shape \[32\] in the checkpoint"):
        Trainer(bad).run()


def test_sparse_stage_resumes_exactly(make_config, tmp_path):
    run = dict(model="tiny-dsa", dsa_stage="sparse", max_steps=6, save_every=3, keep_last=10)
    Trainer(make_config(out_dir=tmp_path / "a", **run)).run()
    Trainer(make_config(out_dir=tmp_path / "b", resume=str(tmp_path / "a" / "step-000003"), **run)).run()
    a, b = read_safetensors(tmp_path / "a" / "step-000006"), read_safetensors(tmp_path / "b" / "step-000006")
    assert a.keys() == b.keys() and any(".indexer." in k for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resuming_with_another_trained_set_is_a_clear_error(make_config, tmp_path):
    """A checkpoint of a sparse-stage run (indexers trained) resumed without dsa_stage (indexers
    frozen): the optimizer's groups differ, and the error says why and what to do."""
    Trainer(make_config(out_dir=tmp_path / "a", model="tiny-dsa", dsa_stage="sparse", max_steps=2,
                        save_every=2)).run()
    cfg = make_config(out_dir=tmp_path / "b", model="tiny-dsa", max_steps=4,
                      resume=str(tmp_path / "a" / "step-000002"))
    with pytest.raises(ValueError, match=r"cannot resume: .* this run trains .*dsa_stage.*resume=never"):
        Trainer(cfg).run()
