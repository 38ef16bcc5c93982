"""QLoRA on the CPU: `sft method=lora` on a `seekforge quantize` directory trains PEFT LoRA adapters
over the frozen int8 / int4 layers; the adapter loads with the quantized base in the engine."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from seekforge.compress.qlinear import QuantLinear
from seekforge.compress.quantize import QuantizeSettings, quantize_model, save_quantized
from seekforge.config import ConfigError, load_config
from seekforge.model import load_model
from seekforge.train.config import QUIET_RUN

TINY = dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64)


def sft(out: Path, overrides: list[str]) -> Path:
    from seekforge.finetune.cli import publish_final
    from seekforge.finetune.sft import SFTConfig, SFTObjective
    from seekforge.train.trainer import Trainer

    args = [*QUIET_RUN, "log_every=1", "warmup_steps=2", "mtp_loss_weight=0", "seq_len=128",
            "micro_batch_size=4", "batch_tokens=512", f"out_dir={out}", "seed=0", *overrides]
    summary = Trainer(load_config(SFTConfig, None, args), SFTObjective()).run()
    publish_final(summary, str(out))
    return out / "final"


@pytest.fixture(scope="module")
def quantized_dirs(tokenizer_dir, tmp_path_factory):
    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    out = {}
    for method in ("int8", "int4"):
        torch.manual_seed(0)
        model = load_model("tiny", device="cpu", **TINY)
        model = quantize_model(model, QuantizeSettings(method, group_size=32))
        out[method] = save_quantized(model, tmp_path_factory.mktemp("qlora") / method, tokenizer=tok)
    return out


def test_lora_layers_wrap_frozen_quantized_linears(quantized_dirs):
    from seekforge.finetune.methods import FreezeSettings, LoraSettings, PrefixSettings, prepare

    model = load_model(quantized_dirs["int4"])
    codes = {n: b.clone() for n, b in model.named_buffers() if n.endswith(("qweight", "scales", "mins"))}
    peft_model = prepare(model, "seekforge", "lora", lora=LoraSettings(rank=4, alpha=8),
                         freeze=FreezeSettings(), prefix=PrefixSettings())
    wrapped = [m for m in peft_model.modules() if type(m).__name__ == "QuantLoraLinear"]
    assert wrapped and all(isinstance(m.base_layer, QuantLinear) for m in wrapped)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    torch.manual_seed(0)
    ids = torch.randint(3, 512, (2, 32))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = peft_model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    after = {k.replace("base_layer.", ""): v for k, v in peft_model.named_buffers()}
    for name, before in codes.items():
        match = [v for k, v in after.items() if k.endswith("." + name)]
        assert len(match) == 1 and torch.equal(match[0], before), name
    with pytest.raises(ValueError, match="cannot hold the update"):
        wrapped[0].merge()


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_sft_lora_on_quantized_base_trains_and_serves(quantized_dirs, shared_data, tmp_path, method):
    from seekforge.compress.data import bits_per_byte, token_windows
    from seekforge.finetune.adapters import adapter_engine_args, load_adapter
    from seekforge.infer import Engine, EngineConfig, SamplingParams
    from seekforge.tokenizer import load_tokenizer

    logging.getLogger("seekforge").setLevel(logging.WARNING)
    qdir = quantized_dirs[method]
    rows = json.loads((shared_data / "sft" / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:8]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    adapter = sft(tmp_path / "run", [f"model={qdir}", f"data={data}", "method=lora", "lr=5e-2",
                                     "max_steps=40", "lora.rank=8", "lora.alpha=16"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    # a random-init base: the frozen head limits what an adapter can learn, but it does learn
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.03, losses
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()

    tok = load_tokenizer(qdir)
    windows = token_windows(tok, [r["instruction"] + "\n" + r["output"] for r in rows], seq_len=128)
    base_bpb = bits_per_byte(load_model(qdir), windows)
    tuned = load_adapter(load_model(qdir), adapter)
    assert any(type(m).__name__ == "QuantLoraLinear" for m in tuned.modules())  # unmerged, base still int
    assert bits_per_byte(tuned, windows) < 0.99 * base_bpb

    engine = Engine.from_pretrained(qdir, EngineConfig(max_batch=1, max_len=96),
                                    **adapter_engine_args(adapter))
    try:
        prompt = tok.encode(rows[0]["instruction"])[:32]
        got = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
        ids = torch.tensor([prompt])
        with torch.no_grad():
            expect = tuned(ids).logits[0, -1].argmax().item()
        assert got[0].token_ids[0] == expect
    finally:
        engine.close()


def test_sft_full_on_quantized_base_is_refused_clearly(quantized_dirs, shared_data, tmp_path):
    data = shared_data / "sft" / "alpaca_en_demo.json"
    with pytest.raises(ConfigError, match="only method=lora"):
        sft(tmp_path / "run", [f"model={quantized_dirs['int8']}", f"data={data}", "method=full",
                               "max_steps=1", "max_samples=4"])
