"""Fast implementations of the model's two hot spots, applied to a built model from outside.

``model.py`` is the plain reference: its routed experts loop over the experts and its loss is
``F.cross_entropy``. This file holds the implementations that ``build_model`` / ``load_model`` (and
through them the trainer, the fine-tuners and the inference engine) swap in by calling
:func:`use_kernels`; ``load_model(..., kernels=False)`` keeps the reference. Each one computes the
same function as its reference, forward and backward (``tests/model/test_kernels.py``):

    grouped_matmul       one GEMM over E experts' row blocks (torch._grouped_mm; a traceable CPU op)
    GroupedExperts       RoutedExperts without a Python loop: sort the (token, choice) pairs by expert,
                         two grouped matmuls, unsort; at decode sizes, only the chosen experts' rows
    fused_cross_entropy  cross-entropy with a hand-written backward (fewer passes over [N, V])

Swapping keeps every parameter, buffer and state-dict name: ``GroupedExperts`` is a subclass of
``RoutedExperts`` with no state of its own, installed by changing the module's class (as FSDP2's
``fully_shard`` does), and the loss is an attribute of the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekforge.model.model import IGNORE_INDEX, DeepseekV3ForCausalLM, RoutedExperts


def use_kernels(model: nn.Module) -> nn.Module:
    """Replace the reference experts and loss of ``model`` (in place) by the fast ones; returns it."""
    for module in model.modules():
        if type(module) is RoutedExperts:
            module.__class__ = GroupedExperts
        if isinstance(module, DeepseekV3ForCausalLM):
            module.cross_entropy = fused_cross_entropy
    return model


# =============================================================================================
# Grouped matmul: rows sorted by expert, each block times its own expert's matrix
# =============================================================================================


@torch.library.custom_op("seekforge::grouped_mm", mutates_args=())
def _grouped_mm_cpu(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    """torch._grouped_mm on CPU for any float dtype, wrapped as an op torch.compile can trace: the
    built-in op's fake (meta) kernel accepts only bf16, so compiling an fp32 model would fail."""
    return torch._grouped_mm(x, w, offs=offsets)


@_grouped_mm_cpu.register_fake
def _(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], w.shape[-1])


@torch.library.custom_op("seekforge::grouped_mm_wgrad", mutates_args=())
def _grouped_mm_wgrad_cpu(grad: Tensor, x: Tensor, offsets: Tensor) -> Tensor:
    """Per-group grad_e^T @ x_e -> [E, n, k]: the weight gradient of a grouped matmul, already in the
    layout of the stored [E, out, in] parameters (computing x^T grad instead would need a transposing
    copy of every expert gradient: 8 ms per MoE layer on a CPU, measured)."""
    return torch._grouped_mm(grad.t(), x, offs=offsets)


@_grouped_mm_wgrad_cpu.register_fake
def _(grad: Tensor, x: Tensor, offsets: Tensor) -> Tensor:
    return x.new_empty(offsets.shape[0], grad.shape[1], x.shape[1])


def _grouped_mm_cpu_backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
    x, w, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    dw = _grouped_mm_wgrad_cpu(grad, x, offsets).transpose(1, 2)  # a view; the param grad is contiguous
    return _grouped_mm_cpu(grad, w.transpose(1, 2), offsets), dw, None


def _grouped_mm_cpu_setup(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


_grouped_mm_cpu.register_autograd(_grouped_mm_cpu_backward, setup_context=_grouped_mm_cpu_setup)


def grouped_mm_loop(x: Tensor, w: Tensor, counts: Tensor) -> Tensor:
    """The same product as :func:`grouped_matmul`, one matmul per expert that received rows.

    Reads ``counts`` on the host (a device sync; a graph break under torch.compile).
    """
    outs = [chunk @ w[e] for e, chunk in enumerate(x.split(counts.tolist())) if chunk.shape[0]]
    return torch.cat(outs) if outs else x.new_zeros(0, w.shape[-1])


def grouped_matmul(x: Tensor, w: Tensor, counts: Tensor, offsets: Tensor) -> Tensor:
    """Rows of ``x`` [M, k] sorted by expert (``counts[e]`` rows for expert e) times ``w[e]`` [k, n].

    ``offsets`` = cumsum(counts) (int32). One grouped GEMM: ``torch._grouped_mm`` for bf16 (CUDA
    sm80+ kernels; compiles natively), our traceable wrapper of it on CPU (any dtype). Elsewhere
    (fp32 on CUDA) :func:`grouped_mm_loop`. Under autocast both operands are cast to the autocast
    dtype first, as autocast does for any matmul.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # Autocast has no rule for _grouped_mm (or our CPU op): the fp32 activations and parameters
        # would stay fp32 and, on CUDA, take the per-expert loop with its host sync. The casts are
        # differentiable, so the fp32 parameters still get fp32 gradients.
        dtype = torch.get_autocast_dtype(device_type)
        x, w = x.to(dtype), w.to(dtype)
    if x.dtype == torch.bfloat16 and (device_type == "cpu" or (
            device_type == "cuda" and torch.cuda.get_device_capability(x.device) >= (8, 0))):
        return torch._grouped_mm(x, w, offs=offsets)
    if device_type == "cpu":
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # Inference in eager mode: the op itself. The first eager call of a custom op imports
            # torch._dynamo (over 1 s of startup for `seekforge eval`, measured); the wrapper is
            # only needed for autograd and tracing.
            return torch._grouped_mm(x, w, offs=offsets)
        return _grouped_mm_cpu(x, w, offsets)
    return grouped_mm_loop(x, w, counts)


# =============================================================================================
# Routed experts without a loop over experts
# =============================================================================================


class _Dispatch(torch.autograd.Function):
    """xs = x[order // K]: token rows replicated for each of their K choices, grouped by expert.

    Autograd's backward for this gather is a scatter-add (index_put with accumulate: serial on CPU,
    atomic and nondeterministic on CUDA). Because ``order`` is a permutation we can instead gather the
    gradient back into (token, choice) order and sum over the K choices.
    """

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, inv: Tensor, K: int) -> Tensor:
        ctx.save_for_backward(inv)
        ctx.K = K
        return x[order // K]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (inv,) = ctx.saved_tensors
        return grad[inv].view(-1, ctx.K, grad.shape[-1]).sum(dim=1), None, None, None


class _Permute(torch.autograd.Function):
    """x[perm] for a permutation ``perm`` with inverse ``inv``: the backward is a gather, g[inv]."""

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor, inv: Tensor) -> Tensor:
        ctx.save_for_backward(inv)
        return x[perm]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inv,) = ctx.saved_tensors
        return grad[inv], None, None


class GroupedExperts(RoutedExperts):
    """:class:`RoutedExperts` with no Python loop over experts on the hot path.

    (token, choice) pairs are ordered by expert id, each expert's contiguous block is multiplied by
    its own weights (:func:`grouped_matmul`), the results are weighted by the gate values and
    un-permuted back. Both permutations have gather-only backwards (deterministic, unlike index_add /
    scatter-add). The token counts come from a scatter-add into [E] (a static shape, unlike bincount),
    so the training step compiles as one graph.

    Decode (no autograd, at most ``few_pairs`` pairs) skips all of that: the grouped matmul visits
    every expert, empty ones included, and the sort/permute ops cost more than the math for one or
    two tokens. Those pairs are multiplied by their own expert's weights directly.
    """

    # Eager pair path up to this many pairs: 3x faster than the grouped path at 1-2 pairs, equal at
    # ~8 (small-moe on a CPU, measured).
    few_pairs = 4
    # In a compiled decode graph the pair path is a fused multiply+sum and stays ahead of the grouped
    # matmul up to far more pairs (CPU, small-moe, batch 16 x K=2: 6.0 vs 7.5 ms per step).
    few_pairs_compiled = 64

    def forward(self, x: Tensor, idx: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, d], idx/weights [N, K] -> (y [N, d], tokens per expert [E] int32)."""
        N, K = idx.shape
        E = self.gate_up_proj.shape[0]
        flat = idx.reshape(-1)
        counts = torch.zeros(E, dtype=torch.int32, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        pairs = N * K
        limit = self.few_pairs_compiled if torch.compiler.is_compiling() else self.few_pairs
        if pairs <= limit and not torch.is_grad_enabled():
            return self.few_pairs_output(x, flat, weights.reshape(-1)).view(N, K, -1).sum(dim=1), counts
        order = flat.argsort(stable=True)  # (token, choice) pairs grouped by expert
        offsets = counts.cumsum(0, dtype=torch.int32)
        inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        xs = _Dispatch.apply(x, order, inv, K)  # [N*K, d], rows grouped by expert
        h = grouped_matmul(xs, self.gate_up_proj.transpose(1, 2), counts, offsets)
        gate, up = h.chunk(2, dim=-1)
        # The gate weight is applied before the (linear) down projection: same result, and the
        # multiply runs on I_m-wide rows instead of d-wide ones.
        act = F.silu(gate) * up * weights.reshape(-1)[order, None].to(up.dtype)
        ys = grouped_matmul(act, self.down_proj.transpose(1, 2), counts, offsets)
        y = _Permute.apply(ys, inv, order).view(N, K, -1).sum(dim=1)  # (token, choice) order, sum choices
        return y, counts

    def few_pairs_output(self, x: Tensor, flat: Tensor, weights: Tensor) -> Tensor:
        """Output of each (token, choice) pair, [N*K, d], from the chosen experts' weights only."""
        if torch.compiler.is_compiling():
            return self._pairs_multiply_sum(x, flat, weights)
        if x.device.type == "cpu":
            return self._pairs_loop(x, flat, weights)
        return self._pairs_bmm(x, flat, weights)

    def _pairs_multiply_sum(self, x: Tensor, flat: Tensor, weights: Tensor) -> Tensor:
        """Inside torch.compile: written as multiply + sum, the compiler turns each product into ONE
        generated kernel that reads the chosen experts' rows in place (no weight copy, no Python in the
        graph): 20% faster per compiled decode step on a CPU than the loop inside a custom op."""
        xs = x.repeat_interleave(flat.numel() // x.shape[0], dim=0)
        gate, up = (self.gate_up_proj[flat] * xs[:, None, :]).sum(-1).chunk(2, dim=-1)
        act = F.silu(gate) * up * weights.to(x.dtype)[:, None]
        return (self.down_proj[flat] * act[:, None, :]).sum(-1)

    def _pairs_loop(self, x: Tensor, flat: Tensor, weights: Tensor) -> Tensor:
        """CPU, eager: reading the expert ids waits for no device, so two plain matmuls per pair with no
        copies (gathering the chosen experts' weights costs more than the math there, measured)."""
        K = flat.numel() // x.shape[0]
        w = weights.to(x.dtype)
        ys = []
        for j, e in enumerate(flat.tolist()):
            gate, up = F.linear(x[j // K], self.gate_up_proj[e]).chunk(2, dim=-1)
            ys.append(F.linear(F.silu(gate) * up * w[j], self.down_proj[e]))
        return torch.stack(ys)

    def _pairs_bmm(self, x: Tensor, flat: Tensor, weights: Tensor) -> Tensor:
        """Accelerators, eager: no host sync; gather the chosen experts' weights, one bmm each."""
        xs = x.repeat_interleave(flat.numel() // x.shape[0], dim=0)[:, :, None]  # [N*K, d, 1]
        gate, up = torch.bmm(self.gate_up_proj[flat], xs).squeeze(-1).chunk(2, dim=-1)
        act = F.silu(gate) * up * weights.to(x.dtype)[:, None]
        return torch.bmm(self.down_proj[flat], act[:, :, None]).squeeze(-1)


# =============================================================================================
# Cross-entropy with a hand-written backward
# =============================================================================================


class _CrossEntropy(torch.autograd.Function):
    """Mean token cross-entropy; d loss / d logits = (softmax - onehot) / n, written in one pass.

    Same value as the reference, but the [N, V] tensors are touched fewer times: no log-probability
    tensor in the forward (only logsumexp), and the backward writes the gradient in one softmax pass
    instead of a zero-filled NLL gradient + log_softmax_backward. With V = 8192 the stock path cost
    ~30% of a small-moe CPU training step (measured).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        valid = targets != IGNORE_INDEX
        safe = targets.clamp(min=0)
        acc = torch.promote_types(logits.dtype, torch.float32)  # fp32 for bf16 logits, fp64 stays fp64
        lse = torch.logsumexp(logits.to(acc), dim=-1)
        picked = logits.gather(1, safe[:, None]).squeeze(1).to(acc)
        n = valid.sum().clamp(min=1)
        ctx.save_for_backward(logits, lse, safe, valid, n)
        return ((lse - picked) * valid).sum() / n

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, lse, safe, valid, n = ctx.saved_tensors
        scale = (grad / n) * valid.to(lse.dtype)  # [N]: ignored rows get no gradient
        g = torch.softmax(logits, dim=-1, dtype=lse.dtype)
        g.mul_(scale[:, None])
        g.scatter_add_(1, safe[:, None], -scale[:, None])
        return g.to(logits.dtype), None


def fused_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """:func:`seekforge.model.model.cross_entropy` (logits [..., V], targets [...]) with a fused backward."""
    return _CrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


__all__ = ["use_kernels", "grouped_matmul", "grouped_mm_loop", "GroupedExperts", "fused_cross_entropy"]
