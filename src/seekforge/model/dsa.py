"""DeepSeek Sparse Attention (DSA), the one change DeepSeek-V3.2 (arXiv:2512.02556, §2.1) makes to V3.

Each MLA layer gets a *lightning indexer*: a few small heads that score every earlier token s for the
query token t,

    I_{t,s} = sum_j w_{t,j} * ReLU(q_{t,j} . k_s)                                    (V3.2 eq. 1)

with per-head queries q_{t,j} = W_q^I c_q (read from MLA's query latent c_q), ONE key per token
k_s = LayerNorm(W_k^I h_s) shared by the heads, and per-head weights w_{t,j} = W_w h_t. The first d_r
dims of q and k get RoPE in the half-split (non-interleaved) layout. Only the ``index_topk`` tokens with
the highest I_{t,s} enter the query's attention; MLA itself is unchanged. Parameter names are those of
the Hugging Face ``deepseek_v32`` state dict (``self_attn.indexer.wq_b`` ...). DeepSeek's inference code
also rotates q and k by a Hadamard matrix and scores in fp8; the rotation preserves dot products and fp8
is a precision shortcut, so neither is reproduced here (transformers skips both too).

    Indexer            the projections, keys, queries and scores I [B, T, S]
    top_k_tokens       the k best-scored keys per query, ties broken by position
    topk_keep          which (query, key) pairs attention may use: visible and among the top k
    indexer_kl         the indexer's training loss, KL(attention distribution || softmax(I)) over the
                       kept keys; topk_recall how much of the attention's top-k mass the indexer finds
    IndexedAttention   what every layer with a trainable indexer shares with the stages (DSAttention
                       here, DeepSeek-V4's CSA attention in seekforge.model.v4)
    DSAttention        MLAttention + indexer: training / prefill (SDPA under the top-k mask, or over
                       the cache in chunks for long prompts) and the absorbed decode over the k
                       selected cached latents (the engine's path)
    set_dsa_stage      switch the model between V3.2's training stages (§2.1.1):
                         "dense_warmup"  dense attention; the indexer learns the attention distribution
                                         (KL over all visible tokens), the rest of the model frozen
                         "sparse"        top-k attention; the indexer's KL only over the selected tokens,
                                         its inputs detached so the LM loss never reaches it
                         None            inference / plain training: top-k attention, no indexer loss

When every query can see at most ``index_topk`` tokens (short sequences) the selection keeps them all
and the layer is dense MLA exactly; that case runs MLA's own code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekforge.model.cache import CacheView, cached_rows, write_cache
from seekforge.model.config import ModelConfig
from seekforge.model.model import MLAttention

STAGES = ("dense_warmup", "sparse")

# Queries scored per chunk when attending over a long cache: bounds the [B, chunk, H_I, S] index scores
# and the [B, chunk, k, d_c] gathered latents to tens of MB.
_CHUNK_ELEMENTS = 2**24


def rope_half_split(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on the first d_r dims of ``x`` [B, T, ..., D] in the half-split layout (pairs (i, i + d_r/2)),
    the rest passed through. cos/sin: [B, T, d_r/2] (the model's rotary embedding)."""
    half = cos.shape[-1]
    while cos.dim() < x.dim():
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class IndexerQuery(NamedTuple):
    """The indexer's side of the query tokens: per-head queries [B, T, H_I, d_I] and weights [B, T, H_I]."""

    q: Tensor
    weights: Tensor


class Indexer(nn.Module):
    """The lightning indexer of one layer (HF module name ``self_attn.indexer``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.index_n_heads, cfg.index_head_dim
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False)
        self.scale = self.head_dim**-0.5

    def keys(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """k_s for the tokens of ``x`` [B, T, d]: [B, T, d_I], what the indexer cache stores."""
        return rope_half_split(self.k_norm(self.wk(x)), cos, sin)

    def forward(self, x: Tensor, q_latent: Tensor, cos: Tensor, sin: Tensor) -> tuple[IndexerQuery, Tensor]:
        """Queries and keys of the tokens of ``x`` (one RoPE call: the key rides as one more head)."""
        B, T, _ = x.shape
        q = self.wq_b(q_latent).view(B, T, self.n_heads, self.head_dim)
        qk = rope_half_split(torch.cat([q, self.k_norm(self.wk(x))[:, :, None]], dim=2), cos, sin)
        # 1/sqrt(H_I) keeps I's scale independent of the head count (DeepSeek's inference code); the
        # 1/sqrt(d_I) of the dot products is folded in too: ReLU(s q.k) = s ReLU(q.k) for s > 0, and
        # scaling H_I weights is cheaper than a pass over the [.., H_I, S] scores.
        weights = self.weights_proj(x).float() * (self.n_heads**-0.5 * self.scale)
        return IndexerQuery(qk[:, :, : self.n_heads], weights), qk[:, :, self.n_heads]

    def scores(self, query: IndexerQuery, keys: Tensor) -> Tensor:
        """I_{t,s} [B, T, S] in fp32 for queries [B, T, ...] against keys [B, S, d_I]."""
        q, keys = (query.q, keys) if keys.dtype == torch.float32 else (query.q.float(), keys.float())
        per_head = F.relu(torch.matmul(q, keys.transpose(1, 2)[:, None]), inplace=True)  # [B, T, H_I, S]
        return torch.matmul(query.weights[:, :, None, :], per_head).squeeze(2)


def top_k_tokens(scores: Tensor, hidden: Tensor | None, k: int) -> Tensor:
    """Indices [..., k] of the k best-scored keys of each query, ``hidden`` keys ranked last.

    Equal scores are common: I is exactly 0 wherever every head's ReLU is 0. ``topk`` breaks such ties
    in an order that depends on the tensor's shape, which would let the full forward and the cached
    decode choose different tokens. Ranking by (score, position) instead makes the choice a function of
    the scores alone: among equal scores the later token wins. The fp32 score's bits, mapped to a
    monotonic integer, are the high word of an int64 key and the position is the low word.
    """
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    k = min(k, scores.shape[-1])
    if not torch.compiler.is_compiling():
        # Usually no tie straddles the k-th place (hidden keys, tied at -inf, are dropped by every
        # caller): then the k best are one set whatever the order, and a plain topk finds it, a few
        # passes over [.., S] cheaper. The data-dependent check needs eager mode.
        best = scores.topk(k, dim=-1)
        kth = best.values[..., -1:]
        unique = ((scores == kth).sum(-1) == (best.values == kth).sum(-1)) | (kth[..., 0] == float("-inf"))
        if bool(unique.all()):
            return best.indices
    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: larger magnitude -> lower integer
    positions = torch.arange(scores.shape[-1], device=scores.device)
    return torch.add(positions, bits.long(), alpha=2**32).topk(k, dim=-1).indices


def topk_keep(scores: Tensor, visible: Tensor, k: int) -> Tensor:
    """bool [B, T, S]: True where the key is visible to the query and among its k best-scored visible
    keys (:func:`top_k_tokens`). Rows that see at most k keys keep all of them (dense)."""
    best = top_k_tokens(scores, ~visible, k)
    return torch.zeros_like(visible).scatter_(-1, best, True) & visible


def indexer_kl(scores: Tensor, target: Tensor, keep: Tensor) -> Tensor:
    """Mean over query tokens of KL(target || softmax(I)) over the kept keys (V3.2 eqs. 3 and 4).

    ``target`` [B, T, S]: the main attention distribution (summed over heads, L1-normalised) on ``keep``.
    Queries that keep no key (DeepSeek-V4's CSA before its first block closes) are left out of the mean.
    """
    rows = keep.any(dim=-1, keepdim=True)
    # A row with nothing kept gets finite logits (it adds 0 either way): an all -inf row would make
    # log_softmax NaN, and its backward would spread that NaN into the indexer's gradient.
    logits = scores.masked_fill(~keep, float("-inf")).masked_fill(~rows, 0.0)
    terms = torch.where(keep, torch.xlogy(target, target) - target * logits.log_softmax(dim=-1), 0.0)
    return terms.sum() / rows.sum().clamp(min=1)


@torch.no_grad()
def topk_recall(scores: Tensor, target: Tensor, keep: Tensor, k: int) -> Tensor | None:
    """How well the indexer's top k matches the attention's: over the queries that keep more than k
    keys, the mean share of the k keys with the most attention mass (``target``) that are also among
    the k best-scored. None when no query keeps more than k keys (every selection is then exact)."""
    rows = keep.sum(dim=-1) > k
    if not bool(rows.any()):
        return None
    scores, target, keep = scores[rows], target[rows], keep[rows]
    hidden = ~keep
    picked = torch.zeros_like(keep).scatter_(-1, top_k_tokens(scores, hidden, k), True)
    heaviest = torch.zeros_like(keep).scatter_(-1, top_k_tokens(target.float(), hidden, k), True)
    return (picked & heaviest).sum(dim=-1).float().mean() / k


class IndexedAttention:
    """What an attention layer with a trainable lightning indexer shares with the training stages
    (:func:`set_dsa_stage`): the stage it runs in and what its last forward measured.
    DeepSeek-V3.2's :class:`DSAttention` and DeepSeek-V4's CSA layers are such layers."""

    stage: str | None = None  # see set_dsa_stage
    indexer_loss: Tensor | None = None  # set by forward while a training stage is on
    indexer_recall: Tensor | None = None  # topk_recall, set by forward in the dense_warmup stage

    def trainable_indexer(self) -> nn.Module | None:
        """The indexer the stages train (None: this layer has none)."""
        raise NotImplementedError

    def record_indexer_loss(self, scores: Tensor, target: Tensor, keep: Tensor, k: int) -> None:
        """Set ``indexer_loss`` (and in the dense warm-up, where ``keep`` is every visible key, the
        indexer's top-k recall) from the indexer's scores and the attention's distribution."""
        self.indexer_loss = indexer_kl(scores, target, keep)
        self.indexer_recall = topk_recall(scores, target, keep, k) if self.stage == "dense_warmup" else None


def mean_indexer_loss(attentions) -> Tensor | None:
    """Mean over the attention layers that ran a training stage of their indexer KL (None: none did)."""
    parts = [a.indexer_loss for a in attentions if getattr(a, "indexer_loss", None) is not None]
    return torch.stack(parts).mean() if parts else None


def mean_indexer_recall(model: nn.Module) -> Tensor | None:
    """Mean over the layers that measured one of the indexer's top-k recall (dense warm-up only)."""
    parts = [a.indexer_recall for a in dsa_attentions(model) if a.indexer_recall is not None]
    return torch.stack(parts).mean() if parts else None


class DSAttention(IndexedAttention, MLAttention):
    """MLA whose queries attend only to the indexer's top-k tokens (module name ``self_attn``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.indexer = Indexer(cfg)
        self.index_topk: int = cfg.index_topk

    def trainable_indexer(self) -> Indexer:
        return self.indexer

    # --- training / prefill -------------------------------------------------------------------
    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                cache: CacheView | None = None) -> Tensor:
        """As :meth:`MLAttention.forward`, with each query restricted to its top-k keys."""
        B, T, _ = x.shape
        self.indexer_loss = self.indexer_recall = None
        q_latent = self.query_latent(x)
        q_nope, q_pe, c, k_pe = self._project(x, cos, sin, q_latent)
        # In a training stage the indexer works on detached inputs: its KL loss trains only the indexer
        # and the LM loss never reaches it (V3.2 §2.1.1).
        x_idx, q_latent_idx = (x.detach(), q_latent.detach()) if self.stage else (x, q_latent)
        dense = self.stage is None and self.index_topk >= T  # nothing to drop: dense MLA exactly
        if dense:
            query, keys = None, self.indexer.keys(x_idx, cos, sin)
        else:
            query, keys = self.indexer(x_idx, q_latent_idx, cos, sin)
        if cache is not None:
            write_cache(cache, c, k_pe)
            write_index_keys(cache, keys)
            if not dense and not torch.is_grad_enabled():  # a long prompt: sparse attention over the cache
                return self._sparse_over_cache(q_nope, q_pe, query, cache)
        if dense:
            return self._attend(q_nope, q_pe, c, k_pe, mask)
        visible = torch.ones(T, T, dtype=torch.bool, device=x.device).tril().expand(B, T, T)
        if mask is not None:
            visible = visible & mask[:, 0]
        scores = self.indexer.scores(query, keys)
        keep = visible if self.stage == "dense_warmup" else topk_keep(scores, visible, self.index_topk)
        if self.stage is not None:
            target = self._attention_distribution(q_nope, q_pe, c, k_pe, keep)
            self.record_indexer_loss(scores, target, keep, self.index_topk)
        return self._attend(q_nope, q_pe, c, k_pe, keep[:, None])

    @torch.no_grad()
    def _attention_distribution(self, q_nope: Tensor, q_pe: Tensor, c: Tensor, k_pe: Tensor,
                                keep: Tensor) -> Tensor:
        """The indexer's training target: MLA's attention probabilities over ``keep``, summed over the
        heads and L1-normalised (V3.2 §2.1.1). [B, T, S], no gradient."""
        B, T, H, _ = q_nope.shape
        k_nope = self.kv_b_proj(c).view(B, T, H, self.d_n + self.d_v)[..., : self.d_n]
        logits = torch.einsum("bthd,bshd->bhts", q_nope, k_nope) + torch.einsum("bthd,bsd->bhts", q_pe, k_pe)
        probs = (logits.float() * self.scale).masked_fill(~keep[:, None], float("-inf")).softmax(dim=-1)
        total = probs.sum(dim=1)
        return total / total.sum(dim=-1, keepdim=True)

    # --- decode over the cache ------------------------------------------------------------------
    def forward_absorbed(self, x: Tensor, cos: Tensor, sin: Tensor, cache: CacheView,
                         q_latent: Tensor | None = None) -> Tensor:
        """Tokens after a cached prefix: absorbed MLA over the k cached latents the indexer selects."""
        q_latent = self.query_latent(x) if q_latent is None else q_latent
        if cache.length <= self.index_topk:  # every cached token is selected: dense absorbed MLA
            write_index_keys(cache, self.indexer.keys(x, cos, sin))
            return super().forward_absorbed(x, cos, sin, cache, q_latent)
        query, keys = self.indexer(x, q_latent, cos, sin)
        write_index_keys(cache, keys)
        q_nope, q_pe, c, k_pe = self._project(x, cos, sin, q_latent)
        write_cache(cache, c, k_pe)
        return self._sparse_over_cache(q_nope, q_pe, query, cache)

    def _sparse_over_cache(self, q_nope: Tensor, q_pe: Tensor, query: IndexerQuery,
                           cache: CacheView) -> Tensor:
        """Each query attends to the top-k of its row's cached tokens 0 .. position (DeepSeek-V2 §2.1.2
        absorption: scores and outputs in the d_c latent space, nothing expanded per head). The new
        tokens' latents and indexer keys must already be in the cache. -> [B, T, d]."""
        B, T, H, _ = q_nope.shape
        S = cache.length
        k = min(self.index_topk, S)
        keys = cached_rows(cache.index_keys, cache)  # [B, S, d_I]; the latents are gathered per query below
        w = self._kv_b_weight().view(H, self.d_n + self.d_v, self.d_c)
        w_uk, w_uv = w[:, : self.d_n], w[:, self.d_n :]
        # W_UK^T q_nope, one matmul batched over heads: [H, B*T, d_n] @ [H, d_n, d_c] -> [B, T, H, d_c]
        q_lat = torch.bmm(q_nope.reshape(B * T, H, self.d_n).transpose(0, 1), w_uk)
        q_lat = q_lat.transpose(0, 1).reshape(B, T, H, self.d_c)
        rows = cache.slots[:, None, None]
        chunk = max(1, _CHUNK_ELEMENTS // (B * max(S * self.indexer.n_heads, k * (self.d_c + self.d_r))))
        if torch.compiler.is_compiling():  # a compiled decode step: a few tokens, one graph without a loop
            chunk = T
        one_row = B == 1 and T == 1 and not torch.compiler.is_compiling()
        outputs = []
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            positions = cache.positions[:, t0:t1, None]  # [B, Tc, 1]
            # A chunk of a long prompt sees only the keys up to its last position (half the indexer's work)
            seen = S if T == 1 or torch.compiler.is_compiling() else int(positions.max()) + 1
            rows_query = IndexerQuery(query.q[:, t0:t1], query.weights[:, t0:t1])
            scores = self.indexer.scores(rows_query, keys[:, :seen])
            # Eager decode of one row: S = its position + 1, nothing is hidden (as in the dense path).
            hidden = None if one_row else torch.arange(seen, device=scores.device) > positions
            chosen = top_k_tokens(scores, hidden, min(k, seen))  # [B, Tc, k]; rows seeing < k add hidden ones
            c_sel, pe_sel = cache.kv[rows, chosen], cache.pe[rows, chosen]  # [B, Tc, k, d_c], [B, Tc, k, d_r]
            logits = (torch.matmul(q_lat[:, t0:t1], c_sel.transpose(-1, -2))
                      + torch.matmul(q_pe[:, t0:t1], pe_sel.transpose(-1, -2))) * self.scale  # [B, Tc, H, k]
            if not one_row:
                logits = logits.masked_fill((chosen > positions)[:, :, None], float("-inf"))
            p = logits.softmax(dim=-1, dtype=torch.float32).to(c_sel.dtype)
            outputs.append(torch.matmul(p, c_sel))  # sum_s p_s c_s per head: [B, Tc, H, d_c]
        a = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
        o = torch.bmm(a.reshape(B * T, H, self.d_c).transpose(0, 1), w_uv.transpose(1, 2))  # W_UV per head
        return self.o_proj(o.transpose(0, 1).reshape(B, T, H * self.d_v))


def write_index_keys(cache: CacheView, keys: Tensor) -> None:
    """Store the indexer keys [B, T, d_I] of the new tokens next to their latents."""
    rows = cache.slots[:, None].expand_as(cache.positions)
    cache.index_keys[rows, cache.positions] = keys.to(cache.index_keys.dtype)


# =============================================================================================
# Training stages
# =============================================================================================


def dsa_attentions(model: nn.Module) -> list[IndexedAttention]:
    """The attention layers of ``model`` that have a lightning indexer (V3.2's, V4's CSA layers)."""
    return [m for m in model.modules()
            if isinstance(m, IndexedAttention) and m.trainable_indexer() is not None]


def set_dsa_stage(model: nn.Module, stage: str | None) -> None:
    """Put every indexed attention layer of ``model`` (DeepSeek-V3.2's DSA layers, DeepSeek-V4's CSA
    layers) in a V3.2 training stage (``STAGES``) or back to None.

    ``dense_warmup`` also freezes every parameter except the indexers' (the main model only provides
    the target distribution); ``sparse`` and None leave ``requires_grad`` as the caller set it.
    """
    if stage is not None and stage not in STAGES:
        raise ValueError(f"dsa stage must be one of {', '.join(STAGES)} or null, got {stage!r}")
    layers = dsa_attentions(model)
    if stage is not None and not layers:
        raise ValueError(f"dsa stage {stage!r} needs a DeepSeek-V3.2 model (index_topk set) or a "
                         "DeepSeek-V4 model with CSA layers; this one has no indexer")
    for layer in layers:
        layer.stage = stage
        layer.indexer_loss = layer.indexer_recall = None
    if stage == "dense_warmup":
        indexer_params = {id(p) for layer in layers for p in layer.trainable_indexer().parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in indexer_params)


def load_dense_into_sparse(model: nn.Module, state: dict[str, Tensor], source: object) -> list[str]:
    """Turn a DeepSeek-V3 checkpoint into V3.2: load ``state`` (no indexer tensors) into the DSA
    ``model``, whose indexers keep their fresh initialisation (train them with the ``dense_warmup``
    stage). Every V3 tensor must exist in the model with the same shape; the error names the first
    that does not. Returns the names of the tensors left initialised.
    """
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise ValueError(f"{source}: checkpoint tensor {name} has no place in the V3.2 model "
                             "(the model config does not match the checkpoint's)")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(f"{source}: {name} has shape {list(tensor.shape)} in the checkpoint but "
                             f"{list(own[name].shape)} in the V3.2 model: keep the checkpoint's sizes and "
                             "only add index_topk / index_n_heads / index_head_dim")
    missing, _ = model.load_state_dict(state, strict=False)
    not_indexer = [k for k in missing if ".indexer." not in k]
    if not_indexer:
        raise ValueError(f"{source}: the checkpoint lacks {not_indexer[:4]} (only indexer tensors may be "
                         "missing when converting DeepSeek-V3 to V3.2)")
    return missing


__all__ = ["Indexer", "IndexerQuery", "DSAttention", "IndexedAttention", "top_k_tokens", "topk_keep",
           "indexer_kl", "topk_recall", "mean_indexer_loss", "mean_indexer_recall",
           "set_dsa_stage", "dsa_attentions", "load_dense_into_sparse", "write_index_keys", "rope_half_split",
           "STAGES"]
