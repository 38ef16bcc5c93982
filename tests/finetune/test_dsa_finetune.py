"""Fine-tuning a DeepSeek-V3.2 (sparse attention) model works unchanged: full SFT, LoRA whose adapter
peft applies to transformers' DeepseekV32 with our logits, at a length above index_topk."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from seekforge.train.metrics import read_metrics

FAST = ["seq_len=128", "micro_batch_size=8", "batch_tokens=1024"]


@pytest.fixture(scope="module")
def dsa_base(tmp_path_factory, sft_tokenizer_dir: Path) -> Path:
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(sft_tokenizer_dir)
    torch.manual_seed(0)
    model = load_model("tiny-dsa", device="cpu", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_model(model, tmp_path_factory.mktemp("dsa_base") / "base", tokenizer=tok)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_on_a_dsa_model(method: str, dsa_base: Path, sft_dir: Path, tmp_path: Path, sft_run):
    out = tmp_path / method
    sft_run([f"model={dsa_base}", f"data={sft_dir}/identity.json", *FAST, f"method={method}", "lr=1e-2",
             "max_steps=6", "log_every=1", "max_samples=48", "template_vars={name: Forge, author: Ada}",
             f"out_dir={out}"])
    curve = [r["train_loss"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert len(curve) == 6 and curve[-1] < curve[0], curve
    if method == "full":
        from seekforge.model import load_model

        assert load_model(out / "final", device="cpu").config.index_topk == 16
        return
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from seekforge.finetune.adapters import load_adapter
    from seekforge.finetune.methods import load_base

    hf_logging.set_verbosity_error()
    base, _ = load_base(dsa_base, device=torch.device("cpu"), dtype=torch.float32)
    ours = load_adapter(base, out / "final").eval()
    x = torch.randint(3, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(str(dsa_base), dtype=torch.float32).eval()
        theirs = PeftModel.from_pretrained(hf, str(out / "final")).eval()
        with torch.no_grad():
            assert (ours(x).logits - theirs(x).logits).abs().max() < 1e-4


def test_prefix_tuning_refuses_a_dsa_model(dsa_base: Path):
    """A prefix would turn the sparse layers dense: refused with the reason, before anything trains."""
    from seekforge.finetune.prefix import attach_prefix
    from seekforge.model import load_model

    model = load_model(dsa_base, device="cpu")
    with pytest.raises(ValueError, match="method=prefix.*V3.2 sparse attention.*method=lora"):
        attach_prefix(model, 4)
    assert type(model.main_layers[0].self_attn).__name__ == "DSAttention"  # left as it was


@pytest.mark.slow
def test_torchrun_full_sft_on_a_dsa_model(dsa_base: Path, sft_dir: Path, tmp_path: Path):
    """Full SFT under DDP: the lightning indexers get no gradient from the SFT loss, so they must be
    frozen (DDP would otherwise wait for their gradients and fail)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "seekforge", "sft"]
    for s in [f"model={dsa_base}", f"data={sft_dir}/identity.json", *FAST, "micro_batch_size=4",
              "method=full", "max_steps=2",
              "max_samples=32", "template_vars={name: Forge, author: Ada}", f"out_dir={tmp_path / 'two'}",
              "distributed=ddp", "progress=false", "plot=false", "tensorboard=false", "sample_tokens=0",
              "save_every=0", "num_threads=1", "mtp_loss_weight=0"]:
        cmd += ["--set", s]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "lightning-indexer tensors frozen" in res.stderr
    assert len([r for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "train_loss" in r]) == 2
