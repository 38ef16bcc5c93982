"""Analytic accounting (seekforge.model.accounting) against published DeepSeek numbers and hand counts.

The hand counts below are written out independently from the tensor shapes of the Hugging Face
DeepSeek-V3 state dict (q_a 1536x7168, q_b 24576x1536, kv_a 576x7168, kv_b 32768x512, o 7168x16384
for V3), not by calling the code under test.
"""

from __future__ import annotations

import pytest

from seekforge.model.accounting import flops_per_token, kv_cache_bytes_per_token, param_counts
from seekforge.model.config import ModelConfig, preset_config


def test_v3_matches_published_totals():
    pc = param_counts(preset_config("v3"))
    # Spec §1.1 sanity check: 671.03B total, 37.55B active (full embedding + router), MTP 11.6B.
    assert pc["total"] == pytest.approx(671.03e9, rel=2e-4)
    assert pc["active"] == pytest.approx(37.55e9, rel=1e-3)
    # DeepSeek-V3's README_WEIGHTS.md: "11.5B unique MTP params"
    assert pc["mtp"] == pytest.approx(11.5e9, rel=0.02)
    assert pc["embedding"] == 2 * 129280 * 7168
    assert pc["mtp"] not in (0, pc["total"])  # reported apart, not folded into total


def test_v3_hand_count_of_shapes():
    d, H, dq, dc, dn, dr, dv, V = 7168, 128, 1536, 512, 128, 64, 128, 129280
    attn = d * dq + dq + dq * H * (dn + dr) + d * (dc + dr) + dc + dc * H * (dn + dv) + H * dv * d
    dense = 3 * d * 18432
    expert = 3 * d * 2048
    moe = 256 * d + 256 * expert + 1 * expert
    layer_norms = 2 * d
    total = 2 * V * d + d + 61 * (attn + layer_norms) + 3 * dense + 58 * moe
    active = 2 * V * d + d + 61 * (attn + layer_norms) + 3 * dense + 58 * (256 * d + 9 * expert)
    pc = param_counts(preset_config("v3"))
    assert pc["total"] == total
    assert pc["active"] == active
    # Breakdown parts add up to the total.
    parts = ("attention", "dense_mlp", "router", "routed_experts", "shared_experts", "norms",
             "embed_tokens", "lm_head")
    assert sum(pc[p] for p in parts) == pc["total"]


def test_v2_lite_and_v2_totals():
    assert param_counts(preset_config("v2-lite"))["total"] == pytest.approx(15.71e9, rel=1e-3)
    v2 = ModelConfig(vocab_size=102400, hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
                     num_hidden_layers=60, num_attention_heads=128, n_routed_experts=160, n_shared_experts=2,
                     num_experts_per_tok=6, n_group=8, topk_group=3, first_k_dense_replace=1,
                     scoring_func="softmax", topk_method="group_limited_greedy", num_nextn_predict_layers=0)
    pc = param_counts(v2)
    assert pc["total"] == pytest.approx(235.7e9, rel=1e-3)  # DeepSeek-V2 report: 236B / 21B
    assert pc["active"] == pytest.approx(21.4e9, rel=0.01)
    assert pc["mtp"] == 0


def test_v3_flops_per_token_independent_count():
    # Independent count for 4K pre-training sequences: 6 × (37B active − 0.93B embedding lookup)
    # + 6·L·H·(d_qk+d_v)·T with L = 61 main layers (MTP excluded, as in DeepSeek's own 37B figure).
    hand = 6 * (37.55e9 - 129280 * 7168) + 6 * 61 * 128 * (192 + 128) * 4096
    got = flops_per_token(preset_config("v3"), 4096, include_mtp=False)
    assert got == pytest.approx(hand, rel=0.01)
    # MTP adds one MoE block + eh_proj + a head pass: a few percent, still within ±10% of the hand count.
    with_mtp = flops_per_token(preset_config("v3"), 4096)
    assert 1.0 < with_mtp / got < 1.10
    assert flops_per_token(preset_config("v3"), 4096, causal=True) < got


def test_kv_cache_mla_vs_mha():
    kv = kv_cache_bytes_per_token(preset_config("v3"))
    assert kv["mla"] == 576 * 61 * 2 == 70272  # (d_c + d_r) x 61 layers: 68.6 KiB/token in bf16
    assert kv["mha"] == 128 * (192 + 128) * 61 * 2  # ≈ 4.77 MiB/token
    assert kv["mha"] / kv["mla"] == pytest.approx(71, rel=0.01)
    assert kv_cache_bytes_per_token(preset_config("v2-lite"), bytes_per_elem=1)["mla"] == 15552


def test_tied_embeddings_and_bad_seq_len():
    tied = preset_config("tiny", {"tie_word_embeddings": True})
    untied = preset_config("tiny")
    assert param_counts(untied)["total"] - param_counts(tied)["total"] == 512 * 64
    # The head is still a matmul on every token when tied, so FLOPs do not change.
    assert flops_per_token(tied, 128) == flops_per_token(untied, 128)
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(untied, 0)


def test_v32_indexer_params_flops_and_cache_by_hand():
    from seekforge.model import load_model
    from seekforge.model.accounting import arch_from_model_config, dsa_attention_flops

    d, dq, H_I, d_I, L = 7168, 1536, 64, 128, 61
    indexer = dq * H_I * d_I + d * d_I + d * H_I + 2 * d_I  # wq_b, wk, weights_proj, k_norm weight + bias
    v3, v32 = param_counts(preset_config("v3")), param_counts(preset_config("v3.2"))
    assert v32["total"] - v3["total"] == L * indexer
    kv = kv_cache_bytes_per_token(preset_config("v3.2"))
    assert kv["indexer"] == 128 * 61 * 2 and kv["actual"] == (576 + 128) * 61 * 2
    attn = arch_from_model_config(preset_config("v3.2")).layers[0].attention
    f = dsa_attention_flops(attn, 32768)
    assert f["dense"] == 6 * 128 * 320 * 32768 and f["attention"] == 6 * 128 * 320 * 2048
    assert f["indexer"] == 6 * 64 * 129 * 32768 and f["saved"] == f["dense"] - f["attention"] - f["indexer"]
    assert dsa_attention_flops(attn, 1024)["attention"] == dsa_attention_flops(attn, 1024)["dense"]
    # the built model agrees with the analytic count
    model = load_model("tiny-dsa", device="cpu")
    pc = param_counts(preset_config("tiny-dsa"))
    assert model.num_parameters() == pc["total"] + pc["mtp"]
