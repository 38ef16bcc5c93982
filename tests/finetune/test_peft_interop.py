"""A seekforge LoRA adapter means the same thing to every loader: peft + transformers, seekforge's own
``load_adapter``, ``seekforge merge`` and the server's ``serve --adapter`` path.

Each case trains a real adapter (a few SFT steps on a tiny DeepSeek-V3 base: MoE with routed and
shared experts and an MTP module, or all-dense; or on seekforge's tiny DeepSeek-V4: sliding, CSA
and HCA attention, hash and learned-router MoE, mHC), then compares the logits of every loader
with the trained model's, and checks that ``PeftModel.from_pretrained`` warns about nothing and
uses every tensor of the adapter file. The V4 inputs are longer than tiny-v4's
sliding window and compression rates (16), so the compressed entries take part.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from seekforge.config import ConfigError
from seekforge.finetune.adapters import MARKER, load_adapter
from seekforge.finetune.methods import LoraSettings, load_base, prepare, require_qlora

CPU = torch.device("cpu")
TOL = 1e-4
SFT_ARGS = ["seq_len=64", "micro_batch_size=4", "batch_tokens=256", "max_samples=32", "lr=1e-2"]


@pytest.fixture(scope="module")
def dense_base(tmp_path_factory, sft_tokenizer_dir: Path) -> Path:
    """``tiny`` with every main layer dense (the MTP module keeps its MoE FFN)."""
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(sft_tokenizer_dir)
    torch.manual_seed(0)
    model = load_model(
        "tiny",
        device="cpu",
        vocab_size=len(tok),
        first_k_dense_replace=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return save_model(model, tmp_path_factory.mktemp("dense_base") / "base", tokenizer=tok)


class Trained(NamedTuple):
    base: Path
    adapter: Path
    x: torch.Tensor  # [2, T] token ids of two training examples
    logits: torch.Tensor  # the trained model's logits for x (QLoRA: full-precision base + adapter)


CASES = {  # name -> (base fixture, method, lora.target_modules)
    "moe": ("tiny_base", "lora", "all-linear"),
    "moe-experts": ("tiny_base", "lora", "[all-linear, experts]"),
    "moe-only-experts": ("tiny_base", "lora", "experts"),
    "dense": ("dense_base", "lora", "all-linear"),
    "moe-qlora": ("tiny_base", "qlora", "all-linear"),
    "v4": ("v4_base", "lora", "all-linear"),
    "v4-experts": ("v4_base", "lora", "[all-linear, experts]"),
}


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory, sft_dir: Path, sft_run) -> Trained:
    base_fixture, method, targets = CASES[request.param]
    if method == "qlora":
        try:
            require_qlora(CPU)
        except ConfigError as e:
            pytest.skip(f"QLoRA cannot train here: {e}")
    base = request.getfixturevalue(base_fixture)
    out = tmp_path_factory.mktemp(request.param) / "run"
    torch.manual_seed(0)
    _, trainer, obj = sft_run(
        [
            f"model={base}",
            f"data={sft_dir}/identity.json",
            *SFT_ARGS,
            "template_vars={name: Forge, author: Ada}",
            f"method={method}",
            "lora.rank=4",
            "lora.alpha=8",
            f"lora.target_modules={targets}",
            "max_steps=4",
            f"out_dir={out}",
        ]
    )
    n = min(len(obj.train_encoded[0].input_ids), len(obj.train_encoded[1].input_ids), 48)
    if base_fixture == "v4_base":  # past tiny-v4's window and compression rates: compressed entries count
        assert n > 16, n
    x = torch.tensor([obj.train_encoded[i].input_ids[:n] for i in (0, 1)])
    model = trainer.raw_model.eval()
    if method == "qlora":
        # The trained model ran on 4-bit weights; every loader below puts the adapter on the
        # full-precision base, so they are compared with that (seekforge's merge) instead.
        model = load_adapter(load_base(base, device=CPU, dtype=torch.float32)[0], out / "final")
    with torch.no_grad():
        logits = model(x.to(next(model.parameters()).device)).logits.float().cpu()
    return Trained(base, out / "final", x, logits)


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the MTP layer is not part of transformers' model: it says so
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def logits_of(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).logits.float()


def adapter_keys(adapter: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return set(f.keys())


def test_peft_on_transformers_loads_the_adapter_exactly(trained: Trained, caplog):
    """Plain ``PeftModel.from_pretrained`` on the transformers model: same logits, no warning."""
    from peft import PeftModel, get_peft_model_state_dict

    base = hf_model(trained.base)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(trained.adapter))
    # transformers' own deprecation notice for an attribute peft reads is not about the adapter
    caught = [w for w in caught if "is_gradient_checkpointing" not in str(w.message)]
    assert not caught, [str(w.message) for w in caught]
    assert not [r for r in caplog.records if r.name.startswith("peft")], caplog.text
    loaded = {f"base_model.model.{k}" for k in get_peft_model_state_dict(model.base_model.model)}
    assert loaded == adapter_keys(trained.adapter)  # every saved tensor has its place, none is missing
    diff = (logits_of(model, trained.x) - trained.logits).abs().max().item()
    assert diff <= TOL, diff
    assert (logits_of(hf_model(trained.base), trained.x) - trained.logits).abs().max() > 1e-3


def test_seekforge_loader_merge_and_server_agree(trained: Trained, tmp_path: Path):
    """``load_adapter``, ``seekforge merge`` (read by transformers) and ``serve --adapter``."""
    from seekforge.cli import build_parser, main
    from seekforge.serve.cli import engine_from_args

    base = load_base(trained.base, device=CPU, dtype=torch.float32)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = load_adapter(base, trained.adapter)
    assert not caught, [str(w.message) for w in caught]
    assert type(ours).__module__.startswith("seekforge.model.")  # merged into seekforge's own model
    diffs = {"load_adapter": (logits_of(ours, trained.x) - trained.logits).abs().max().item()}

    merged = tmp_path / "merged"
    assert main(["merge", str(trained.base), str(trained.adapter), "--out", str(merged)]) == 0
    diffs["merge"] = (logits_of(hf_model(merged), trained.x) - trained.logits).abs().max().item()

    argv = ["serve", str(trained.base), "--adapter", str(trained.adapter), "--device", "cpu",
            "--max-batch", "1", "--max-len", "64"]
    engine = engine_from_args(build_parser(argv).parse_args(argv))
    try:
        diffs["serve"] = (logits_of(engine.model, trained.x) - trained.logits).abs().max().item()
    finally:
        engine.close()
    assert all(d <= TOL for d in diffs.values()), diffs


def test_saved_targets_are_explicit_and_complete(trained: Trained):
    """The config names exactly the trained tensors: main layers only, MLPs as parameters."""
    cfg = json.loads((trained.adapter / "adapter_config.json").read_text())
    marker = json.loads((trained.adapter / MARKER).read_text())
    assert marker["format"] == "seekforge-adapter-v2" and not cfg.get("exclude_modules")
    modules = set(cfg["target_modules"] or [])
    params = set(cfg["target_parameters"] or [])
    linear_params = {p.removesuffix(".weight") for p in params if p.endswith(".weight")}
    expert_params = params - {f"{p}.weight" for p in linear_params}
    owners = {k.removeprefix("base_model.model.").split(".lora_")[0] for k in adapter_keys(trained.adapter)}
    expert_owners = {o for o in owners if ".mlp.experts" in o}  # nested wrappers: gate_up inner, down outer
    assert owners - expert_owners == modules | linear_params
    expert_modules = {p.rsplit(".", 1)[0] for p in expert_params}
    assert {o.removesuffix(".base_layer") for o in expert_owners} == expert_modules
    n_layers = json.loads((trained.base / "config.json").read_text())["num_hidden_layers"]
    assert all(int(name.split(".")[2]) < n_layers for name in modules | params)  # not an MTP layer
    assert not any(".mlp." in name for name in modules)  # MLPs are parameter targets
    from safetensors.torch import load_file

    state = load_file(str(trained.adapter / "adapter_model.safetensors"))
    assert all(v.abs().max() > 0 for k, v in state.items() if "lora_B" in k)  # training moved every B


def test_adapters_of_earlier_versions_still_load(trained: Trained, tmp_path: Path):
    """v1 adapters (leaf names + an ``exclude_modules`` pattern for the MTP layer) load as trained."""
    import shutil

    if "v4" in trained.adapter.parent.parent.name:
        pytest.skip("no v1 adapter of a DeepSeek-V4 base exists (V4 support came with the v2 format)")

    old = tmp_path / "v1"
    shutil.copytree(trained.adapter, old)
    cfg = json.loads((old / "adapter_config.json").read_text())
    params = cfg["target_parameters"] or []
    mlps = [p.removesuffix(".weight") for p in params if p.endswith(".weight")]
    modules = list(cfg["target_modules"] or []) + mlps
    cfg["target_modules"] = sorted({m.rsplit(".", 1)[-1] for m in modules})
    cfg["target_parameters"] = [p for p in params if not p.endswith(".weight")] or None
    cfg["exclude_modules"] = r"model\.layers\.(2)\..*"
    (old / "adapter_config.json").write_text(json.dumps(cfg))
    ours = load_adapter(load_base(trained.base, device=CPU, dtype=torch.float32)[0], old)
    assert (logits_of(ours, trained.x) - trained.logits).abs().max() <= TOL


def test_lora_target_errors(tiny_base: Path, dense_base: Path):
    def lora(base: Path, **kw):
        model, kind = load_base(base, device=CPU, dtype=torch.float32)
        return prepare(model, kind, "lora", lora=LoraSettings(**kw), freeze=None, prefix=None)

    with pytest.raises(ConfigError, match="no main layer of this model has routed experts"):
        lora(dense_base, target_modules=["attn", "experts"])
    with pytest.raises(ConfigError, match="lora.dropout must be 0 when .* includes 'experts'"):
        lora(tiny_base, target_modules=["experts"], dropout=0.1)
    experts_only = lora(tiny_base, target_modules=["experts"])
    trainable = {n for n, p in experts_only.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.experts." in n for n in trainable)


def test_v4_lora_groups(v4_base: Path):
    """DeepSeek-V4: ``attn`` / ``mlp`` / leaf names pick by path inside the layer (``gate_proj`` is a
    KV-compressor gate and a shared-expert projection); hash-routed layers' experts are adapted too."""
    from seekforge.finetune.methods import resolve_lora_targets

    model, _ = load_base(v4_base, device=CPU, dtype=torch.float32)
    attn = resolve_lora_targets(model, "seekforge", ["attn"])["target_modules"]
    mlp = resolve_lora_targets(model, "seekforge", ["mlp"])["target_modules"]
    gates = resolve_lora_targets(model, "seekforge", ["gate_proj"])["target_modules"]
    assert "model.layers.1.self_attn.compressor.gate_proj" in attn and ".mlp." not in " ".join(attn)
    assert all(".mlp.shared_experts." in n for n in mlp) and len(mlp) == 3 * 4
    assert set(gates) == {n for n in attn + mlp if n.endswith(".gate_proj")}
    experts = resolve_lora_targets(model, "seekforge", ["experts"])["target_parameters"]
    assert "model.layers.0.mlp.experts.gate_up_proj" in experts  # layer 0 is hash-routed
