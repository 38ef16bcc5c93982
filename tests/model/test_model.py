"""Model behaviour: training forward, cached decode == prefill, MoE router, balancing, MTP, packing."""

from __future__ import annotations

import math

import pytest
import torch

from seekforge.config import ConfigError
from seekforge.model import build_model, load_model, preset_config
from seekforge.model.accounting import param_counts
from seekforge.model.model import MoE, RoutedExperts, Router, cross_entropy, segment_positions


def tiny(**overrides):
    torch.manual_seed(0)
    return load_model("tiny", device="cpu", **overrides)


def test_forward_backward_every_parameter_gets_a_gradient():
    model = tiny()
    x = torch.randint(0, 512, (2, 16))
    out = model(x, labels=x)
    assert out.logits.shape == (2, 16, 512)
    assert set(out.losses) == {"main", "mtp", "balance"}
    assert abs(out.losses["main"].item() - math.log(512)) < 0.1  # N(0, 0.006^2) init: near-uniform
    expected = out.losses["main"] + 0.3 * out.losses["mtp"] + out.losses["balance"]
    assert torch.allclose(out.loss.detach(), expected)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # expert_loads: one row per MoE layer (layer 1, then the MTP layer), N*K token choices each.
    assert out.expert_loads.shape == (2, 8)
    assert out.expert_loads.sum(dim=1).tolist() == [2 * 16 * 2] * 2


def test_inference_forward_skips_mtp_and_balance():
    model = tiny()
    out = model(torch.randint(0, 512, (1, 8)))
    assert out.loss is None and out.losses == {}
    assert out.expert_loads[1].sum() == 0  # the MTP layer did not run


def test_mtp_loss_present_or_absent():
    x = torch.randint(0, 512, (2, 12))
    assert "mtp" not in tiny(num_nextn_predict_layers=0)(x, labels=x).losses
    out = tiny(num_nextn_predict_layers=2)(x, labels=x)
    assert out.losses["mtp"] > 0 and out.expert_loads.shape == (3, 8)
    assert "mtp" not in tiny(mtp_loss_weight=0.0)(x, labels=x).losses


def test_labels_ignore_index_and_all_ignored():
    model = tiny(num_nextn_predict_layers=0, aux_loss_alpha=0.0)
    x = torch.randint(0, 512, (1, 10))
    labels = torch.full_like(x, -100)
    assert model(x, labels=labels).loss.item() == 0.0  # not NaN
    labels[0, 5] = x[0, 5]
    logits = model(x).logits
    ref = torch.nn.functional.cross_entropy(logits[0, 4:5], x[0, 5:6])
    assert torch.allclose(model(x, labels=labels).loss, ref, atol=1e-6)


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": None, "rope_scaling": {
    "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1,
    "mscale": 1.0, "mscale_all_dim": 0.8}}])
def test_absorbed_decode_matches_prefill(overrides):
    """Prefill 8 tokens, then 32 single-token absorbed steps == one full-sequence forward (fp32)."""
    model = tiny(**overrides).eval()
    x = torch.randint(0, 512, (1, 40))
    with torch.no_grad():
        full = model(x).logits
    cache = model.new_cache(2, 64)
    out = model.forward_cached(x[:, :8], cache, torch.tensor([1]), torch.tensor([0]))
    assert (out.logits - full[:, :8]).abs().max() < 1e-5
    for t in range(8, 40):
        out = model.forward_cached(x[:, t : t + 1], cache, torch.tensor([1]), torch.tensor([t]))
        assert (out.logits[:, 0] - full[:, t]).abs().max() < 1e-5, t
    assert cache.kv[0].shape == (2, 64, 32) and cache.pe[0].shape == (2, 64, 8)  # d_c, d_r per token


def test_continuous_batching_rows_at_different_positions():
    model = tiny().eval()
    seqs = [torch.randint(0, 512, (1, n)) for n in (20, 23, 27)]
    with torch.no_grad():
        refs = [model(s).logits[0] for s in seqs]
    cache = model.new_cache(4, 32)
    slots = torch.tensor([3, 0, 2])
    prompt = [5, 9, 2]
    for i, (s, n) in enumerate(zip(seqs, prompt)):  # prefill each prompt separately
        model.forward_cached(s[:, :n], cache, slots[i : i + 1], torch.tensor([0]))
    pos = torch.tensor(prompt)
    # First a multi-token chunk for every row (T=2 after a prefix: absorbed path), then single steps.
    chunk = torch.stack([seqs[i][0, pos[i] : pos[i] + 2] for i in range(3)])
    out = model.forward_cached(chunk, cache, slots, pos)
    for i in range(3):
        assert (out.logits[i] - refs[i][pos[i] : pos[i] + 2]).abs().max() < 1e-5
    pos = pos + 2
    for _ in range(10):
        step = torch.stack([seqs[i][0, pos[i] : pos[i] + 1] for i in range(3)])
        out = model.forward_cached(step, cache, slots, pos)
        for i in range(3):
            assert (out.logits[i, 0] - refs[i][pos[i]]).abs().max() < 1e-5
        pos = pos + 1
    with pytest.raises(ValueError, match="max_len"):
        model.forward_cached(step, cache, slots, torch.tensor([31, 0, 0]) + 1)


def test_mtp_drafting_with_cache_matches_training_mtp_loss():
    model = tiny(aux_loss_alpha=0.0).eval()
    x = torch.randint(0, 512, (1, 24))
    with torch.no_grad():
        mtp_loss = model(x, labels=x).losses["mtp"]
    cache = model.new_cache(1, 32)
    slot, zero = torch.tensor([0]), torch.tensor([0])
    main = model.forward_cached(x[:, :22], cache, slot, zero)
    # MTP at position i sees main hidden h_i and token t_{i+1}; it predicts t_{i+2}.
    pre = model.mtp_forward_cached(main.hidden[:, :12], x[:, 1:13], cache, slot, zero)
    logits = [pre.logits]
    for i in range(12, 22):  # the rest one token at a time through the absorbed path
        pos = torch.tensor([i])
        step = model.mtp_forward_cached(main.hidden[:, i : i + 1], x[:, i + 1 : i + 2], cache, slot, pos)
        logits.append(step.logits)
    logits = torch.cat(logits, dim=1)  # predictions for t_2 .. t_23
    ce = torch.nn.functional.cross_entropy(logits[0], x[0, 2:24])
    assert torch.allclose(ce, mtp_loss, atol=1e-5)


def test_segment_ids_equal_separate_sequences():
    model = tiny().eval()
    a, b = torch.randint(0, 512, (1, 7)), torch.randint(0, 512, (1, 9))
    packed = torch.cat([a, b], dim=1)
    seg = torch.tensor([[0] * 7 + [1] * 9])
    assert segment_positions(seg).tolist() == [list(range(7)) + list(range(9))]
    with torch.no_grad():
        out = model(packed, segment_ids=seg).logits
        ra, rb = model(a).logits, model(b).logits
    assert (out[:, :7] - ra).abs().max() < 1e-5 and (out[:, 7:] - rb).abs().max() < 1e-5
    # The main loss over the packed row = token-weighted mean of the two separate losses.
    m = tiny(num_nextn_predict_layers=0, aux_loss_alpha=0.0).eval()
    with torch.no_grad():
        lp = m(packed, labels=packed, segment_ids=seg).loss
        la, lb = m(a, labels=a).loss, m(b, labels=b).loss
    assert torch.allclose(lp, (6 * la + 8 * lb) / 14, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Router / MoE
# --------------------------------------------------------------------------------------------


def make_router(**overrides) -> Router:
    """A router whose logits equal its input (weight = identity), E = 8 experts in 4 groups."""
    base = dict(hidden_size=8, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                routed_scaling_factor=2.5)
    cfg = preset_config("tiny", {**base, **overrides})
    router = Router(cfg)
    with torch.no_grad():
        router.weight.copy_(torch.eye(8))
    return router


def test_router_bias_changes_selection_not_weights():
    router = make_router(n_group=1, topk_group=1)
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]])
    idx, w, scores = router(logits)
    assert sorted(idx[0].tolist()) == [0, 1]
    router.e_score_correction_bias[7] = 5.0  # push expert 7 into the top-2
    idx, w, _ = router(logits)
    assert sorted(idx[0].tolist()) == [0, 7]
    s = torch.sigmoid(logits[0])
    expect = {0: s[0] / (s[0] + s[7]) * 2.5, 7: s[7] / (s[0] + s[7]) * 2.5}  # unbiased s, normalised, scaled
    for j, e in enumerate(idx[0].tolist()):
        assert torch.allclose(w[0, j], expect[e])
    assert torch.allclose(w.sum(), torch.tensor(2.5))


def test_router_group_limiting_uses_top2_sum_and_masks_with_minus_inf():
    router = make_router(num_experts_per_tok=2, n_group=4, topk_group=1)
    # Group 0 = experts {0,1}: best single expert (logit 4) but weak partner -> top-2 sum small.
    # Group 2 = experts {4,5}: two good experts -> wins the group vote, expert 0 must be excluded.
    logits = torch.tensor([[4.0, -6.0, -5.0, -5.0, 2.0, 2.0, -5.0, -5.0]])
    idx, _, _ = router(logits)
    assert sorted(idx[0].tolist()) == [4, 5]
    # Negative biased scores: masking with 0 (transformers 4.x) would leak experts from dropped groups;
    # DeepSeek's inference code, transformers 5 and torchtitan mask with -inf.
    router = make_router(num_experts_per_tok=4, n_group=4, topk_group=2)
    router.e_score_correction_bias.fill_(-3.0)
    idx, _, _ = router(logits)
    kept_groups = {e // 2 for e in idx[0].tolist()}
    assert len(kept_groups) == 2


def test_router_without_norm_topk_prob_and_softmax_variants():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, 2.5]])
    r = make_router(n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0)
    idx, w, _ = r(logits)
    assert torch.allclose(w[0].sort().values, torch.sigmoid(torch.tensor([2.5, 3.0])))
    r = make_router(scoring_func="softmax", topk_method="greedy", norm_topk_prob=False,
                    routed_scaling_factor=1.0)
    r.e_score_correction_bias.fill_(100.0)  # ignored by the V2 router
    idx, w, scores = r(logits)
    assert sorted(idx[0].tolist()) == [0, 7]
    assert torch.allclose(scores.sum(), torch.tensor(1.0))
    assert torch.allclose(w[0].sort().values, torch.softmax(logits[0], 0)[[7, 0]])
    r = make_router(scoring_func="softmax", topk_method="group_limited_greedy", n_group=4, topk_group=1)
    idx, _, _ = r(logits)
    assert sorted(idx[0].tolist()) == [0, 1]  # group 0 has the best single expert (max rule)


def test_bias_update_sign_rule():
    model = tiny()
    loads = torch.tensor([[10.0, 0, 5, 5, 5, 5, 5, 5], [0.0] * 8])  # mean 5 in row 0; MTP row all zero
    model.update_router_bias(loads)
    b = model.moe_layers[0].mlp.gate.e_score_correction_bias
    assert torch.allclose(b, torch.tensor([-1e-3, 1e-3, 0, 0, 0, 0, 0, 0]))
    assert model.moe_layers[1].mlp.gate.e_score_correction_bias.abs().sum() == 0
    with pytest.raises(ValueError, match="n_moe_layers"):
        model.update_router_bias(torch.zeros(3, 8))


def test_router_bias_stays_fp32_under_dtype_casts():
    model = tiny().to(torch.bfloat16)
    gate = model.moe_layers[0].mlp.gate
    assert gate.weight.dtype == torch.bfloat16 and gate.e_score_correction_bias.dtype == torch.float32
    model.update_router_bias(torch.tensor([[1.0] + [0.0] * 7] * 2))
    assert gate.e_score_correction_bias[1].item() == pytest.approx(1e-3)
    assert model(torch.randint(0, 512, (1, 4))).logits.dtype == torch.bfloat16


def test_balance_loss_hand_computed():
    """B=1, T=2, E=4, K=1: f = E/(K T) * counts, P = mean of normalised scores; L = alpha sum f P."""
    cfg = preset_config("tiny", dict(n_routed_experts=4, num_experts_per_tok=1, n_group=1, topk_group=1,
                                     aux_loss_alpha=0.1))
    moe = MoE(cfg)
    scores = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.1, 0.6, 0.2, 0.1]])  # rows already sum to 1
    idx = torch.tensor([[0], [1]])
    f = torch.tensor([2.0, 2.0, 0.0, 0.0])  # 4/(1*2) * [1, 1, 0, 0]
    p = torch.tensor([0.25, 0.4, 0.2, 0.15])
    assert torch.allclose(moe.balance_loss(idx, scores, 1, 2), 0.1 * (f * p).sum())  # = 0.13


def test_routed_experts_equal_the_per_token_formula():
    """y_t = sum_k w_tk * down_e(silu(gate_e x_t) * up_e x_t), e = idx[t, k] (DeepSeek-V3 eq. 12)."""
    torch.manual_seed(0)
    experts = RoutedExperts(preset_config("tiny"))
    torch.nn.init.normal_(experts.gate_up_proj, std=0.1)
    torch.nn.init.normal_(experts.down_proj, std=0.1)
    x = torch.randn(20, 64, requires_grad=True)
    idx = torch.randint(0, 8, (20, 2))
    idx[:, 1] = (idx[:, 0] + 1) % 8
    w = torch.rand(20, 2, requires_grad=True)
    y, counts = experts(x, idx, w)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, w, experts.gate_up_proj, experts.down_proj], dy)
    ref = torch.zeros_like(x)
    for t in range(20):
        for k in range(2):
            e = idx[t, k]
            g, u = (experts.gate_up_proj[e] @ x[t]).chunk(2)
            ref[t] += w[t, k] * (experts.down_proj[e] @ (torch.nn.functional.silu(g) * u))
    ref_grads = torch.autograd.grad(ref, [x, w, experts.gate_up_proj, experts.down_proj], dy)
    assert torch.allclose(y, ref, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)
    assert counts.tolist() == torch.bincount(idx.flatten(), minlength=8).tolist() and counts.sum() == 40


def test_router_scores_stay_fp32_under_bf16_autocast():
    """The trainer runs bf16 under autocast, which would cast the router's fp32 matmul back to bf16."""
    gate = tiny().moe_layers[0].mlp.gate
    x = torch.randn(64, gate.weight.shape[1], generator=torch.Generator().manual_seed(1))
    idx, w, scores = gate(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx_a, w_a, scores_a = gate(x)
    assert scores_a.dtype == torch.float32 and w_a.dtype == torch.float32
    assert torch.allclose(scores_a, scores, rtol=0, atol=1e-6)
    assert torch.equal(idx_a.sort().values, idx.sort().values) and torch.allclose(w_a, w, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Construction, sizes, config errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small-moe"])
def test_accounting_matches_instantiated_parameters(preset):
    model = build_model(preset_config(preset), "meta")
    pc = param_counts(model.config)
    assert model.num_parameters(include_mtp=False) == pc["total"]
    assert model.num_parameters() == pc["total"] + pc["mtp"]


def test_v3_on_meta_device():
    model = load_model("v3")
    assert model.lm_head.weight.is_meta
    assert round(model.num_parameters(include_mtp=False) / 1e9) == 671


def test_init_weights_statistics():
    model = load_model("small-moe", device="cpu")
    w = model.model.layers[2].mlp.experts.gate_up_proj
    assert abs(w.std().item() - 0.006) < 3e-4
    assert torch.all(model.model.norm.weight == 1)


@pytest.mark.parametrize("overrides, field", [
    ({"n_group": 3}, "n_group"),
    ({"topk_group": 3}, "topk_group"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ({"qk_rope_head_dim": 7}, "qk_rope_head_dim"),
    ({"scoring_func": "relu"}, "scoring_func"),
    ({"q_lora_rank": 0}, "q_lora_rank"),
])
def test_bad_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_model("tiny", device="cpu", **overrides)


def test_unknown_preset_and_key():
    with pytest.raises(ConfigError, match="small-moe"):
        load_model("small_moe")
    with pytest.raises(ConfigError, match="kv_lora_rank"):
        load_model("tiny", kv_lora_rnk=4)


def test_cross_entropy_is_the_mean_over_non_ignored_targets():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 50, dtype=torch.double)
    t = torch.randint(0, 50, (2, 3))
    t[0, 2] = -100
    ref = torch.nn.functional.cross_entropy(x.view(6, 50), t.view(6))
    assert torch.allclose(cross_entropy(x, t), ref)
    assert cross_entropy(x, torch.full_like(t, -100)).item() == 0.0  # not NaN
    assert cross_entropy(x.to(torch.bfloat16), t).dtype == torch.float32  # accumulated in fp32
