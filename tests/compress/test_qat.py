"""QAT: `sft --set qat=int4` trains through fake-quantized weights; the result loses less to int4
round-to-nearest than the same fine-tune without QAT."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from seekforge.compress.data import bits_per_byte, token_windows
from seekforge.compress.quantize import QuantizeSettings, quantize_model
from seekforge.config import ConfigError, load_config
from seekforge.model import load_model, save_model
from seekforge.train.config import QUIET_RUN

TINY = dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64)


def sft(out: Path, overrides: list[str]) -> Path:
    from seekforge.finetune.cli import publish_final
    from seekforge.finetune.sft import SFTConfig, SFTObjective
    from seekforge.train.trainer import Trainer

    args = [*QUIET_RUN, "log_every=100", "warmup_steps=2", "mtp_loss_weight=0", "method=full",
            "seq_len=128", "micro_batch_size=8", "batch_tokens=1024", f"out_dir={out}", *overrides]
    summary = Trainer(load_config(SFTConfig, None, args), SFTObjective()).run()
    publish_final(summary, str(out))
    return out / "final"


def test_qat_int4_quantizes_better_than_plain_finetune(tokenizer_dir, shared_data, tmp_path):
    from seekforge.tokenizer import load_tokenizer

    logging.getLogger("seekforge").setLevel(logging.WARNING)
    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    base = save_model(load_model("tiny", device="cpu", **TINY), tmp_path / "base", tokenizer=tok)
    rows = json.loads((shared_data / "sft" / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:8]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    common = [f"data={data}", "lr=1e-2", "seed=0"]
    warm = sft(tmp_path / "warm", [f"model={base}", "max_steps=100", *common])
    plain = sft(tmp_path / "plain", [f"model={warm}", "max_steps=30", *common])
    qat = sft(tmp_path / "qat", [f"model={warm}", "max_steps=30", "qat=int4", "qat_group_size=32", *common])
    windows = token_windows(tok, [r["instruction"] + "\n" + r["output"] for r in rows], seq_len=128)

    def int4_loss(model_dir: Path) -> tuple[float, float]:
        model = load_model(model_dir)
        before = bits_per_byte(model, windows)
        return before, bits_per_byte(quantize_model(model, QuantizeSettings("int4", group_size=32)), windows)

    plain_fp, plain_q = int4_loss(plain)
    qat_fp, qat_q = int4_loss(qat)
    assert qat_q < plain_q, (plain_fp, plain_q, qat_fp, qat_q)
    assert qat_q - qat_fp < plain_q - plain_fp  # QAT weights lose less to rounding


def test_qat_bad_settings(tmp_path):
    from seekforge.finetune.sft import SFTConfig

    with pytest.raises(ConfigError, match="qat: expected one of int8, int4"):
        load_config(SFTConfig, None, ["model=x", "data=y.json", "qat=int3"])
    with pytest.raises(ConfigError, match="needs method full or freeze"):
        load_config(SFTConfig, None, ["model=x", "data=y.json", "qat=int4", "method=lora"])
