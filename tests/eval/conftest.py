"""Models for the eval tests: a tiny seekforge checkpoint and a random transformers Llama, both with the
session's byte-level tokenizer (BOS added by default, like most causal LMs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def eval_data(shared_data) -> Path:
    d = shared_data / "eval"
    if not (d / "mmlu").is_dir():
        pytest.skip("../shared/data/eval is not present")
    return d


@pytest.fixture(scope="session")
def sf_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """``tiny`` with a 4096-token window and a wide init (std 0.1): its outputs depend strongly on the
    whole context, so a prompt that differs anywhere shows up in the log-likelihoods."""
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = load_model(
        "tiny", device="cpu", dtype=torch.float32, initializer_range=0.1, max_position_embeddings=4096
    )
    return save_model(
        model, tmp_path_factory.mktemp("eval") / "tiny-sf", tokenizer=load_tokenizer(tokenizer_dir)
    )


@pytest.fixture(scope="session")
def llama_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised transformers Llama (2 layers, GQA, 4096 positions)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from seekforge.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("eval") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def v4_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """seekforge's ``tiny-v4`` (sliding, CSA and HCA layers, hash and learned-router MoE, mHC) with a
    wide init (std 0.1), as ``sf_model_dir``.

    ``index_topk`` 1024 covers every compressed entry of a 4096-token window. A random model's lightning
    indexer often scores several entries exactly 0 (ReLU) at the top-k boundary; seekforge breaks such
    ties by block order, transformers' ``topk`` in an unspecified order, so with a small top-k the two
    may legitimately attend to different entries on long prompts."""
    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = load_model("tiny-v4", device="cpu", dtype=torch.float32, initializer_range=0.1, index_topk=1024)
    return save_model(
        model, tmp_path_factory.mktemp("eval") / "tiny-v4", tokenizer=load_tokenizer(tokenizer_dir)
    )
