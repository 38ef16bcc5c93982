"""`seekforge train` on a DeepSeek-V4 preset: the same loop learns, balances the learned routers,
keeps the hash table frozen, saves directories transformers loads, and resumes exactly; V3.2's
indexer stages (`dsa_stage`) train the CSA layers' lightning indexers."""

from __future__ import annotations

import pytest
import torch

from seekforge.train import Trainer
from seekforge.train import checkpoint as ckpt
from seekforge.train.config import load_train_config
from seekforge.train.metrics import read_metrics


def _losses(out_dir) -> list[float]:
    return [r["train_loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "train_loss" in r]


def test_v4_trains_saves_and_resumes(make_config, tmp_path):
    from seekforge.model import load_model
    from seekforge.model.v4 import DeepseekV4ForCausalLM

    cfg = make_config(model="tiny-v4", max_steps=16, save_every=8, eval_every=8, keep_last=5,
                      out_dir=tmp_path / "full")
    Trainer(cfg).run()
    losses = _losses(tmp_path / "full")
    assert len(losses) == 16 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert "val_bpb" in records[-1] and "mfu" in records[-1] and "expert_imbalance" in records[-1]

    final = load_model(tmp_path / "full" / "latest")
    assert isinstance(final, DeepseekV4ForCausalLM) and final.config.vocab_size == 512
    first = load_model(tmp_path / "full" / "step-000008")
    # learned routers moved their bias; the hash layer's token -> expert table did not change
    assert not torch.equal(final.moe_layers[0].mlp.gate.e_score_correction_bias,
                           torch.zeros_like(final.moe_layers[0].mlp.gate.e_score_correction_bias))
    assert torch.equal(final.model.layers[0].mlp.gate.tid2eid, first.model.layers[0].mlp.gate.tid2eid)

    # as if the run had died after step 8: drop the last checkpoint, run again -> the same losses
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", resumed, symlinks=True)
    shutil.rmtree(resumed / "step-000016")
    ckpt.set_pointer(resumed, "latest", resumed / "step-000008")
    Trainer(make_config(model="tiny-v4", max_steps=16, save_every=8, eval_every=8, keep_last=5,
                        out_dir=resumed)).run()
    assert ckpt.read_pointer(resumed).name == "step-000016"
    assert _losses(resumed) == losses

    transformers = pytest.importorskip("transformers")
    hf = transformers.DeepseekV4ForCausalLM.from_pretrained(tmp_path / "full" / "latest").eval()
    ids = torch.randint(0, 512, (1, 40))
    with torch.no_grad():
        assert (hf(ids).logits - final(ids).logits).abs().max().item() < 1e-4


def test_cli_dense_warmup_trains_only_v4_indexers_and_logs_their_loss(overrides, tmp_path):
    from seekforge.cli import main
    from seekforge.model import load_model
    from seekforge.model.hf import read_safetensors

    Trainer(load_train_config(None, overrides(tmp_path / "base", model="tiny-v4", max_steps=2))).run()
    base_dir = tmp_path / "base" / "latest"
    args = ["train"]
    for item in overrides(tmp_path / "warm", max_steps=6, seq_len=128):
        args += ["--set", item if not item.startswith("model=") else f"model={base_dir}"]
    assert main([*args, "--set", "dsa_stage=dense_warmup"]) == 0
    records = [r for r in read_metrics(tmp_path / "warm" / "metrics.jsonl") if "train_loss" in r]
    kl = [r["indexer_loss"] for r in records]
    assert len(kl) == 6 and all(0 < x < float("inf") for x in kl) and kl[-1] < kl[0], kl
    assert all(0 < r["indexer_recall"] <= 1 for r in records)
    base, warmed = read_safetensors(base_dir), read_safetensors(tmp_path / "warm" / "latest")
    assert base.keys() == warmed.keys()
    for name, tensor in base.items():  # the warm-up moves the CSA indexers and nothing else
        assert torch.equal(warmed[name], tensor) != (".indexer." in name), name
    load_model(tmp_path / "warm" / "latest")  # still a V4 directory seekforge (and transformers) loads


def test_v4_sparse_stage_resumes_exactly(make_config, tmp_path):
    run = dict(model="tiny-v4", dsa_stage="sparse", max_steps=6, save_every=3, keep_last=10)
    Trainer(make_config(out_dir=tmp_path / "a", **run)).run()
    Trainer(make_config(out_dir=tmp_path / "b", resume=str(tmp_path / "a" / "step-000003"), **run)).run()
    a_records = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "train_loss" in r]
    assert all(r["indexer_loss"] > 0 for r in a_records)
    from seekforge.model.hf import read_safetensors

    a, b = read_safetensors(tmp_path / "a" / "step-000006"), read_safetensors(tmp_path / "b" / "step-000006")
    first = read_safetensors(tmp_path / "a" / "step-000003")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    indexer = [n for n in a if ".indexer." in n and not torch.equal(a[n], first[n])]
    assert indexer  # the sparse stage trains the indexers (by their KL) along with the model
