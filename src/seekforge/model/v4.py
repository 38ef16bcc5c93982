"""DeepSeek-V4 in plain single-device PyTorch: hybrid compressed attention, mHC, hash-routed MoE.

Read it next to :mod:`seekforge.model.model` (V3): the basic blocks (RMSNorm, the SwiGLU MLP, the
stacked-expert layout) are shared, and the differences are all here. Top to bottom:

    rope_tail                       RoPE on the trailing d_r channels, pairs kept interleaved
    Compressor, Indexer             pool every m tokens into one gated, normed KV entry; the lightning
                                    indexer scores those entries per query and keeps the top k
    V4Attention                     one shared key = value head (MQA with K = V) over a sliding window,
                                    plus compressed entries: CSA (m = 4, top-k by the indexer) or
                                    HCA (m' = 128, all closed blocks); a learned per-head sink;
                                    grouped low-rank output projection; in a V3.2 training stage
                                    (dense warm-up / sparse) a CSA layer also sets its indexer's KL loss
    HyperConnection, HyperHead      mHC: n residual streams, mixed by a Sinkhorn-projected
                                    doubly-stochastic matrix computed from the streams themselves
    V4Router, V4MoE                 sqrt(softplus) router with the aux-loss-free bias, or a frozen
                                    token -> expert table (hash layers); SwiGLU clipped at swiglu_limit
    V4DecoderLayer, DeepseekV4ForCausalLM

Parameter names equal transformers 5's ``DeepseekV4ForCausalLM`` (``model.layers.0.attn_hc.fn``,
``self_attn.compressor.indexer.q_b_proj.weight`` ...), so a state dict moves between the two as is.
transformers builds no MTP module for V4 and neither does this file. Cached inference (the window
and compressed caches the engine uses) is in :mod:`seekforge.model.v4_cache`, mixed in here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekforge.model.dsa import IndexedAttention, mean_indexer_loss
from seekforge.model.model import IGNORE_INDEX, MLP, RMSNorm, RoutedExperts, cross_entropy, rope_inv_freq
from seekforge.model.outputs import ModelOutput
from seekforge.model.v4_cache import V4CachedInference
from seekforge.model.v4_config import CSA, HCA, SLIDING, V4_QUERY_BLOCK, V4Config


def unweighted_rms_norm(x: Tensor, eps: float) -> Tensor:
    """x / rms(x) with no learned scale (the per-head query norm and the mHC input norm)."""
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


# =============================================================================================
# Rotary embedding: two bases, applied to the trailing slice of each head
# =============================================================================================


class _RopeSpec:
    """The four fields :func:`seekforge.model.model.rope_inv_freq` reads, for V4's compressed layers."""

    def __init__(self, cfg: V4Config) -> None:
        self.qk_rope_head_dim, self.rope_theta = cfg.qk_rope_head_dim, cfg.compress_rope_theta
        self.rope_scaling, self.max_position_embeddings = cfg.rope_scaling, cfg.max_position_embeddings


def _plain_inv_freq(theta: float, d_r: int) -> Tensor:
    # fp32 throughout, as transformers computes it, so the two agree bit for bit.
    return 1.0 / theta ** (torch.arange(0, d_r, 2, dtype=torch.float32, device="cpu") / d_r)


class V4Rotary(nn.Module):
    """cos/sin [..., d_r/2] for "main" (sliding layers, base rope_theta) and "compress" (CSA/HCA layers
    and their compressors, base compress_rope_theta, YaRN-stretched when rope_scaling says so).
    V4 does not multiply cos/sin by YaRN's attention factor."""

    def __init__(self, cfg: V4Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("main_inv_freq", torch.empty(cfg.qk_rope_head_dim // 2), persistent=False)
        self.register_buffer("compress_inv_freq", torch.empty(cfg.qk_rope_head_dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg = self.cfg
        main = _plain_inv_freq(cfg.rope_theta, cfg.qk_rope_head_dim)
        if cfg.rope_scaling:
            compress, _ = rope_inv_freq(_RopeSpec(cfg))
        else:
            compress = _plain_inv_freq(cfg.compress_rope_theta, cfg.qk_rope_head_dim)
        device = self.main_inv_freq.device
        if device.type != "meta":
            self.main_inv_freq, self.compress_inv_freq = main.to(device), compress.to(device)

    def forward(self, positions: Tensor, kind: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        inv_freq = self.main_inv_freq if kind == "main" else self.compress_inv_freq
        angles = positions.float()[..., None] * inv_freq.float()
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rope_tail(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the interleaved pairs (x_2j, x_2j+1) of the LAST d_r channels of x by p * theta_j.

    The layout is kept (unlike V3, whose rope slice may be permuted freely): in V4 the roped key is
    also the value, and the attention output's rope slice is rotated back with -sin afterwards.
    ``cos``/``sin`` [B, T, d_r/2] broadcast over a head axis when x is [B, T, H, c].
    """
    d_r = 2 * cos.shape[-1]
    if x.dim() == cos.dim() + 1:
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    keep, tail = x[..., :-d_r], x[..., -d_r:].float()
    even, odd = tail[..., 0::2], tail[..., 1::2]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
    return torch.cat([keep, rotated.to(x.dtype)], dim=-1)


# =============================================================================================
# Compressed KV and the lightning indexer (V4 report §2.3.1-2.3.2)
# =============================================================================================


class Compressor(nn.Module):
    """One KV entry per block of m tokens: C_w = RMSNorm(sum_j softmax_j(Z_j + B_j) * C_j).

    C = kv_proj(h), Z = gate_proj(h), B a learned bias per position within the block. With
    ``overlap`` (CSA) each token also emits a second series that joins the NEXT block's pool, so
    entry w pools 2m slots (block w-1's first series and block w's second); entry 0 has no
    predecessor (its empty slots get weight 0). Entry w is roped at position w * m.
    Only closed blocks are compressed: T // m entries for T tokens.
    """

    def __init__(self, cfg: V4Config, width: int, rate: int, overlap: bool) -> None:
        super().__init__()
        series = 2 if overlap else 1
        self.width, self.rate, self.overlap = width, rate, overlap
        self.kv_proj = nn.Linear(cfg.hidden_size, series * width, bias=False)
        self.gate_proj = nn.Linear(cfg.hidden_size, series * width, bias=False)
        self.position_bias = nn.Parameter(torch.empty(rate, series * width))
        self.kv_norm = RMSNorm(width, cfg.rms_norm_eps)

    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token inputs of the pool: C = kv_proj(h) and Z + B = gate_proj(h) + bias[position mod m]."""
        return self.kv_proj(x), self.gate_proj(x) + self.position_bias[positions % self.rate]

    def pool(self, kv: Tensor, gate: Tensor, block_ids: Tensor, rope: V4Rotary) -> Tensor:
        """Consecutive whole blocks kv / gate [B, n, m, series * c] -> entries [B, n, c], entry i
        roped at position block_ids[:, i] * m. With overlap, block i also pools block i-1's first
        series (nothing for the first block given: the caller passes the predecessor when it exists)."""
        c = self.width
        if self.overlap:
            prev_kv = F.pad(kv[:, :-1, :, :c], (0, 0, 0, 0, 1, 0))  # block i-1's first series; none for i=0
            prev_gate = F.pad(gate[:, :-1, :, :c], (0, 0, 0, 0, 1, 0), value=float("-inf"))
            kv = torch.cat([prev_kv, kv[..., c:]], dim=2)  # [B, n, 2m, c]
            gate = torch.cat([prev_gate, gate[..., c:]], dim=2)
        pooled = (kv * gate.softmax(dim=2, dtype=torch.float32).to(kv.dtype)).sum(dim=2)
        pooled = self.kv_norm(pooled)
        cos, sin = rope(block_ids * self.rate, "compress", pooled.dtype)
        return rope_tail(pooled, cos, sin)

    def compress(self, x: Tensor, rope: V4Rotary) -> Tensor:
        """x [B, T, d] -> entries [B, T // m, width] (roped)."""
        B, T, _ = x.shape
        m, n = self.rate, T // self.rate
        if n == 0:
            return x.new_zeros(B, 0, self.width)
        kv, gate = self.project(x[:, : n * m], torch.arange(n * m, device=x.device))
        block_ids = torch.arange(n, device=x.device).expand(B, n)
        return self.pool(kv.view(B, n, m, -1), gate.view(B, n, m, -1), block_ids, rope)


def closed_blocks(positions: Tensor, rate: int) -> Tensor:
    """How many compressed entries a query at each position may see: blocks that end at or before it."""
    return (positions + 1) // rate


class IndexScorer(nn.Module):
    """I_{t,s} = sum_h w_{t,h} * ReLU(q_{t,h} . k_s) (V3.2 / V4 lightning indexer), w from the token."""

    def __init__(self, cfg: V4Config) -> None:
        super().__init__()
        self.weights_proj = nn.Linear(cfg.hidden_size, cfg.index_n_heads, bias=False)
        self.q_scale, self.w_scale = cfg.index_head_dim**-0.5, cfg.index_n_heads**-0.5

    def forward(self, q: Tensor, keys: Tensor, x: Tensor) -> Tensor:
        """q [B, T, h, c_I], keys [B, n, c_I], x [B, T, d] -> scores [B, T, n] (fp32)."""
        dots = torch.einsum("bthc,bnc->bthn", q.float(), keys.float())
        head_weights = self.weights_proj(x).float() * self.w_scale
        return (F.relu(dots) * self.q_scale * head_weights[..., None]).sum(dim=2)


class Indexer(Compressor):
    """The lightning indexer of a CSA layer: its own small overlapping compressor (width c_I) gives
    the keys; queries come from the attention's query latent; top-k entries per query are kept."""

    def __init__(self, cfg: V4Config) -> None:
        super().__init__(cfg, cfg.index_head_dim, cfg.compress_rates[CSA], overlap=True)
        self.n_heads, self.topk = cfg.index_n_heads, cfg.index_topk
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim, bias=False)
        self.scorer = IndexScorer(cfg)

    def select(self, x: Tensor, q_latent: Tensor, positions: Tensor, rope: V4Rotary) -> Tensor:
        """-> bool [B, T, n]: the compressed entries each query attends to (at most index_topk,
        never a block that is still open at the query's position)."""
        return self.choose(x, q_latent, positions, self.compress(x, rope), rope)

    SCORE_BLOCK_ELEMENTS = 2**26  # per-head dot products scored at once (256 MiB in fp32)

    def choose(self, x: Tensor, q_latent: Tensor, positions: Tensor, keys: Tensor, rope: V4Rotary) -> Tensor:
        """The chosen entries as a bool mask [B, T, n] over ``keys`` [B, n, c_I]. Queries are scored
        in blocks: their per-head dot products are [B, T, heads, n], which at 1M context (n = 256k
        entries, 64 heads) is gigabytes for a few hundred queries."""
        B, T, _ = x.shape
        n = keys.shape[1]
        chosen = torch.zeros(B, T, n, dtype=torch.bool, device=x.device)
        step = max(1, self.SCORE_BLOCK_ELEMENTS // max(1, B * self.n_heads * n))
        for start in range(0, T, step):
            end = min(T, start + step)
            top, valid = self.top_entries(x[:, start:end], q_latent[:, start:end], positions[:, start:end],
                                          keys, rope)
            chosen[:, start:end].scatter_(-1, top, valid)
        return chosen

    def top_entries(self, x: Tensor, q_latent: Tensor, positions: Tensor, keys: Tensor,
                    rope: V4Rotary) -> tuple[Tensor, Tensor]:
        """Indices [B, T, k] of the min(index_topk, n) best-scored entries of ``keys`` [B, n, c_I]
        (the cached ones when decoding) and whether each is a closed block (bool, same shape)."""
        B, T, _ = x.shape
        n = keys.shape[1]
        if n == 0:
            empty = torch.zeros(B, T, 0, dtype=torch.long, device=x.device)
            return empty, empty.bool()
        return self.top_of(self.scores(x, q_latent, positions, keys, rope), positions)

    def scores(self, x: Tensor, q_latent: Tensor, positions: Tensor, keys: Tensor, rope: V4Rotary) -> Tensor:
        """I [B, T, n] (fp32) of the queries against ``keys`` [B, n, c_I]; -inf on blocks still open."""
        B, T, _ = x.shape
        q = self.q_b_proj(q_latent).view(B, T, self.n_heads, self.width)
        cos, sin = rope(positions, "compress", q.dtype)
        scores = self.scorer(rope_tail(q, cos, sin), keys, x)
        closed = closed_blocks(positions, self.rate)[..., None]
        return scores.masked_fill(torch.arange(keys.shape[1], device=x.device) >= closed, float("-inf"))

    def top_of(self, scores: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`top_entries` from the scores [B, T, n]."""
        closed = closed_blocks(positions, self.rate)[..., None]
        # Ties are common (ReLU scores of 0): break them by block order, so a query picks the same
        # blocks whether it is scored inside a full sequence or alone against the cache.
        k = min(self.topk, scores.shape[-1])
        top = scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]
        return top, top < closed


class CSACompressor(Compressor):
    """Compressed sparse attention's entries (overlapping blocks of m = 4) plus their indexer."""

    def __init__(self, cfg: V4Config) -> None:
        super().__init__(cfg, cfg.head_dim, cfg.compress_rates[CSA], overlap=True)
        self.indexer = Indexer(cfg)


# =============================================================================================
# Attention
# =============================================================================================


class V4Attention(IndexedAttention, nn.Module):
    """Multi-query attention whose single key head is also the value (K = V), over
    [the last n_win tokens | compressed entries], with a learned sink logit per head.
    A CSA layer's indexer is trained by V3.2's stages (:func:`seekforge.model.dsa.set_dsa_stage`).

        q  = RoPE(norm_h(W_QB RMSNorm(W_QA h)))            per head, c wide; RoPE on the last d_r
        kv = RoPE(RMSNorm(W_KV h))                         one head, c wide: key and value
        o  = W_OB [W_OA,g (RoPE^-1(attn))_g for each group g of heads]
    """

    QUERY_BLOCK = V4_QUERY_BLOCK  # queries per block of the full-sequence forward (at least the window)

    def __init__(self, cfg: V4Config, layer_idx: int) -> None:
        super().__init__()
        self.cfg, self.layer_type = cfg, cfg.layer_types[layer_idx]
        self.rope_kind = "main" if self.layer_type == SLIDING else "compress"
        H, c, d = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size
        self.n_heads, self.head_dim, self.window = H, c, cfg.sliding_window
        self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=False)
        self.q_a_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * c, bias=False)
        self.kv_proj = nn.Linear(d, c, bias=False)
        self.kv_norm = RMSNorm(c, cfg.rms_norm_eps)
        # Grouped output projection: each of g groups of heads (H*c/g wide) -> o_lora_rank, then mix.
        self.o_a_proj = nn.Linear(H * c // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank, bias=False)
        self.o_b_proj = nn.Linear(cfg.o_groups * cfg.o_lora_rank, d, bias=False)
        self.sinks = nn.Parameter(torch.empty(H))
        if self.layer_type == CSA:
            self.compressor: Compressor | None = CSACompressor(cfg)
        elif self.layer_type == HCA:
            self.compressor = Compressor(cfg, c, cfg.compress_rates[HCA], overlap=False)
        else:
            self.compressor = None

    def forward(self, x: Tensor, positions: Tensor, rope: V4Rotary) -> Tensor:
        B, T, _ = x.shape
        self.indexer_loss = self.indexer_recall = None
        q, q_latent, kv, cos, sin = self.project(x, positions, rope)
        # Each query sees its own sliding window and, in CSA / HCA layers, compressed entries of
        # blocks already closed (``seen`` [B, T, n]).
        entries = seen = index_scores = None
        if self.compressor is not None:
            entries = self.compressor.compress(x, rope)
            if self.stage is not None and isinstance(self.compressor, CSACompressor):
                index_scores, seen = self._staged_selection(x, q_latent, positions, rope)
            elif isinstance(self.compressor, CSACompressor):
                seen = self.compressor.indexer.select(x, q_latent, positions, rope)
            else:
                open_until = closed_blocks(positions, self.compressor.rate)[..., None]
                seen = torch.arange(entries.shape[1], device=x.device) < open_until
        # Queries run in blocks, each against only the keys its window can reach, so the scores
        # are [Q, Q + n_win + n] per block instead of [T, T + n]: memory linear in T for a fixed
        # window. Masked keys contributed exp(-inf) = 0, so leaving them out changes nothing.
        block = max(self.QUERY_BLOCK, self.window)
        attended, masses = [], []
        for start in range(0, T, block):
            end = min(T, start + block)
            first = max(0, start - self.window + 1)
            tq = torch.arange(start, end, device=x.device)
            tk = torch.arange(first, end, device=x.device)
            allowed = (tk[None, :] <= tq[:, None]) & (tk[None, :] > tq[:, None] - self.window)
            allowed = allowed.expand(B, -1, -1)
            keys = kv[:, first:end]
            if entries is not None:
                keys = torch.cat([keys, entries], dim=1)
                allowed = torch.cat([allowed, seen[:, start:end]], dim=-1)
            probs = self.attention_probs(q[:, start:end], keys, allowed)
            if index_scores is not None:
                masses.append(probs.detach()[..., end - first:-1].sum(dim=1))
            attended.append(self.mix(probs, keys))
        if index_scores is not None:
            # The indexer's target: the attention's mass on each compressed entry, summed over the
            # heads and L1-normalised (V3.2 §2.1.1), with no gradient back into the attention.
            mass = torch.cat(masses, dim=1)
            target = mass / mass.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(mass.dtype).tiny)
            self.record_indexer_loss(index_scores, target, seen, self.cfg.index_topk)
        return self.output(torch.cat(attended, dim=1), cos, sin)

    def trainable_indexer(self) -> Indexer | None:
        return self.compressor.indexer if isinstance(self.compressor, CSACompressor) else None

    def _staged_selection(self, x: Tensor, q_latent: Tensor, positions: Tensor,
                          rope: V4Rotary) -> tuple[Tensor, Tensor]:
        """A CSA layer in a V3.2 training stage -> (indexer scores [B, T, n], entries seen [B, T, n]).

        The indexer works on detached inputs, so its KL trains only the indexer and the LM loss never
        reaches it. dense_warmup: every closed block is seen; sparse: the top k, as without a stage.
        """
        indexer = self.compressor.indexer
        x, q_latent = x.detach(), q_latent.detach()
        keys = indexer.compress(x, rope)
        scores = indexer.scores(x, q_latent, positions, keys, rope)
        if self.stage == "dense_warmup":
            closed = closed_blocks(positions, indexer.rate)[..., None]
            return scores, torch.arange(keys.shape[1], device=x.device) < closed
        top, valid = indexer.top_of(scores, positions)
        return scores, torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, valid)

    def project(self, x: Tensor, positions: Tensor,
                rope: V4Rotary) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> q [B, T, H, c] (roped), the query latent, kv [B, T, c] (roped), and the cos / sin used."""
        B, T, _ = x.shape
        cos, sin = rope(positions, self.rope_kind, x.dtype)
        q_latent = self.q_a_norm(self.q_a_proj(x))
        q = unweighted_rms_norm(self.q_b_proj(q_latent).view(B, T, self.n_heads, self.head_dim),
                                self.cfg.rms_norm_eps)
        kv = rope_tail(self.kv_norm(self.kv_proj(x)), cos, sin)
        return rope_tail(q, cos, sin), q_latent, kv, cos, sin

    def output(self, attended: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """[B, T, H, c] -> [B, T, d]: undo the values' RoPE, then the grouped output projection."""
        B, T = attended.shape[:2]
        out = rope_tail(attended, cos, -sin)  # rotate back to the query's frame
        groups = out.reshape(B, T, self.cfg.o_groups, -1)
        w = self.o_a_proj.weight.view(self.cfg.o_groups, self.cfg.o_lora_rank, -1)
        return self.o_b_proj(torch.einsum("btgi,goi->btgo", groups, w).flatten(2))

    def attend(self, q: Tensor, kv: Tensor, allowed: Tensor) -> Tensor:
        """q [B, T, H, c] over kv [B, S, c] where ``allowed`` [B, T, S] -> [B, T, H, c]."""
        return self.mix(self.attention_probs(q, kv, allowed), kv)

    def attention_probs(self, q: Tensor, kv: Tensor, allowed: Tensor) -> Tensor:
        """softmax over [scores | sink_h]: a head may attend to "nothing" (the gpt-oss attention
        sink), whose share is the last column. -> [B, H, T, S + 1] fp32."""
        scores = torch.einsum("bthc,bsc->bhts", q, kv) * self.head_dim**-0.5
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        sink = self.sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:3], 1)
        return torch.cat([scores, sink], dim=-1).softmax(dim=-1, dtype=torch.float32)

    @staticmethod
    def mix(probs: Tensor, kv: Tensor) -> Tensor:
        """[B, H, T, S + 1] probabilities (sink last) x kv [B, S, c] -> [B, T, H, c]. The sink takes
        no value: a zero row stands for it, so the whole (contiguous) softmax output feeds the
        product and autograd keeps no second, sliced copy of it."""
        B, H, T, S1 = probs.shape
        values = torch.cat([kv, kv.new_zeros(B, 1, kv.shape[-1])], dim=1)
        # One [H·T, S + 1] x [S + 1, c] product per sequence: the probabilities are used as laid out
        # and the single key = value head is shared, so nothing is copied per head (an einsum here
        # copies the probabilities, a broadcast matmul the values, and autograd keeps the copy).
        out = torch.bmm(probs.to(kv.dtype).view(B, H * T, S1), values)
        return out.view(B, H, T, -1).transpose(1, 2)


# =============================================================================================
# Manifold-constrained hyper-connections (mHC)
# =============================================================================================


class HyperConnection(nn.Module):
    """The residual is n streams [B, T, n, d]. Around a block F:

        pre, post, comb = functions of the normed, flattened streams (one linear map, then
                          sigmoid / 2*sigmoid / softmax + Sinkhorn)
        y               = F(sum_j pre_j * stream_j)
        stream'_k       = post_k * y + sum_j comb_jk * stream_j
    comb is projected onto (nearly) doubly-stochastic matrices by Sinkhorn-Knopp, so mixing the
    streams neither amplifies nor loses the residual signal with depth (mHC, Xie et al., 2026).
    """

    def __init__(self, cfg: V4Config) -> None:
        super().__init__()
        n = cfg.hc_mult
        self.n, self.iters, self.eps, self.norm_eps = n, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.rms_norm_eps
        self.fn = nn.Parameter(torch.empty((2 + n) * n, n * cfg.hidden_size))
        self.base = nn.Parameter(torch.empty((2 + n) * n))
        self.scale = nn.Parameter(torch.empty(3))

    def forward(self, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """streams [B, T, n, d] -> (post [B, T, n], comb [B, T, n, n], block input [B, T, d])."""
        n = self.n
        flat = unweighted_rms_norm(streams.flatten(2).float(), self.norm_eps)
        pre, post, comb = F.linear(flat, self.fn.float()).split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.float().split([n, n, n * n])
        s_pre, s_post, s_comb = self.scale.float()
        pre = torch.sigmoid(pre * s_pre + pre_b) + self.eps
        post = 2 * torch.sigmoid(post * s_post + post_b)
        comb = (comb * s_comb + comb_b).view(*comb.shape[:-1], n, n).softmax(dim=-1) + self.eps
        comb = comb / (comb.sum(dim=-2, keepdim=True) + self.eps)  # Sinkhorn: columns, then
        for _ in range(self.iters - 1):  # alternate rows and columns
            comb = comb / (comb.sum(dim=-1, keepdim=True) + self.eps)
            comb = comb / (comb.sum(dim=-2, keepdim=True) + self.eps)
        block_input = (pre[..., None] * streams).sum(dim=2).to(streams.dtype)
        return post, comb, block_input

    @staticmethod
    def merge(streams: Tensor, block_out: Tensor, post: Tensor, comb: Tensor) -> Tensor:
        """stream'_k = post_k * y + sum_j comb_jk * stream_j."""
        dtype = streams.dtype
        mixed = comb.to(dtype).transpose(-1, -2) @ streams
        return post.to(dtype)[..., None] * block_out[..., None, :] + mixed


class HyperHead(nn.Module):
    """Collapse the n streams into one before the final norm: sum_j pre_j * stream_j."""

    def __init__(self, cfg: V4Config) -> None:
        super().__init__()
        n = cfg.hc_mult
        self.eps, self.norm_eps = cfg.hc_eps, cfg.rms_norm_eps
        self.hc_fn = nn.Parameter(torch.empty(n, n * cfg.hidden_size))
        self.hc_base = nn.Parameter(torch.empty(n))
        self.hc_scale = nn.Parameter(torch.empty(1))

    def forward(self, streams: Tensor) -> Tensor:
        flat = unweighted_rms_norm(streams.flatten(2).float(), self.norm_eps)
        pre = torch.sigmoid(F.linear(flat, self.hc_fn.float()) * self.hc_scale.float() + self.hc_base.float())
        return ((pre + self.eps)[..., None] * streams).sum(dim=2).to(streams.dtype)


# =============================================================================================
# MoE: learned or hash routing, clipped SwiGLU
# =============================================================================================


def _clipped_swiglu(gate: Tensor, up: Tensor, limit: float) -> Tensor:
    """silu(min(gate, limit)) * clamp(up, -limit, limit): V4 clips the pre-activations."""
    return F.silu(gate.clamp(max=limit)) * up.clamp(-limit, limit)


class ClippedMLP(MLP):
    """The shared expert: V3's SwiGLU MLP with V4's clipping."""

    def __init__(self, cfg: V4Config) -> None:
        super().__init__(cfg.hidden_size, cfg.moe_intermediate_size)
        self.limit = cfg.swiglu_limit

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(_clipped_swiglu(self.gate_proj(x), self.up_proj(x), self.limit))


class ClippedExperts(RoutedExperts):
    """V3's stacked experts ([E, 2I, d] / [E, d, I]) with V4's clipped SwiGLU; a loop over experts."""

    def __init__(self, cfg: V4Config) -> None:
        super().__init__(cfg)  # reads n_routed_experts, hidden_size, moe_intermediate_size
        self.limit = cfg.swiglu_limit

    def forward(self, x: Tensor, idx: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        E = self.gate_up_proj.shape[0]
        y = torch.zeros_like(x)
        # Only the experts some token chose (a decoded token uses K of E); one host read per layer.
        for e in idx.unique().tolist():
            token, choice = torch.where(idx == e)
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            out = F.linear(_clipped_swiglu(gate, up, self.limit), self.down_proj[e])
            y = y.index_add(0, token, (weights[token, choice, None] * out).to(y.dtype))
        return y, torch.bincount(idx.reshape(-1), minlength=E)


class V4Router(nn.Module):
    """Gate weights g = normalise(score(u . e_i) over the K chosen) * routed_scaling_factor.

    Learned layers choose the top K of score + b (b = e_score_correction_bias, V3's aux-loss-free
    balancing); hash layers look the K experts up in ``tid2eid[token id]``, a table fixed before
    training (DeepSeek-V4 report §2.1), so only the weights are learned there.
    """

    def __init__(self, cfg: V4Config, is_hash: bool) -> None:
        super().__init__()
        self.cfg, self.is_hash, self.top_k = cfg, is_hash, cfg.num_experts_per_tok
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        if is_hash:
            table = torch.zeros(cfg.vocab_size, cfg.num_experts_per_tok, dtype=torch.long)
            self.register_buffer("tid2eid", table)
        else:
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))

    def score(self, logits: Tensor) -> Tensor:
        kind = self.cfg.scoring_func
        if kind == "sqrtsoftplus":
            return F.softplus(logits).sqrt()
        return logits.sigmoid() if kind == "sigmoid" else logits.softmax(dim=-1)

    def forward(self, x: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, d], token_ids [N] -> (expert ids [N, K], gate weights [N, K] fp32)."""
        scores = self.score(F.linear(x.float(), self.weight.float()))
        if self.is_hash:
            idx = self.tid2eid[token_ids]
        else:
            biased = scores + self.e_score_correction_bias.float()
            idx = biased.topk(self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(-1, idx)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return idx, weights * self.cfg.routed_scaling_factor


class V4MoE(nn.Module):
    def __init__(self, cfg: V4Config, layer_idx: int) -> None:
        super().__init__()
        self.is_hash = cfg.mlp_layer_types[layer_idx] == "hash_moe"
        self.gate = V4Router(cfg, self.is_hash)
        self.experts = ClippedExperts(cfg)
        self.shared_experts = ClippedMLP(cfg)

    def forward(self, x: Tensor, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, d] -> (y [B, T, d], tokens per expert [E] float)."""
        B, T, d = x.shape
        flat = x.reshape(B * T, d)
        idx, weights = self.gate(flat, input_ids.reshape(-1))
        routed, counts = self.experts(flat, idx, weights)
        return (routed + self.shared_experts(flat)).view(B, T, d), counts.detach().float()


# =============================================================================================
# Block and model
# =============================================================================================


class V4DecoderLayer(nn.Module):
    """streams -> mHC(attention) -> mHC(MoE); the block's own norms act on the collapsed input."""

    def __init__(self, cfg: V4Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_hc, self.ffn_hc = HyperConnection(cfg), HyperConnection(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = V4Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = V4MoE(cfg, layer_idx)

    def forward(self, streams: Tensor, input_ids: Tensor, positions: Tensor, rope: V4Rotary,
                attention: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``attention``: what to run on the normed block input instead of the full-sequence
        attention (the cached paths of :mod:`seekforge.model.v4_cache` pass theirs)."""
        post, comb, h = self.attn_hc(streams)
        h = self.input_layernorm(h)
        attn = attention(h) if attention is not None else self.self_attn(h, positions, rope)
        streams = HyperConnection.merge(streams, attn, post, comb)
        post, comb, h = self.ffn_hc(streams)
        y, loads = self.mlp(self.post_attention_layernorm(h), input_ids)
        return HyperConnection.merge(streams, y, post, comb), loads


class DeepseekV4Model(nn.Module):
    def __init__(self, cfg: V4Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(V4DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.hc_head = HyperHead(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = V4Rotary(cfg)


class DeepseekV4ForCausalLM(V4CachedInference, nn.Module):
    """DeepSeek-V4 causal LM, with the training interface of the V3 model (``loss``, ``expert_loads``,
    ``update_router_bias``) so the same trainer drives it."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekV4Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def moe_layers(self) -> list[V4DecoderLayer]:
        """Learned-router layers, in ``expert_loads`` order (hash layers have nothing to balance)."""
        return [layer for layer in self.model.layers if not layer.mlp.is_hash]

    def init_weights(self) -> None:
        """N(0, initializer_range^2) matrices; norms and mHC scales 1; biases, sinks and the router
        bias 0; the hash table a fixed pseudo-random token -> experts map (seeded, reproducible)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
            elif isinstance(module, RoutedExperts):
                nn.init.normal_(module.gate_up_proj, std=std)
                nn.init.normal_(module.down_proj, std=std)
            elif isinstance(module, V4Router):
                nn.init.normal_(module.weight, std=std)
                if module.is_hash:
                    module.tid2eid.copy_(hash_table(self.config, module.tid2eid.device))
                else:
                    nn.init.zeros_(module.e_score_correction_bias)
            elif isinstance(module, V4Attention):
                nn.init.zeros_(module.sinks)
            elif isinstance(module, Compressor):
                nn.init.zeros_(module.position_bias)
            elif isinstance(module, HyperConnection):
                nn.init.normal_(module.fn, std=std)
                nn.init.zeros_(module.base)
                nn.init.ones_(module.scale)
            elif isinstance(module, HyperHead):
                nn.init.normal_(module.hc_fn, std=std)
                nn.init.zeros_(module.hc_base)
                nn.init.ones_(module.hc_scale)
            elif isinstance(module, V4Rotary):
                module.reset_parameters()

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, *,
                position_ids: Tensor | None = None) -> ModelOutput:
        B, T = input_ids.shape
        positions = position_ids
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        hidden, expert_loads = self.body(input_ids, positions)
        logits = self.lm_head(hidden)
        if labels is None:
            return ModelOutput(logits=logits, expert_loads=expert_loads)
        targets = torch.full_like(labels, IGNORE_INDEX)
        targets[:, :-1] = labels[:, 1:]
        loss = cross_entropy(logits, targets)
        losses = {"main": loss.detach()}
        indexer = mean_indexer_loss(layer.self_attn for layer in self.model.layers)
        if indexer is not None:  # a V3.2 training stage is on (seekforge.model.dsa.set_dsa_stage)
            loss = loss + indexer
            losses["indexer"] = indexer.detach()
        return ModelOutput(logits=logits, loss=loss, losses=losses, expert_loads=expert_loads)

    def body(self, input_ids: Tensor, positions: Tensor,
             attention: Callable[[int], Callable[[Tensor], Tensor]] | None = None) -> tuple[Tensor, Tensor]:
        """Embeddings -> n streams -> layers -> collapse -> final norm: (hidden [B, T, d], expert loads).
        ``attention(i)``, if given, is layer i's attention on its normed input (cached inference)."""
        B, T = input_ids.shape
        h = self.model.embed_tokens(input_ids)
        streams = h[:, :, None].expand(B, T, self.config.hc_mult, h.shape[-1]).contiguous()
        loads = []
        for i, layer in enumerate(self.model.layers):
            attend = attention(i) if attention is not None else None
            streams, ld = layer(streams, input_ids, positions, self.model.rotary_emb, attend)
            if not layer.mlp.is_hash:
                loads.append(ld)
        hidden = self.model.norm(self.model.hc_head(streams))
        expert_loads = torch.stack(loads) if loads else hidden.new_zeros(0, self.config.n_routed_experts)
        return hidden, expert_loads

    @torch.no_grad()
    def update_router_bias(self, loads: Tensor) -> None:
        """b_i += gamma * sign(mean(load) - load_i) on the learned-router layers (V3 §2.1.2)."""
        layers = self.moe_layers
        if loads.shape != (len(layers), self.config.n_routed_experts):
            raise ValueError(f"update_router_bias: loads must have shape [{len(layers)}, "
                             f"{self.config.n_routed_experts}], got {list(loads.shape)}")
        for layer, load in zip(layers, loads):
            bias = layer.mlp.gate.e_score_correction_bias
            load = load.to(device=bias.device, dtype=torch.float32)
            bias += self.config.bias_update_speed * torch.sign(load.mean() - load)

    def num_parameters(self, include_mtp: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())


def hash_table(cfg: V4Config, device: torch.device | str = "cpu") -> Tensor:
    """A fixed token -> K distinct experts table [vocab, K] for the hash layers (seeded, so every
    run and every rank builds the same one). DeepSeek ships its table in the checkpoint; a model
    trained here keeps the one it was initialised with (it is saved as ``tid2eid``)."""
    gen = torch.Generator().manual_seed(0x5EEC)
    keys = torch.rand(cfg.vocab_size, cfg.n_routed_experts, generator=gen)
    return keys.topk(cfg.num_experts_per_tok, dim=-1).indices.to(device)


def build_v4(cfg: V4Config, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
             init: bool = True) -> DeepseekV4ForCausalLM:
    """Construct on the meta device, then materialise on ``device`` (``"meta"``: shapes only)."""
    from seekforge.model.loading import materialise

    with torch.device("meta"):
        model = DeepseekV4ForCausalLM(cfg)
    return materialise(model, device, dtype, init)

