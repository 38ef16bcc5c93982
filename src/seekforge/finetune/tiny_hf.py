"""A tiny random transformers causal LM (Llama or Qwen2) that shares a seekforge tokenizer.

Fine-tuning must work on foreign bases, not only on seekforge's own models; the tests and
``bench/finetune.py`` check that on this model, written by transformers itself
(``save_pretrained``), so what seekforge loads is exactly what a user's downloaded model looks like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def write_tiny_hf_model(
    kind: Literal["llama", "qwen2"],
    tokenizer_dir: str | Path,
    out: str | Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised ``kind`` model (seeded) and the tokenizer to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from seekforge.tokenizer import load_tokenizer

    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if kind not in configs:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(configs)}")
    tok = load_tokenizer(tokenizer_dir)
    cfg = configs[kind](
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return Path(out)
