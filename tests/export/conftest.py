"""Fixtures for the GGUF export tests: small random DeepSeek models saved with a tokenizer, and llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# A deepseek2-shaped model small enough for CPU tests, with every feature the exporter maps: q-LoRA,
# one dense leading layer, MoE with a shared expert, sigmoid router with a correction bias, 2 groups
# (1 kept), top-2 with normalised weights scaled by 2.5, one MTP layer (must be dropped).
# qk_nope_head_dim == kv_lora_rank so a missing k_b transpose still loads (the silent failure), and
# every row length is a multiple of 32 (Q8_0 / Q4_0 blocks).
V3_SHAPE: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16,
    v_head_dim=32, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
    first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True, num_nextn_predict_layers=1,
    max_position_embeddings=512,
)
# V2-Lite style: plain q_proj, softmax router without bias or groups, unnormalised weights, YaRN with
# V2-Lite's mscale 0.707 (factor 4 over an original 64-token context).
V2_SHAPE: dict[str, Any] = dict(
    V3_SHAPE, q_lora_rank=None, scoring_func="softmax", topk_method="greedy", n_group=1, topk_group=1,
    norm_topk_prob=False, routed_scaling_factor=1.5, num_nextn_predict_layers=0, max_position_embeddings=256,
    rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32,
                  "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
)

# Edge cases llama.cpp's deepseek2 has no direct form for: no routed experts at all (every layer dense),
# and no shared expert (written as an all-zero one) with every group kept (no group limit).
DENSE_SHAPE: dict[str, Any] = dict(V3_SHAPE, n_routed_experts=0)
NO_SHARED_SHAPE: dict[str, Any] = dict(V3_SHAPE, n_shared_experts=0, topk_group=2)

LLAMA_CPP_MISSING = ("llama-cpp-python cannot be imported: run `make llama-cpp` (builds its wheel once into "
                     "~/.cache/seekforge/wheels, ~6 min) to run the llama.cpp checks")


def random_model(shape: dict[str, Any], seed: int = 0):
    """A model whose logits spread over several units (the default init gives near-ties everywhere, so
    greedy or top-1 agreement would say nothing): embedding and head ~ N(0, 1/fan_in) (head x3), layer
    matrices ~ N(0, 0.4^2/fan_in), norms 1 +- 0.1, a random router bias. At full scale in the layers
    too, this untrained 3-layer model is chaotic enough that Q8_0 rounding flips 12% of its argmaxes
    (measured); at 0.4, 3%."""
    import torch

    from seekforge.model import load_model

    torch.manual_seed(seed)
    model = load_model("tiny", device="cpu", dtype=torch.float32, **{"vocab_size": 512, **shape})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, (0.4 if ".layers." in name else 1.0) * p.shape[-1] ** -0.5)
            else:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
        model.lm_head.weight.mul_(3.0)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0.0, 0.3)
    return model.eval()


def save_random_model(out: Path, shape: dict[str, Any], tokenizer_dir: Path, seed: int = 0) -> Path:
    from seekforge.model import save_model
    from seekforge.tokenizer import load_tokenizer

    return save_model(random_model(shape, seed), out, tokenizer=load_tokenizer(tokenizer_dir))


@pytest.fixture(scope="session")
def v3_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("export") / "v3", V3_SHAPE, tokenizer_dir)


@pytest.fixture(scope="session")
def v2_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("export") / "v2", V2_SHAPE, tokenizer_dir, seed=1)


@pytest.fixture(scope="session")
def llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:  # not installed, or its native library failed to load
        pytest.skip(f"{LLAMA_CPP_MISSING} ({e})")
    return llama_cpp
