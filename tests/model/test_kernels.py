"""Each fast path of seekforge.model.kernels against the reference code in seekforge.model.model.

Forward and backward, fixed seeds, tiny shapes; fp32, bf16 parameters and bf16 autocast (the
trainer's mixed precision, where the grouped matmul casts its operands itself).
"""

from __future__ import annotations

import pytest
import torch

from seekforge.model import build_model, load_model, preset_config
from seekforge.model.kernels import (
    GroupedExperts,
    fused_cross_entropy,
    grouped_matmul,
    grouped_mm_loop,
    use_kernels,
)
from seekforge.model.model import RoutedExperts, cross_entropy


def expert_pair(dtype: torch.dtype = torch.float32) -> tuple[RoutedExperts, GroupedExperts]:
    """The reference and the grouped experts with the same weights (tiny: E=8, d=64, I_m=32)."""
    torch.manual_seed(0)
    ref = RoutedExperts(preset_config("tiny"))
    torch.nn.init.normal_(ref.gate_up_proj, std=0.1)
    torch.nn.init.normal_(ref.down_proj, std=0.1)
    fast = RoutedExperts(preset_config("tiny"))
    fast.load_state_dict(ref.state_dict())
    use_kernels(fast)
    assert type(fast) is GroupedExperts
    return ref.to(dtype), fast.to(dtype)


def routing(n: int, k: int = 2, skip_expert: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens x [n, 64], expert ids [n, k] (distinct per token; expert ``skip_expert`` gets none)."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 64, generator=g)
    experts = [e for e in range(8) if e != skip_expert]
    idx = torch.stack([torch.tensor(experts)[torch.randperm(7, generator=g)[:k]] for _ in range(n)])
    w = torch.rand(n, k, generator=g)
    return x, idx, w


def grads(module: RoutedExperts, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, dy: torch.Tensor):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    y, counts = module(x, idx, w)
    g = torch.autograd.grad(y, [x, w, module.gate_up_proj, module.down_proj], dy.to(y.dtype))
    return y, counts, g


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_grouped_experts_equal_reference_forward_and_backward(dtype, tol):
    ref, fast = expert_pair(dtype)
    x, idx, w = routing(20)
    x = x.to(dtype)
    dy = torch.randn(20, 64, generator=torch.Generator().manual_seed(1))
    y_ref, c_ref, g_ref = grads(ref, x, idx, w, dy)
    y, counts, g = grads(fast, x, idx, w, dy)
    assert counts.tolist() == c_ref.tolist() and counts[3] == 0
    assert y.dtype == dtype and (y.float() - y_ref.float()).norm() <= tol * y_ref.float().norm()
    for name, a, b in zip(["x", "weights", "gate_up_proj", "down_proj"], g, g_ref):
        assert a.dtype == b.dtype and (a.float() - b.float()).norm() <= tol * b.float().norm(), name


def test_grouped_experts_under_bf16_autocast_run_bf16_matmuls_with_fp32_grads():
    """Autocast has no rule for the grouped matmul: without the explicit cast it would stay fp32."""
    ref, fast = expert_pair()
    x, idx, w = routing(20)
    dy = torch.randn(20, 64, generator=torch.Generator().manual_seed(1))
    y_ref, _, g_ref = grads(ref, x, idx, w, dy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref_amp, _, g_ref_amp = grads(ref, x, idx, w, dy)  # the reference's F.linear autocasts itself
        y, _, g = grads(fast, x, idx, w, dy)
    assert y.dtype == torch.bfloat16
    for out in (y, y_ref_amp):
        assert (out.float() - y_ref).norm() < 1e-2 * y_ref.norm()
    for a, b, exact in zip(g, g_ref_amp, g_ref):
        assert a.dtype == exact.dtype == torch.float32 and torch.isfinite(a).all()
        assert (a - exact).norm() < 3e-2 * exact.norm()  # bf16 products, fp32 parameters
        assert (a - b.float()).norm() < 3e-2 * exact.norm()


@pytest.mark.parametrize("n", [1, 2, 8])
def test_few_pairs_decode_paths_equal_reference(n):
    """Without autograd and at most few_pairs pairs, the experts multiply only the chosen rows: the
    CPU loop, the accelerator bmm and the compiled multiply+sum forms all equal the reference."""
    ref, fast = expert_pair()
    x, idx, w = routing(n)
    with torch.no_grad():
        y_ref, _ = ref(x, idx, w)
        y, _ = fast(x, idx, w)  # n * K <= few_pairs takes the pair path, else the grouped one
        assert torch.allclose(y, y_ref, atol=1e-6)
        flat, wf = idx.reshape(-1), w.reshape(-1)
        for path in (fast._pairs_loop, fast._pairs_bmm, fast._pairs_multiply_sum):
            pairs = path(x, flat, wf)
            assert torch.allclose(pairs.view(n, 2, -1).sum(1), y_ref, atol=1e-6), path.__name__


def test_compiled_decode_experts_take_the_multiply_sum_path():
    """Inside torch.compile the pair path is traced as one graph (no host reads), up to 64 pairs."""
    ref, fast = expert_pair()
    x, idx, w = routing(16)  # 32 pairs: over the eager limit, under the compiled one
    graphs = []

    def keep_graph(gm, example_inputs):  # a torch.compile backend that runs the traced graph as is
        graphs.append(gm.code)
        return gm.forward

    compiled = torch.compile(fast, backend=keep_graph, fullgraph=True)
    with torch.no_grad():
        y, counts = compiled(x, idx, w)
        y_ref, c_ref = ref(x, idx, w)
    assert torch.allclose(y, y_ref, atol=1e-6) and counts.tolist() == c_ref.tolist()
    assert len(graphs) == 1 and "argsort" not in graphs[0]  # no sort by expert: the pair path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_matmul_equals_the_loop_forward_and_backward(dtype):
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([5, 0, 10, 5, 5, 5, 5, 5])
    offsets = counts.cumsum(0).int()
    x = torch.randn(40, 16, generator=g).to(dtype).requires_grad_()
    weight = torch.randn(8, 24, 16, generator=g).to(dtype).requires_grad_()  # stored [E, out, in]
    dy = torch.randn(40, 24, generator=g).to(dtype)
    w = weight.transpose(1, 2)  # as the experts call it (rows of 16 bytes or more: _grouped_mm needs that)
    out = grouped_matmul(x, w, counts, offsets)
    ref = grouped_mm_loop(x, w, counts)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype and (out - ref).float().norm() <= tol * ref.float().norm()
    got, want = torch.autograd.grad(out, [x, weight], dy), torch.autograd.grad(ref, [x, weight], dy)
    for a, b in zip(got, want):
        assert a.dtype == dtype and (a - b).float().norm() <= tol * b.float().norm()
    assert got[1][1].abs().sum() == 0  # the expert without rows


def test_grouped_matmul_traces_in_fp32_under_compile():
    """torch._grouped_mm's own fake kernel takes bf16 only; our CPU op lets fp32 models compile."""
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 0, 5, 4])
    x = torch.randn(12, 8, generator=g, requires_grad=True)
    weight = torch.randn(4, 12, 8, generator=g, requires_grad=True)
    compiled = torch.compile(grouped_matmul, backend="aot_eager", fullgraph=True)
    out = compiled(x, weight.transpose(1, 2), counts, counts.cumsum(0).int())
    ref = grouped_mm_loop(x, weight.transpose(1, 2), counts)
    assert torch.allclose(out, ref, atol=1e-5)
    for a, b in zip(torch.autograd.grad(out.sum(), [x, weight]), torch.autograd.grad(ref.sum(), [x, weight])):
        assert torch.allclose(a, b, atol=1e-5)


def test_fused_cross_entropy_equals_reference_and_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 50, dtype=torch.double, requires_grad=True)
    t = torch.randint(0, 50, (2, 3))
    t[1, 0] = -100
    assert torch.allclose(fused_cross_entropy(x, t), cross_entropy(x, t))
    assert torch.autograd.gradcheck(lambda a: fused_cross_entropy(a, t), (x,))
    ignored = torch.full_like(t, -100)
    loss = fused_cross_entropy(x, ignored)
    assert loss.item() == 0.0 and torch.autograd.grad(loss, x)[0].abs().sum() == 0


def test_fused_cross_entropy_on_bf16_logits_accumulates_in_fp32():
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(16, 300, generator=g)).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 300, (16,), generator=g)
    t[:4] = -100
    loss, ref = fused_cross_entropy(x, t), cross_entropy(x, t)
    assert loss.dtype == ref.dtype == torch.float32 and torch.allclose(loss, ref, atol=1e-5)
    a, b = torch.autograd.grad(loss, x)[0], torch.autograd.grad(ref, x)[0]
    assert a.dtype == torch.bfloat16 and (a - b).float().norm() <= 1e-2 * b.float().norm()
    assert a[:4].abs().sum() == 0


def test_build_model_uses_kernels_unless_told_not_to():
    cfg = preset_config("tiny")
    fast, plain = build_model(cfg, "meta"), build_model(cfg, "meta", kernels=False)
    assert type(fast.moe_layers[0].mlp.experts) is GroupedExperts
    assert type(plain.moe_layers[0].mlp.experts) is RoutedExperts
    assert fast.cross_entropy is fused_cross_entropy and plain.cross_entropy is cross_entropy
    assert list(fast.state_dict()) == list(plain.state_dict())  # same names: checkpoints are shared


@pytest.mark.parametrize("amp", [False, True])
def test_whole_model_with_kernels_equals_reference(amp):
    """Training forward + backward of the tiny model (MLA, MoE, MTP, balance loss) both ways."""
    torch.manual_seed(0)
    fast = load_model("tiny", device="cpu")
    torch.manual_seed(0)
    plain = load_model("tiny", device="cpu", kernels=False)
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))
    outs = []
    for model in (fast, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x, labels=x)
        out.loss.backward()
        outs.append(out)
    tol = 2e-2 if amp else 1e-5
    assert torch.equal(outs[0].expert_loads, outs[1].expert_loads)
    assert abs(outs[0].loss.item() - outs[1].loss.item()) <= tol * outs[1].loss.item()
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        assert (p.grad - q.grad).norm() <= tol * q.grad.norm() + 1e-9, name
