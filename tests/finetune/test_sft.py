"""``seekforge sft`` end to end on the trainer loop: identity, HF Llama/Qwen2 bases, resume, CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from seekforge.finetune.sft import greedy_chat
from seekforge.finetune.tiny_hf import write_tiny_hf_model
from seekforge.train.metrics import read_metrics

CPU = torch.device("cpu")
FAST = ["seq_len=128", "micro_batch_size=8", "batch_tokens=1024"]


def ask(model, tok, prompts=("Who are you?", "你是谁？")) -> list[str]:
    model.eval()
    return [greedy_chat(model, tok, p, 24, CPU) for p in prompts]


@pytest.mark.slow
def test_identity_lora_teaches_name_en_and_zh(warm_base: Path, sft_dir: Path, tmp_path: Path, sft_run):
    """The base calls itself Nemo; after LoRA-SFT on identity.json it answers with the new name."""
    from seekforge.finetune.adapters import adapter_engine_args
    from seekforge.finetune.methods import load_base
    from seekforge.infer import Engine, EngineConfig, SamplingParams
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(warm_base)
    before = ask(load_base(warm_base, device=CPU, dtype=torch.float32)[0], tok)
    assert not any("Forge" in a for a in before), before
    out = tmp_path / "identity"
    summary, trainer, obj = sft_run(
        [
            f"model={warm_base}",
            f"data={sft_dir}/identity.json",
            *FAST,
            "template_vars={name: Forge, author: Ada}",
            "method=lora",
            "lora.rank=16",
            "lora.alpha=32",
            "lr=1e-2",
            "max_steps=60",
            f"out_dir={out}",
        ]
    )
    after = ask(trainer.raw_model, obj.tokenizer)
    assert all("Forge" in a for a in after), after
    # Serving base + adapter through the inference engine (what `seekforge serve BASE --adapter` does).
    engine = Engine.from_pretrained(
        warm_base, EngineConfig(max_batch=2, max_len=128), **adapter_engine_args(out / "final")
    )
    try:
        done = engine.generate(
            [engine.chat_prompt([{"role": "user", "content": "Who are you?"}])],
            SamplingParams(max_tokens=24, temperature=0),
        )
    finally:
        engine.close()
    assert "Forge" in done[0].text, done[0].text


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_lora_on_hf_models(kind: str, sft_tokenizer_dir: Path, sft_dir: Path, tmp_path: Path, sft_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    base = write_tiny_hf_model(kind, sft_tokenizer_dir, tmp_path / kind)
    out = tmp_path / "run"
    summary, trainer, obj = sft_run(
        [
            f"model={base}",
            f"data={sft_dir}/identity.json",
            *FAST,
            "max_samples=48",
            "template_vars={name: Forge, author: Ada}",
            "method=lora",
            "lr=1e-2",
            "max_steps=12",
            "log_every=1",
            f"out_dir={out}",
        ]
    )
    curve = [r["train_loss"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert len(curve) == 12 and sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.1, curve
    assert obj.packed  # transformers 5 keeps packed examples apart through position_ids (checked numerically)
    adapter = out / "final"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    x = torch.tensor([obj.train_encoded[0].input_ids])
    trained = trainer.raw_model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(base)), str(adapter)
        ).eval()
    with torch.no_grad():
        assert (trained(x).logits - loaded(x).logits).abs().max() < 1e-4


def test_prefix_on_hf_model_via_peft(sft_tokenizer_dir: Path, sft_dir: Path, tmp_path: Path, sft_run):
    base = write_tiny_hf_model("qwen2", sft_tokenizer_dir, tmp_path / "qwen2")
    out = tmp_path / "run"
    summary, _, obj = sft_run(
        [
            f"model={base}",
            f"data={sft_dir}/identity.json",
            *FAST,
            "max_samples=24",
            "template_vars={name: Forge, author: Ada}",
            "method=prefix",
            "prefix.num_virtual_tokens=4",
            "lr=1e-2",
            "max_steps=3",
            f"out_dir={out}",
        ]
    )
    assert not obj.packed and summary["step"] == 3
    assert json.loads((out / "final" / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"


@pytest.mark.slow
def test_resume_continues_exactly(tiny_base: Path, sft_dir: Path, tmp_path: Path, sft_run):
    """4 steps in one go == 2 steps, stop, resume, 2 more (adapter weights and data position)."""
    from safetensors.torch import load_file

    args = [
        f"model={tiny_base}",
        f"data={sft_dir}/identity.json",
        *FAST,
        "max_samples=40",
        "template_vars={name: Forge, author: Ada}",
        "method=lora",
        "lr=1e-2",
        "warmup_steps=0",
        "schedule=constant",  # the LR must not depend on max_steps, which differs between the runs
    ]
    sft_run(args + ["max_steps=4", f"out_dir={tmp_path / 'straight'}"])
    sft_run(args + ["max_steps=2", f"out_dir={tmp_path / 'resumed'}"])
    summary, _, _ = sft_run(args + ["max_steps=4", f"out_dir={tmp_path / 'resumed'}", "resume=auto"])
    assert summary["step"] == 4
    a = load_file(str(tmp_path / "straight/final/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed/final/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_cli_sft_prefix_and_errors(tiny_base: Path, sft_dir: Path, tmp_path: Path, capsys):
    from seekforge.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "sft",
            "--set",
            f"model={tiny_base}",
            "--set",
            f"data={sft_dir}/identity.json",
            "--set",
            "template_vars.name=Forge",
            "--set",
            "template_vars.author=Ada",
            "--set",
            "method=prefix",
            "--set",
            "max_steps=2",
            "--set",
            "max_samples=16",
            "--set",
            f"out_dir={out}",
            *[x for kv in FAST for x in ("--set", kv)],
            "--set",
            "progress=false",
            "--set",
            "sample_tokens=0",
            "--set",
            "plot=false",
            "--set",
            "tensorboard=false",
        ]
    )
    assert code == 0 and (out / "final" / "adapter_model.safetensors").exists()
    assert main(["sft", "--set", f"model={tiny_base}", "--set", "data=x.json", "--set", "methd=lora"]) == 2
    assert "unknown config key 'methd'" in capsys.readouterr().err
    assert (
        main(
            [
                "sft",
                "--set",
                f"model={tiny_base}",
                "--set",
                f"data={sft_dir}/identity.json",
                "--set",
                f"out_dir={tmp_path / 'e'}",
                "--set",
                "progress=false",
            ]
        )
        == 2
    )
    assert "template_vars.name" in capsys.readouterr().err
