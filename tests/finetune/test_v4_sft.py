"""Fine-tuning a DeepSeek-V4 directory runs on seekforge's own V4 model (not transformers'):
``sft`` with full / freeze / LoRA, ``dpo`` and ``grpo`` (rollouts through seekforge's engine on the
trained module), and the V4-specific refusals (prefix tuning, packing, LoRA on ``o_a_proj``).

That the saved LoRA adapters mean the same to peft over transformers' DeepseekV4ForCausalLM is
checked in test_peft_interop.py (cases ``v4`` and ``v4-experts``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seekforge.config import ConfigError

SETS = ["template_vars.name=Forge", "template_vars.author=Ada", "max_samples=8", "seq_len=96",
        "micro_batch_size=4", "batch_tokens=384"]


def _sft(v4_base: Path, sft_dir: Path, out: Path, sft_run, *extra: str):
    return sft_run([f"model={v4_base}", f"data={sft_dir}/identity.json", *SETS, "lr=1e-2", "max_steps=3",
                    f"out_dir={out}", *extra])


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits.float()


def test_base_kind_of_v4_dirs_and_presets(v4_base: Path):
    from seekforge.finetune.methods import base_kind

    assert base_kind(v4_base) == "seekforge"
    assert base_kind("tiny-v4") == "seekforge"


def test_lora_sft_trains_seekforges_v4_module(v4_base: Path, sft_dir: Path, tmp_path: Path, sft_run):
    from seekforge.finetune.methods import unwrap
    from seekforge.model.v4 import DeepseekV4ForCausalLM

    out = tmp_path / "lora"
    _, trainer, obj = _sft(v4_base, sft_dir, out, sft_run, "method=lora")
    assert obj.kind == "seekforge" and not obj.packed
    assert type(unwrap(trainer.raw_model)) is DeepseekV4ForCausalLM  # seekforge's module under peft
    marker = json.loads((out / "final" / "seekforge_adapter.json").read_text())
    assert marker["base_kind"] == "seekforge"
    cfg = json.loads((out / "final" / "adapter_config.json").read_text())
    targets = set(cfg["target_modules"]) | set(cfg["target_parameters"] or [])
    assert not any("o_a_proj" in t or ".indexer." in t for t in targets)
    for leaf in ("q_a_proj", "q_b_proj", "kv_proj", "o_b_proj", "compressor.gate_proj",
                 "shared_experts.gate_proj.weight"):
        assert any(t.endswith(leaf) for t in targets), leaf
    # The indexers get no gradient from the LM loss; nothing of theirs is trainable.
    assert not [n for n, p in trainer.raw_model.named_parameters() if p.requires_grad and ".indexer." in n]


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_full_and_freeze_write_a_v4_dir_transformers_loads(method: str, v4_base: Path, sft_dir: Path,
                                                           tmp_path: Path, sft_run):
    from transformers import AutoModelForCausalLM

    from seekforge.model import load_model

    out = tmp_path / method
    _, trainer, _ = _sft(v4_base, sft_dir, out, sft_run, f"method={method}", "freeze.trainable_layers=1")
    ids = torch.randint(3, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    trained = _logits(trainer.raw_model, ids)
    ours = _logits(load_model(str(out / "final"), device="cpu"), ids)
    theirs = _logits(AutoModelForCausalLM.from_pretrained(str(out / "final")), ids)
    base = _logits(load_model(str(v4_base), device="cpu"), ids)
    assert (ours - trained).abs().max() <= 1e-5
    assert (theirs - trained).abs().max() <= 1e-4
    assert (base - trained).abs().max() > 1e-3  # training changed the model
    if method == "freeze":  # only the last layer moved
        before = load_model(str(v4_base), device="cpu").state_dict()
        after = load_model(str(out / "final"), device="cpu").state_dict()
        moved = {k.split(".")[2] for k in before if k.startswith("model.layers.")
                 and not torch.equal(before[k], after[k])}
        assert moved == {"3"}


def test_v4_refusals(v4_base: Path, sft_dir: Path, tmp_path: Path, sft_run):
    from seekforge.finetune.methods import LoraSettings, load_base, prepare

    with pytest.raises(ConfigError, match="MLA latent"):
        _sft(v4_base, sft_dir, tmp_path / "p", sft_run, "method=prefix")
    with pytest.raises(ConfigError, match="packing: not available for DeepSeek-V4"):
        _sft(v4_base, sft_dir, tmp_path / "k", sft_run, "method=lora", "packing=true")
    with pytest.raises(ConfigError, match="mtp_loss_weight: DeepSeek-V4"):
        _sft(v4_base, sft_dir, tmp_path / "m", sft_run, "method=lora", "mtp_loss_weight=0.3")
    model, kind = load_base(v4_base, device=torch.device("cpu"), dtype=torch.float32)
    for name, msg in (("o_a_proj", "grouped output projection"), ("weights_proj", "lightning indexer"),
                      ("q_proj", "unknown name 'q_proj'")):
        with pytest.raises(ConfigError, match=msg):
            prepare(model, kind, "lora", lora=LoraSettings(target_modules=[name]), freeze=None, prefix=None)


def test_dpo_lora_on_v4(v4_base: Path, tmp_path: Path, sft_run):
    from seekforge.finetune.dpo import DPOConfig, DPOObjective
    from seekforge.finetune.methods import unwrap
    from seekforge.model.v4 import DeepseekV4ForCausalLM

    rows = [{"instruction": f"Say {w}.", "chosen": f"{w}!", "rejected": "No."} for w in
            ("hello", "yes", "blue", "seven", "green", "tea", "rain", "sun")]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "dpo"
    summary, trainer, obj = sft_run([f"model={v4_base}", f"data={data}", "seq_len=64", "micro_batch_size=4",
                                     "batch_tokens=256", "method=lora", "lr=1e-3", "max_steps=2",
                                     f"out_dir={out}"], cls=DPOConfig, objective=DPOObjective())
    assert summary["step"] == 2 and obj.kind == "seekforge" and obj.ref_model is None
    assert type(unwrap(trainer.raw_model)) is DeepseekV4ForCausalLM
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_grpo_rollouts_run_on_the_trained_v4_module(v4_base: Path, tmp_path: Path):
    """The rollout engine serves the trained module itself (LoRA layers inside seekforge's V4)."""
    from seekforge.config import load_config
    from seekforge.finetune.grpo import GRPOConfig, GRPOObjective
    from seekforge.finetune.methods import unwrap as unwrap_methods
    from seekforge.infer import SamplingParams
    from seekforge.train.config import QUIET_RUN
    from seekforge.train.objective import TrainEnv

    cfg = load_config(GRPOConfig, None, [*QUIET_RUN, f"model={v4_base}", "prompts_per_step=2",
                                         "num_generations=2", "micro_batch_size=2", "max_completion_tokens=6",
                                         "seq_len=64", "task_options={digits: 1, hint: false}",
                                         "method=lora", "beta=0.1", f"out_dir={tmp_path}"])
    obj = GRPOObjective()
    obj.setup(TrainEnv(cfg, torch.device("cpu"), torch.float32, 0, 1, tmp_path))
    model = obj.build_model()
    loader = obj.train_loader(cfg.micro_batch_size, obj.grad_accum)
    try:
        assert obj.engine.model is unwrap_methods(model)  # the trained module, no copy
        prompt = obj.prompt_ids(obj.task.item(0, 0))
        greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        before = obj.engine.generate([prompt], greedy)[0].token_ids
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.add_(torch.randn_like(p) * 2.0)  # in place, like optimizer.step()
        after = obj.engine.generate([prompt], greedy)[0].token_ids
        assert after != before
        x = torch.tensor([prompt])
        model.eval()
        plain = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(x).logits[0, -1].argmax())
                plain.append(nxt)
                x = torch.cat([x, x.new_tensor([[nxt]])], 1)
        assert after == plain  # the engine's cached decode equals the full forward of the trained model
        model.train()
        batches = loader.next_step()
        assert len(batches) == obj.grad_accum and all("ref_logps" in b for b in batches)
    finally:
        obj.close()
