"""DeepSeek-V3 (arXiv:2412.19437) in plain single-device PyTorch: MLA, DeepSeekMoE, multi-token prediction.

Read it next to the technical report; "eq. N" and "§N" below are the report's. Top to bottom:

    RMSNorm, MLP                  the basic blocks (SwiGLU feed-forward)
    RotaryEmbedding, apply_rope   decoupled RoPE on the d_r-dim slices, with YaRN (§4.3)
    MLAttention                   Multi-head Latent Attention (§2.1.1, eqs. 1-11)
      .forward                    training / prefill: keys and values expanded per head, SDPA
    Router, RoutedExperts, MoE    DeepSeekMoE, auxiliary-loss-free balancing (§2.1.2, eqs. 12-20)
    DecoderLayer, MTPLayer        one block; one multi-token prediction module (§2.2, eqs. 21-25)
    DeepseekV3ForCausalLM         the whole model: losses, router-bias update

Cached inference (the latent KV cache, the absorbed-projection decode, ``forward_cached`` and
``decode_step``) is in :mod:`seekforge.model.cache`, mixed into the classes above.

Parameter names equal the Hugging Face state-dict names (``model.layers.3.self_attn.q_a_proj.weight``
...) except the routed experts, which are stacked ``[E, ...]`` tensors (``mlp.experts.gate_up_proj``
``[E, 2*I_m, d]`` and ``mlp.experts.down_proj`` ``[E, d, I_m]``, the layout transformers 5 uses in
memory). MTP modules live at ``model.layers[num_hidden_layers + k]`` exactly as in HF checkpoints.

This is the reference: no parallelism, compilation or custom kernels inside, and precision handled
only where the numerics need it (router and norms in fp32). The rest is applied from outside:
``build_model`` swaps in the grouped-matmul experts and fused loss of :mod:`seekforge.model.kernels`
(same parameters, same results); the trainer wraps each DecoderLayer for FSDP2 / activation
checkpointing and runs it under autocast; the inference engine compiles ``decode_step``.

Symbols: d hidden_size, H heads, d_c kv_lora_rank, d_q q_lora_rank, d_n / d_r / d_v nope / rope /
value head dims, E routed experts, K experts per token, G groups, L main layers, D MTP depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekforge.model.cache import (
    AbsorbedAttention,
    CachedDecoderLayer,
    CachedInference,
    CacheView,
    MLACache,
    write_cache,
)
from seekforge.model.config import ModelConfig
from seekforge.model.outputs import ModelOutput

IGNORE_INDEX = -100  # HF label convention: positions with this label do not count in the loss


# =============================================================================================
# Basic blocks
# =============================================================================================


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in fp32 (as HF and the reference code do)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused op instead of four; bit-identical to the general path in fp32 (checked).
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * y

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Dense layers and the shared experts."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# =============================================================================================
# Rotary position embedding on the decoupled rope slices, with YaRN
# =============================================================================================


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature m = 0.1 * mscale * ln(s) + 1 (§4.3: sqrt(t) = 0.1 ln s + 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _rope_kind(cfg: ModelConfig) -> str:
    rs = cfg.rope_scaling or {}
    return rs.get("rope_type", rs.get("type", "default")) or "default"


def rope_inv_freq(cfg: ModelConfig) -> tuple[Tensor, float]:
    """Inverse frequencies theta_j (j < d_r/2) and the cos/sin multiplier, YaRN-corrected if configured.

    YaRN (arXiv:2309.00071): frequencies whose wavelength fits in the original context many times
    (high frequency, j < low) are kept; slow ones (j > high) are divided by the factor s; a linear ramp
    in between. Same formulas as DeepSeek's ``inference/model.py`` (``precompute_freqs_cis``) and
    transformers' ``_compute_yarn_parameters`` (``modeling_rope_utils.py``).
    """
    d_r, base = cfg.qk_rope_head_dim, float(cfg.rope_theta)
    # d_r/2 numbers, always computed on the CPU (the caller moves them): under a meta-device build,
    # meta arange runs through torch's Python reference, whose first call imports torch._dynamo (~2 s).
    inv_freq = 1.0 / base ** (torch.arange(0, d_r, 2, dtype=torch.float64, device="cpu") / d_r)
    if _rope_kind(cfg) != "yarn":
        return inv_freq.float(), 1.0
    rs = cfg.rope_scaling or {}
    orig = rs.get("original_max_position_embeddings", cfg.max_position_embeddings)
    factor = rs.get("factor") or cfg.max_position_embeddings / orig
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def corr_dim(n_rot: float) -> float:  # the pair index whose wavelength makes n_rot turns in orig
        return d_r * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d_r - 1)
    if low == high:
        high += 0.001  # avoid 0/0
    # Computed in fp32 like HF so exported models give bit-comparable frequencies.
    inv_freq = inv_freq.float()
    ramp = ((torch.arange(d_r // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)
    # Multiplier on cos/sin: 1 for all released configs (mscale == mscale_all_dim).
    attn_factor = rs.get("attention_factor")
    if attn_factor is None:
        m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
        if m and m_all:
            attn_factor = _yarn_mscale(factor, m) / _yarn_mscale(factor, m_all)
        else:
            attn_factor = _yarn_mscale(factor)
    return inv_freq, float(attn_factor)


def softmax_scale(cfg: ModelConfig) -> float:
    """1/sqrt(d_n + d_r), times m^2 with YaRN, m from ``mscale_all_dim`` as transformers reads it."""
    scale = cfg.qk_head_dim**-0.5
    if _rope_kind(cfg) != "default":
        rs = cfg.rope_scaling or {}
        if rs.get("mscale_all_dim"):
            scale *= _yarn_mscale(float(rs.get("factor", 1.0)), rs["mscale_all_dim"]) ** 2
    return scale


class RotaryEmbedding(nn.Module):
    """cos/sin of position * theta_j for the d_r-dim rope slices, computed on the fly from positions.

    Computing per call (instead of a [max_len, d_r] table) keeps rows at arbitrary positions cheap
    (continuous batching) and needs no table to rebuild after meta-device construction.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        inv_freq, self.attention_factor = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset_parameters(self) -> None:
        # Needed after `to_empty()`: non-persistent buffers are not in any checkpoint.
        inv_freq, self.attention_factor = rope_inv_freq(self.cfg)
        self.inv_freq = inv_freq.to(self.inv_freq.device)

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        angles = position_ids.float()[..., None] * self.inv_freq.float()  # [B, T, d_r/2], fp32
        m = self.attention_factor
        return (angles.cos() * m).to(dtype), (angles.sin() * m).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x_2j, x_2j+1) by angle p*theta_j (DeepSeek / GPT-J convention).

    x: [B, T, ..., d_r]; cos/sin: [B, T, d_r/2]. The output is written de-interleaved (all first
    members, then all second members), like transformers does; q and k get the same layout, so
    dot products are unchanged. Checkpoints keep DeepSeek's interleaved convention, which llama.cpp
    and transformers (``rope_interleave=True``) expect.
    """
    while cos.dim() < x.dim():  # broadcast over the head dimension
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# =============================================================================================
# Multi-head Latent Attention
# =============================================================================================


class MLAttention(AbsorbedAttention, nn.Module):
    """MLA: queries through a low-rank latent, keys/values through ONE shared d_c latent per token.

        c_q   = RMSNorm(W_DQ h)                      (or plain q_proj when q_lora_rank is null)
        q     = W_UQ c_q         -> per head [q_nope (d_n) | q_pe (d_r)], q_pe gets RoPE
        [c|kr]= W_DKV h          -> c = RMSNorm(c) is the cached latent; kr gets RoPE, shared by heads
        k     = [W_UK c | kr],  v = W_UV c           (W_UK, W_UV stacked in kv_b_proj)
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.d_c = cfg.num_attention_heads, cfg.kv_lora_rank
        self.d_n, self.d_r, self.d_v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.d_qk = self.d_n + self.d_r
        self.scale = softmax_scale(cfg)
        self.q_lora_rank = cfg.q_lora_rank
        d, H = cfg.hidden_size, cfg.num_attention_heads
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, H * self.d_qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, eps=1e-6)  # transformers: always 1e-6
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * self.d_qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.d_c + self.d_r, bias=False)
        self.kv_a_layernorm = RMSNorm(self.d_c, eps=1e-6)
        self.kv_b_proj = nn.Linear(self.d_c, H * (self.d_n + self.d_v), bias=False)
        self.o_proj = nn.Linear(H * self.d_v, d, bias=False)

    def query_latent(self, x: Tensor) -> Tensor | None:
        """c_q = RMSNorm(W_DQ x) [B,T,d_q] (None without q-LoRA); V3.2's indexer reads it too."""
        return None if self.q_lora_rank is None else self.q_a_layernorm(self.q_a_proj(x))

    def _project(self, x: Tensor, cos: Tensor, sin: Tensor,
                 q_latent: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x [B,T,d] -> q_nope [B,T,H,d_n], q_pe [B,T,H,d_r] (roped), latent c [B,T,d_c], k_pe [B,T,d_r].

        ``q_latent``: c_q when the caller has computed it already."""
        B, T, _ = x.shape
        H = self.n_heads
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(q_latent if q_latent is not None else self.query_latent(x))
        q_nope, q_pe = q.view(B, T, H, self.d_qk).split([self.d_n, self.d_r], dim=-1)
        c, k_pe = self.kv_a_proj_with_mqa(x).split([self.d_c, self.d_r], dim=-1)
        # The shared rope key rides along as an extra "head": one RoPE call instead of two (the rope
        # slices are d_r wide, so the concatenation is cheap; it halves the small ops on the decode path).
        pe = apply_rope(torch.cat([q_pe, k_pe[:, :, None]], dim=2), cos, sin)
        return q_nope, pe[:, :, :H], self.kv_a_layernorm(c), pe[:, :, H]

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                cache: CacheView | None = None) -> Tensor:
        """Training / prefill: expand k, v for every head and run SDPA over the T tokens.

        ``mask``: None = plain causal, else a bool [B, 1, T, T] (True = may attend).
        ``cache``: where to also store this chunk's latents (prefill).
        """
        q_nope, q_pe, c, k_pe = self._project(x, cos, sin)
        if cache is not None:
            write_cache(cache, c, k_pe)
        return self._attend(q_nope, q_pe, c, k_pe, mask)

    def _attend(self, q_nope: Tensor, q_pe: Tensor, c: Tensor, k_pe: Tensor, mask: Tensor | None) -> Tensor:
        """Expand the latents to per-head keys and values and attend (``mask`` as in :meth:`forward`)."""
        B, T, H, _ = q_nope.shape
        kv = self.kv_b_proj(c).view(B, T, H, self.d_n + self.d_v)
        k_nope, v = kv.split([self.d_n, self.d_v], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)  # [B, H, T, d_qk]
        k = torch.cat([k_nope, k_pe[:, :, None, :].expand(B, T, H, self.d_r)], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        # Flash kernels (CPU and CUDA) need equal q/k/v head dims: pad v with zeros and drop the padding
        # afterwards (2.4x faster than the math fallback on CPU, measured).
        if self.d_v < self.d_qk:
            v = F.pad(v, (0, self.d_qk - self.d_v))
        if mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        o = o[..., : self.d_v].transpose(1, 2).reshape(B, T, H * self.d_v)
        return self.o_proj(o)
# =============================================================================================
# DeepSeekMoE
# =============================================================================================


class Router(nn.Module):
    """Top-K expert selection (HF module name ``gate``).

    V3 (scoring_func sigmoid, topk_method noaux_tc; eqs. 13-16):
        s = sigmoid(u . e_i); selection uses s + b (b = e_score_correction_bias, fp32, no gradient);
        groups scored by the sum of their top-2 biased scores; keep topk_group groups (others -inf);
        top-K; gate weights from the UNBIASED s, normalised over the K (norm_topk_prob), times
        routed_scaling_factor.
    V2 (softmax): s = softmax(u . e); greedy top-K, or group_limited_greedy (group score = max).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_experts, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        bias = torch.zeros(cfg.n_routed_experts, dtype=torch.float32)
        self.register_buffer("e_score_correction_bias", bias)

    def _apply(self, fn, recurse: bool = True):
        # Keep the bias in fp32 through .to(bf16)/.half()/to_empty(): updates of +-1e-3 vanish in bf16.
        bias = self._buffers.pop("e_score_correction_bias")
        try:
            super()._apply(fn, recurse)
        finally:
            device = fn(torch.zeros((), device=bias.device)).device
            if bias.is_meta and device.type != "meta":
                bias = torch.zeros(bias.shape, dtype=torch.float32, device=device)
            self._buffers["e_score_correction_bias"] = bias.to(device=device, dtype=torch.float32)
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, d] -> (expert ids [N, K], gate weights [N, K] fp32, affinities s [N, E] fp32)."""
        cfg = self.cfg
        # Router in fp32, like HF. Autocast (the trainer's bf16) would cast F.linear's fp32 inputs back
        # to bf16, so it is off for this one small matmul; the rest of the router then follows in fp32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid() if cfg.scoring_func == "sigmoid" else logits.softmax(dim=-1)
        choice = scores + self.e_score_correction_bias if cfg.topk_method == "noaux_tc" else scores
        if cfg.topk_method != "greedy" and cfg.n_group > 1:
            choice = self._limit_groups(choice)
        idx = choice.topk(self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(-1, idx)
        if cfg.norm_topk_prob and self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return idx, weights * cfg.routed_scaling_factor, scores

    def _limit_groups(self, choice: Tensor) -> Tensor:
        """Mask (-inf) all experts outside the topk_group best groups (node-limited routing)."""
        N, G = choice.shape[0], self.cfg.n_group
        grouped = choice.view(N, G, self.n_experts // G)
        if self.cfg.topk_method == "noaux_tc":
            group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # V3: sum of the top-2 per group
        else:
            group_score = grouped.amax(dim=-1)  # V2: best expert per group
        keep = group_score.topk(self.cfg.topk_group, dim=-1, sorted=False).indices
        group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
        # -inf, as DeepSeek's code and transformers 5 (transformers 4 used 0): biased scores can be
        # negative, so 0 would let experts of dropped groups win.
        return grouped.masked_fill(~group_mask[..., None], float("-inf")).view(N, self.n_experts)


class RoutedExperts(nn.Module):
    """E SwiGLU experts stored stacked: ``gate_up_proj`` [E, 2*I_m, d], ``down_proj`` [E, d, I_m].

    The routed half of eq. 12: y_t = sum over the K chosen experts i of g_it * FFN_i(u_t).
    This reference loops over the experts; :class:`seekforge.model.kernels.GroupedExperts` (what
    ``build_model`` installs) computes the same with grouped matmuls and no loop.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, d, I = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, d))  # [gate rows; up rows] per expert
        self.down_proj = nn.Parameter(torch.empty(E, d, I))

    def forward(self, x: Tensor, idx: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, d], idx/weights [N, K] -> (y [N, d], tokens per expert [E])."""
        E = self.gate_up_proj.shape[0]
        y = torch.zeros_like(x)
        for e in range(E):
            token, choice = torch.where(idx == e)  # the tokens that chose expert e, and as which choice
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            out = F.linear(F.silu(gate) * up, self.down_proj[e])
            y = y.index_add(0, token, (weights[token, choice, None] * out).to(y.dtype))
        return y, torch.bincount(idx.reshape(-1), minlength=E)


class MoE(nn.Module):
    """DeepSeekMoE FFN: shared experts (one MLP of width S*I_m) + gated top-K of E routed experts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = RoutedExperts(cfg)
        if cfg.n_shared_experts > 0:
            self.shared_experts = MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)

    def forward(self, x: Tensor, with_aux: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """x [B, T, d] -> (y [B, T, d], tokens per expert [E] float, balance loss or None)."""
        B, T, d = x.shape
        flat = x.reshape(B * T, d)
        idx, weights, scores = self.gate(flat)
        y, counts = self.experts(flat, idx, weights)
        if hasattr(self, "shared_experts"):
            y = y + self.shared_experts(flat)
        bal = self.balance_loss(idx, scores, B, T) if with_aux else None
        return y.view(B, T, d), counts.detach().float(), bal

    def balance_loss(self, idx: Tensor, scores: Tensor, B: int, T: int) -> Tensor:
        """Complementary sequence-wise balance loss, eqs. 17-20 (batch-wise if not seq_aux):

            L = alpha * sum_i f_i P_i,  f_i = E/(K T) * #{t: i in TopK_t},  P_i = mean_t s_it / sum_j s_jt
        The indicator uses the actual (biased) routing decision, as training code does; the report
        writes top-K of the unbiased s.
        """
        E, K = self.cfg.n_routed_experts, self.cfg.num_experts_per_tok
        n_seq = B if self.cfg.seq_aux else 1
        chosen = torch.zeros_like(scores).scatter_(1, idx, 1.0).view(n_seq, -1, E)
        f = chosen.sum(dim=1) * (E / (K * chosen.shape[1]))  # [n_seq, E], no gradient
        p = (scores / scores.sum(dim=-1, keepdim=True)).view(n_seq, -1, E).mean(dim=1)
        return self.cfg.aux_loss_alpha * (f * p).sum(dim=-1).mean()


# =============================================================================================
# Decoder layer and MTP module
# =============================================================================================


class DecoderLayer(CachedDecoderLayer, nn.Module):
    """Pre-norm block: x += MLA(norm(x)); x += FFN(norm(x)), FFN dense for the first k layers."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_dsa:  # DeepSeek-V3.2: MLA plus a lightning indexer (its module imports this one)
            from seekforge.model.dsa import DSAttention

            self.self_attn: MLAttention = DSAttention(cfg)
        else:
            self.self_attn = MLAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.is_moe = cfg.is_moe_layer(layer_idx)
        self.mlp = MoE(cfg) if self.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                with_aux: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """-> (x, tokens per expert [E] or None, balance loss or None)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return self._ffn(x, with_aux)

    def _ffn(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        h = self.post_attention_layernorm(x)
        if not self.is_moe:
            return x + self.mlp(h), None, None
        y, loads, bal = self.mlp(h, with_aux)
        return x + y, loads, bal


class SharedHead(nn.Module):
    """The MTP module's final norm (``shared_head.norm``); the head matrix is the main lm_head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPLayer(DecoderLayer):
    """MTP module k (eqs. 21-23): h' = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]), then a full
    block. Embedding FIRST, as in DeepSeek's released weights and code (eq. 21 writes the reverse).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.shared_head = SharedHead(cfg)

    def combine(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))


# =============================================================================================
# The model
# =============================================================================================


class DeepseekV3Model(nn.Module):
    """Embeddings, L decoder layers + D MTP layers (``layers[L + k - 1]``), final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        L, D = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            [DecoderLayer(cfg, i) for i in range(L)] + [MTPLayer(cfg, L + k) for k in range(D)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg)


def segment_positions(segment_ids: Tensor) -> Tensor:
    """Positions that restart at 0 at every change of segment id along each row."""
    B, T = segment_ids.shape
    t = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values
    return t - first


def _shift_targets(labels: Tensor, shift: int, segment_ids: Tensor | None) -> Tensor:
    """targets[:, i] = labels[:, i + shift] (IGNORE past the end or across a segment boundary)."""
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, : labels.shape[1] - shift] = labels[:, shift:]
    if segment_ids is not None:
        same = torch.zeros_like(labels, dtype=torch.bool)
        same[:, : labels.shape[1] - shift] = segment_ids[:, shift:] == segment_ids[:, :-shift]
        out = out.masked_fill(~same, IGNORE_INDEX)
    return out


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean CE of logits [..., V] against targets [...] over targets != IGNORE_INDEX, in fp32 or wider
    (0, not NaN, when every target is ignored)."""
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    acc = torch.promote_types(logits.dtype, torch.float32)
    total = F.cross_entropy(logits.to(acc), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


class DeepseekV3ForCausalLM(CachedInference, nn.Module):
    """DeepSeek-V3 causal LM: ``model`` (embeddings, layers, norm) + untied ``lm_head``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekV3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.cross_entropy: Callable[[Tensor, Tensor], Tensor] = cross_entropy  # kernels swap in a fused one

    # --- bookkeeping ---------------------------------------------------------------------------
    @property
    def main_layers(self) -> list[DecoderLayer]:
        return list(self.model.layers[: self.config.num_hidden_layers])

    @property
    def mtp_layers(self) -> list[MTPLayer]:
        return list(self.model.layers[self.config.num_hidden_layers :])

    @property
    def moe_layers(self) -> list[DecoderLayer]:
        """MoE layers in ``expert_loads`` order: main layers, then MTP layers."""
        return [layer for layer in self.model.layers if layer.is_moe]

    def init_weights(self) -> None:
        """N(0, initializer_range^2) for every matrix (§4.2: 0.006), norms 1, router bias 0."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RoutedExperts):
                nn.init.normal_(module.gate_up_proj, mean=0.0, std=std)
                nn.init.normal_(module.down_proj, mean=0.0, std=std)
            elif isinstance(module, Router):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.e_score_correction_bias)
            elif isinstance(module, (RMSNorm, RotaryEmbedding, nn.LayerNorm)):  # LayerNorm: V3.2's indexer
                module.reset_parameters()

    # --- training / full-sequence forward -----------------------------------------------------
    def forward(self, input_ids: Tensor, labels: Tensor | None = None, *, position_ids: Tensor | None = None,
                segment_ids: Tensor | None = None) -> ModelOutput:
        """Logits for every position; with ``labels`` (aligned with input_ids, shifted inside) the loss.

        ``segment_ids`` [B, T]: packed sequences attend only within equal ids (block-diagonal causal);
        ``position_ids`` then default to restarting at 0 in every segment.
        """
        cfg = self.config
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = (segment_positions(segment_ids) if segment_ids is not None
                            else torch.arange(T, device=input_ids.device).expand(B, T))
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(position_ids, h.dtype)
        mask = None
        if segment_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
            mask = (causal & (segment_ids[:, :, None] == segment_ids[:, None, :]))[:, None]  # [B,1,T,T]
        with_aux = labels is not None and cfg.aux_loss_alpha > 0
        loads: list[Tensor] = []
        bal: list[Tensor] = []
        for layer in self.main_layers:
            h, ld, b = layer(h, cos, sin, mask, with_aux)
            self._collect(ld, b, loads, bal)
        h = self.model.norm(h)
        logits = self.lm_head(h)
        if labels is None:
            return ModelOutput(logits=logits, expert_loads=self._stack_loads(loads))

        main = self.cross_entropy(logits, _shift_targets(labels, 1, segment_ids))
        loss, losses = main, {"main": main.detach()}
        if cfg.num_nextn_predict_layers > 0 and cfg.mtp_loss_weight > 0:
            mtp = self._mtp_loss(h, input_ids, labels, segment_ids, cos, sin, mask, with_aux, loads, bal)
            loss = loss + cfg.mtp_loss_weight * mtp
            losses["mtp"] = mtp.detach()
        if cfg.is_dsa and (indexer := self._indexer_loss()) is not None:  # a V3.2 training stage is on
            loss = loss + indexer
            losses["indexer"] = indexer.detach()
        if bal:
            balance = torch.stack(bal).sum()
            loss = loss + balance
            losses["balance"] = balance.detach()
        return ModelOutput(logits=logits, loss=loss, losses=losses, expert_loads=self._stack_loads(loads))

    def _mtp_loss(self, h: Tensor, input_ids: Tensor, labels: Tensor, segment_ids: Tensor | None, cos: Tensor,
                  sin: Tensor, mask: Tensor | None, with_aux: bool, loads: list, bal: list) -> Tensor:
        """Mean over depths k of CE(predict t_{i+k+1} from h^{k-1}_i and t_{i+k}) (eqs. 21-25).

        Sequences keep their length T (static shapes): tail positions whose inputs/targets fall off the
        row, or cross a segment boundary, are ignored. h^0 is the main output after the final norm
        (what transformers 5 and vLLM feed their MTP drafters; the report does not say).
        """
        per_depth = []
        for k, layer in enumerate(self.mtp_layers, start=1):
            shifted = torch.zeros_like(input_ids)
            shifted[:, : input_ids.shape[1] - k] = input_ids[:, k:]
            x = layer.combine(h, self.model.embed_tokens(shifted))
            h, ld, b = layer(x, cos, sin, mask, with_aux)
            self._collect(ld, b, loads, bal)
            logits = self.lm_head(layer.shared_head.norm(h))
            per_depth.append(self.cross_entropy(logits, _shift_targets(labels, k + 1, segment_ids)))
        return torch.stack(per_depth).mean()

    def _indexer_loss(self) -> Tensor | None:
        """Mean over the layers that ran of the DSA indexer's KL loss (set by a training stage)."""
        from seekforge.model.dsa import mean_indexer_loss

        return mean_indexer_loss(layer.self_attn for layer in self.model.layers)

    @staticmethod
    def _collect(ld: Tensor | None, b: Tensor | None, loads: list, bal: list) -> None:
        if ld is not None:
            loads.append(ld)
        if b is not None:
            bal.append(b)

    def _stack_loads(self, loads: list[Tensor]) -> Tensor:
        """[n_moe_layers, E]; MTP layers that did not run this forward contribute zero rows."""
        n, E = len(self.moe_layers), self.config.n_routed_experts
        device = self.lm_head.weight.device
        if not loads:
            return torch.zeros(n, E, device=device)
        stacked = torch.stack(loads)
        if stacked.shape[0] < n:
            stacked = torch.cat([stacked, stacked.new_zeros(n - stacked.shape[0], E)])
        return stacked

    # --- aux-loss-free balancing ----------------------------------------------------------------
    @torch.no_grad()
    def update_router_bias(self, loads: Tensor) -> None:
        """b_i += gamma * sign(mean(load) - load_i) per MoE layer (§2.1.2).

        Call after each optimizer step with ``expert_loads`` summed over micro-batches and ranks.
        Over-loaded experts get a lower bias, so they are chosen less. Only routers with
        topk_method 'noaux_tc' use the bias; layers whose row is all zero (MTP not run) stay put.
        """
        layers = self.moe_layers
        if loads.shape != (len(layers), self.config.n_routed_experts):
            raise ValueError(f"update_router_bias: loads must have shape [{len(layers)}, "
                             f"{self.config.n_routed_experts}] (n_moe_layers, n_routed_experts), "
                             f"got {list(loads.shape)}")
        gamma = self.config.bias_update_speed
        if gamma == 0 or self.config.topk_method != "noaux_tc":
            return
        for layer, load in zip(layers, loads):
            bias = layer.mlp.gate.e_score_correction_bias
            load = load.to(device=bias.device, dtype=torch.float32)
            bias += gamma * torch.sign(load.mean() - load)

    # --- sizes ------------------------------------------------------------------------------------
    def num_parameters(self, include_mtp: bool = True) -> int:
        skip = set() if include_mtp else {id(p) for m in self.mtp_layers for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


__all__ = ["DeepseekV3ForCausalLM", "ModelOutput", "MLACache", "CacheView", "RMSNorm", "MLAttention", "MoE",
           "Router", "RoutedExperts", "DecoderLayer", "MTPLayer", "segment_positions", "softmax_scale",
           "rope_inv_freq", "cross_entropy"]
