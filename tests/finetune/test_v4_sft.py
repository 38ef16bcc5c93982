"""`seekforge sft` with LoRA on a DeepSeek-V4 directory (through transformers' implementation, which
equals ours): the grouped output projection is left out of `all-linear`, the adapter trains, and
peft loads it back onto transformers' model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def v4_base(tmp_path_factory, sft_tokenizer_dir: Path) -> Path:
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(sft_tokenizer_dir)
    torch.manual_seed(0)
    model = load_model("tiny-v4", device="cpu", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    return save_model(model, tmp_path_factory.mktemp("v4") / "base", tokenizer=tok)


def test_lora_sft_on_v4(v4_base: Path, sft_dir: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import DeepseekV4ForCausalLM

    from seekforge.cli import main

    out = tmp_path / "lora"
    sets = [f"model={v4_base}", f"data={sft_dir}/identity.json", "template_vars.name=Forge",
            "template_vars.author=Ada", "method=lora", "lr=1e-2", "max_steps=3", "max_samples=8",
            "seq_len=96", "micro_batch_size=4", "batch_tokens=384", f"out_dir={out}", "progress=false",
            "sample_tokens=0", "plot=false", "tensorboard=false"]
    assert main(["sft", *[a for s in sets for a in ("--set", s)]]) == 0
    cfg = json.loads((out / "final" / "adapter_config.json").read_text())
    targets = set(cfg["target_modules"])
    assert "o_a_proj" not in targets and {"q_a_proj", "kv_proj", "o_b_proj"} <= targets
    base = DeepseekV4ForCausalLM.from_pretrained(v4_base).eval()
    ids = torch.randint(3, base.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, out / "final").eval()
        after = tuned(ids).logits
    assert (after - before).abs().max().item() > 1e-4  # the trained adapter changes the model
