"""`seekforge train` on a DeepSeek-V4 preset: the same loop learns, balances the learned routers,
keeps the hash table frozen, saves directories transformers loads, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from seekforge.train import Trainer
from seekforge.train import checkpoint as ckpt
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
