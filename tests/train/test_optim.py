"""LR schedules, our Muon against torch.optim.Muon, stacked-expert handling and parameter roles."""

from __future__ import annotations

import math

import pytest
import torch

from seekforge.train.muon import Muon, zeropower_newton_schulz
from seekforge.train.optim import MultiOptimizer, OptimizerSpec, build_optimizer, group_parameters, param_role
from seekforge.train.schedule import lr_multiplier


def _curve(schedule: str, **kw) -> list[float]:
    return [lr_multiplier(s, schedule=schedule, max_steps=100, warmup_steps=10, min_lr_ratio=0.1, **kw)
            for s in range(100)]


def test_warmup_is_linear_and_starts_above_zero():
    for schedule in ("cosine", "wsd", "constant"):
        c = _curve(schedule)
        assert c[0] == pytest.approx(0.1) and c[9] == pytest.approx(1.0)
        assert all(b > a for a, b in zip(c[:10], c[1:10]))


def test_cosine_decays_monotonically_to_min_ratio():
    c = _curve("cosine")
    assert all(b <= a + 1e-12 for a, b in zip(c[10:], c[11:]))
    end = lr_multiplier(100, schedule="cosine", max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert end == pytest.approx(0.1)
    # halfway through the decay the cosine is at the midpoint between 1 and min_lr_ratio
    assert c[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)


def test_wsd_holds_then_decays_linearly_in_the_last_fraction():
    c = _curve("wsd", decay_fraction=0.2)
    assert all(v == 1.0 for v in c[10:80])
    assert c[99] == pytest.approx(0.1)
    diffs = [a - b for a, b in zip(c[80:], c[81:])]
    assert all(d == pytest.approx(diffs[0]) for d in diffs)  # linear


def test_constant_and_unknown_schedule():
    assert _curve("constant")[10:] == [1.0] * 90
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(0, schedule="linear", max_steps=10)


def test_muon_matches_torch_muon_on_2d_weights_bit_for_bit():
    torch.manual_seed(0)
    w0 = torch.randn(48, 32)
    grads = [torch.randn(48, 32) for _ in range(3)]
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_a = Muon([ours], lr=0.02, weight_decay=0.1, momentum=0.95, ns_dtype=torch.bfloat16)
    opt_b = torch.optim.Muon([ref], lr=0.02, weight_decay=0.1, momentum=0.95)
    for g in grads:
        ours.grad, ref.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(ours, ref)


def test_muon_treats_stacked_experts_as_independent_matrices():
    torch.manual_seed(0)
    E, rows, cols = 4, 24, 16
    g = torch.randn(E, rows, cols)
    batched = zeropower_newton_schulz(g, dtype=torch.float32)
    for e in range(E):
        assert torch.allclose(batched[e], zeropower_newton_schulz(g[e], dtype=torch.float32), atol=1e-5)
    # "split=2" (fused gate/up) == orthogonalising the two row blocks separately
    p = torch.nn.Parameter(torch.zeros(E, 2 * rows, cols))
    p.grad = torch.randn(E, 2 * rows, cols)
    Muon([{"params": [p], "split": 2}], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False,
         ns_dtype=torch.float32).step()
    gate = zeropower_newton_schulz(p.grad[:, :rows], dtype=torch.float32)
    scale = math.sqrt(max(1.0, rows / cols))
    assert torch.allclose(p.detach()[:, :rows], -scale * gate, atol=1e-5)
    # the orthogonalised update has singular values near 1 (Newton-Schulz lands in ~[0.7, 1.2])
    s = torch.linalg.svdvals(batched[0])
    assert float(s.min()) > 0.5 and float(s.max()) < 1.5


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="2-D or stacked 3-D"):
        Muon([torch.nn.Parameter(torch.zeros(5))])


def test_param_roles_on_the_tiny_model():
    from seekforge.model import load_model

    model = load_model("tiny", device="cpu")
    roles = {n: param_role(n, p) for n, p in model.named_parameters()}
    assert roles["model.embed_tokens.weight"] == "embedding"
    assert roles["lm_head.weight"] == "head"
    assert roles["model.layers.1.mlp.gate.weight"] == "router"
    assert roles["model.layers.1.mlp.experts.gate_up_proj"] == "matrix"
    assert roles["model.layers.1.mlp.shared_experts.gate_proj.weight"] == "matrix"
    assert roles["model.layers.0.input_layernorm.weight"] == "vector"
    assert roles["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"] == "matrix"
    groups = group_parameters(model.named_parameters())
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))

    opt = build_optimizer(model.named_parameters(), OptimizerSpec(kind="muon", lr=1e-3, muon_lr=0.02),
                          torch.device("cpu"))
    assert isinstance(opt, MultiOptimizer)
    muon, adam = opt.optimizers
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    assert id(model.model.layers[1].mlp.experts.gate_up_proj) in muon_ids
    assert id(model.lm_head.weight) not in muon_ids
    assert id(model.model.layers[1].mlp.gate.weight) not in muon_ids
    fused = [g for g in muon.param_groups if g["split"] == 2]
    assert fused and all(p.ndim == 3 for p in fused[0]["params"])
    # weight decay only on >= 2-D tensors
    for g in adam.param_groups:
        assert (g["weight_decay"] > 0) == all(p.ndim >= 2 for p in g["params"])
    # AdamW mode: one optimizer, every parameter, DeepSeek-V3 betas
    adamw = build_optimizer(model.named_parameters(), OptimizerSpec(), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    assert sum(len(g["params"]) for g in adamw.param_groups) == len(list(model.parameters()))


def test_frozen_parameters_are_not_optimized():
    lin = torch.nn.Linear(4, 4)
    lin.bias.requires_grad_(False)
    opt = build_optimizer(lin.named_parameters(), OptimizerSpec(), torch.device("cpu"))
    assert [p for g in opt.param_groups for p in g["params"]] == [lin.weight]
    lin.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(lin.named_parameters(), OptimizerSpec(), torch.device("cpu"))
