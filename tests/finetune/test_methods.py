"""Methods on a seekforge base: LoRA adapters readable by peft + transformers, merge, prefix, freeze."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from seekforge.config import ConfigError
from seekforge.finetune.adapters import load_adapter, merge_lora, save_result
from seekforge.finetune.methods import FreezeSettings, LoraSettings, PrefixSettings, load_base, prepare

CPU = torch.device("cpu")


def prepared(base: Path, method: str, **kw):
    model, kind = load_base(base, device=CPU, dtype=torch.float32)
    model = prepare(
        model,
        kind,
        method,
        lora=kw.get("lora", LoraSettings()),
        freeze=kw.get("freeze", FreezeSettings()),
        prefix=kw.get("prefix", PrefixSettings()),
    )
    return model, kind


def randomize_lora(model) -> None:
    """LoRA B starts at zero (adapter = no-op); make it non-trivial so comparisons mean something."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def ids(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(0))


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("targets", [["attn"], ["all-linear", "experts"]])
def test_lora_adapter_is_a_peft_adapter_for_transformers(tiny_base: Path, tmp_path: Path, targets):
    model, kind = prepared(tiny_base, "lora", lora=LoraSettings(rank=4, alpha=8, target_modules=targets))
    randomize_lora(model)
    out = save_result(model, kind, "lora", tmp_path / "adapter", base_path=tiny_base)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["peft_type"] == "LORA" and "auto_mapping" not in cfg
    x = ids(model.config.vocab_size)
    model.eval()
    with torch.no_grad():
        ours = model(x).logits
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_model = PeftModel.from_pretrained(hf_model(tiny_base), str(out))
        with torch.no_grad():
            theirs = theirs_model(x).logits
    assert (ours - theirs).abs().max() < 1e-4
    base_logits = hf_model(tiny_base)(x).logits
    assert (ours - base_logits).abs().max() > 1e-3  # the adapter does something


def test_merge_and_load_adapter_match(tiny_base: Path, tmp_path: Path):
    model, kind = prepared(tiny_base, "lora", lora=LoraSettings(rank=4, alpha=8, target_modules="all-linear"))
    randomize_lora(model)
    adapter = save_result(model, kind, "lora", tmp_path / "adapter", base_path=tiny_base)
    x = ids(model.config.vocab_size)
    model.eval()
    with torch.no_grad():
        ref = model(x).logits
    from seekforge.cli import main

    assert main(["merge", str(tiny_base), str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged_dir = tmp_path / "merged"
    merged, _ = load_base(merged_dir, device=CPU, dtype=torch.float32)
    served = load_adapter(load_base(tiny_base, device=CPU, dtype=torch.float32)[0], adapter)
    with torch.no_grad():
        assert (merged.eval()(x).logits - ref).abs().max() < 1e-4
        assert (served.eval()(x).logits - ref).abs().max() < 1e-4
        assert type(served).__name__ == "DeepseekV3ForCausalLM"  # merged: the engine sees a plain model


def test_prefix_roundtrip_and_cached_decode(tiny_base: Path, tmp_path: Path):
    model, kind = prepared(tiny_base, "prefix", prefix=PrefixSettings(num_virtual_tokens=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("prefix_kv", "prefix_pe")) for n in trainable)
    with torch.no_grad():
        for _n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    adapter = save_result(model, kind, "prefix", tmp_path / "prefix", base_path=tiny_base)
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "SEEKFORGE_MLA_PREFIX"
    with pytest.raises(ValueError, match="only LoRA can be merged"):
        merge_lora(tiny_base, adapter, tmp_path / "nope")
    loaded = load_adapter(load_base(tiny_base, device=CPU, dtype=torch.float32)[0], adapter).eval()
    x = ids(loaded.config.vocab_size)
    with torch.no_grad():
        full = loaded(x).logits
        assert (full - model.eval()(x).logits).abs().max() < 1e-5
        cache = loaded.new_cache(2, 32)
        slots = torch.tensor([0, 1])
        steps = [loaded.forward_cached(x[:, :8], cache, slots, torch.tensor([0, 0])).logits]
        for t in range(8, x.shape[1]):
            steps.append(loaded.forward_cached(x[:, t : t + 1], cache, slots, torch.tensor([t, t])).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4


def test_freeze_last_layers(tiny_base: Path):
    model, _ = prepared(
        tiny_base,
        "freeze",
        freeze=FreezeSettings(trainable_layers=1, modules=["mlp"], extra_modules=["norm"]),
    )
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.layers.1.mlp.", "model.norm.")) for n in names)
    assert any(n.startswith("model.norm.") for n in names)
    with pytest.raises(ConfigError, match="freeze.modules: 'mlpp'.*valid: all, input_layernorm"):
        prepared(tiny_base, "freeze", freeze=FreezeSettings(trainable_layers=1, modules=["mlpp"]))


def test_lora_target_typo_and_qlora_on_cpu(tiny_base: Path):
    with pytest.raises(
        ConfigError, match="unknown name 'q_a_prj'.*did you mean 'q_a_proj'.*valid: all-linear, attn"
    ):
        prepared(tiny_base, "lora", lora=LoraSettings(target_modules=["q_a_prj"]))
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU.*method=lora"):
        load_base(tiny_base, device=CPU, dtype=torch.float32, quantize_4bit=True)


def test_mtp_layers_are_not_adapted(tiny_base: Path):
    model, _ = prepared(tiny_base, "lora", lora=LoraSettings(target_modules="all-linear"))
    n_main = model.config.num_hidden_layers
    lora_layers = {
        int(n.split("model.layers.")[1].split(".")[0]) for n, _ in model.named_parameters() if "lora_" in n
    }
    assert lora_layers == set(range(n_main))
    assert model.config.bias_update_speed == 0.0  # the router bias is a base buffer: frozen for adapters
