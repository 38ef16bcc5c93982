"""Cached inference for DeepSeek-V3: the latent KV cache and the prefill / decode forward passes.

MLA's point at inference time (DeepSeek-V2 report, arXiv:2405.04434, §2.1.2-2.1.3) is that a token's
keys and values are rebuilt from ONE d_c-dim latent plus a d_r-dim shared rope key, so the cache holds
d_c + d_r numbers per token per layer and nothing per head. This file holds that cache and the paths
that read it; :mod:`seekforge.model.model` (the architecture, read next to the V3 report) mixes them in:

    CacheView, MLACache, write_cache   the cache: per-layer latent and rope-key buffers, slot-addressed
    cached_rows                        what one forward reads of it
    AbsorbedAttention                  MLAttention's decode path: W_UK / W_UV absorbed into the query
                                       and output, attention directly over the cached latents
    CachedDecoderLayer                 one block over the cache (SDPA prefill or absorbed decode)
    CachedInference                    the model's entry points: new_cache, forward_cached,
                                       decode_step (what the engine compiles) and the MTP drafter

The inference engine, the evaluation scorer and prefix tuning all go through these methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekforge.model.outputs import ModelOutput


class CacheView(NamedTuple):
    """One layer's view of the latent cache for one cached forward.

    ``kv`` [slots, max_len, d_c] and ``pe`` [slots, max_len, d_r] are the layer's buffers; row b of the
    batch lives in slot ``slots[b]`` at ``positions[b]`` ([B, T]). ``length`` (a Python int, at least
    max(positions) + 1) is how many cached positions attention reads: passing it in, instead of reading
    it from ``positions``, keeps the decode path free of host syncs, so it compiles as one graph.
    """

    kv: Tensor
    pe: Tensor
    slots: Tensor
    positions: Tensor
    length: int
    index_keys: Tensor | None = None  # DeepSeek-V3.2: the indexer's keys [slots, max_len, d_I]


@dataclass
class MLACache:
    """Latent KV cache for continuous batching: per layer (main layers, then MTP layers)
    ``kv[l]`` [slots, max_len, d_c] (latent after kv_a_layernorm) and ``pe[l]`` [slots, max_len, d_r]
    (shared rope key after RoPE). d_c + d_r numbers per token per layer; nothing per head.
    DeepSeek-V3.2 adds ``index_keys[l]`` [slots, max_len, d_I], the lightning indexer's one key per
    token (empty list for dense models)."""

    kv: list[Tensor]
    pe: list[Tensor]
    index_keys: list[Tensor] = field(default_factory=list)

    @property
    def num_slots(self) -> int:
        return self.kv[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.kv[0].shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv + self.pe + self.index_keys)

    def view(self, layer: int, slots: Tensor, positions: Tensor, length: int) -> CacheView:
        """Layer ``layer``'s buffers as a :class:`CacheView`."""
        index_keys = self.index_keys[layer] if self.index_keys else None
        return CacheView(self.kv[layer], self.pe[layer], slots, positions, length, index_keys)

    def drop_layers_from(self, layer: int) -> None:
        """Free the buffers of layers >= ``layer`` (e.g. the MTP layers when not speculating)."""
        for buffers in (self.kv, self.pe, self.index_keys):
            del buffers[layer:]


def cached_rows(buffer: Tensor, cache: CacheView) -> Tensor:
    """Positions 0 .. length-1 of each row's slot of a cache buffer: [B, length, width].

    One row on the CPU, outside torch.compile: a view of the slot (reading the slot id costs nothing
    there), instead of the copy a gather makes: that copy was the largest cost of a long-context CPU
    decode step. Otherwise a gather, which needs no host sync.
    """
    slots = cache.slots
    if slots.shape[0] == 1 and slots.device.type == "cpu" and not torch.compiler.is_compiling():
        return buffer[int(slots[0]), : cache.length][None]
    return buffer[slots, : cache.length]


def write_cache(cache: CacheView, c: Tensor, k_pe: Tensor) -> None:
    """Store latents of the new tokens at [slot, position] (rows may be at different positions)."""
    rows = cache.slots[:, None].expand_as(cache.positions)
    cache.kv[rows, cache.positions] = c.to(cache.kv.dtype)
    cache.pe[rows, cache.positions] = k_pe.to(cache.pe.dtype)


class AbsorbedAttention:
    """Decode-time methods of :class:`~seekforge.model.model.MLAttention` (mixed in there)."""

    def _kv_b_weight(self) -> Tensor:
        """kv_b_proj's weight [H*(d_n+d_v), d_c], including e.g. an unmerged LoRA delta.

        Absorption needs the matrix itself. A plain Linear gives it directly; a wrapped module (peft
        LoRA ...) is probed with the identity, which is exact but costs a d_c x d_c matmul.
        """
        if type(self.kv_b_proj) is nn.Linear:
            return self.kv_b_proj.weight
        w = self.kv_b_proj.weight if hasattr(self.kv_b_proj, "weight") else None
        ref = w if w is not None else next(self.kv_b_proj.parameters())
        return self.kv_b_proj(torch.eye(self.d_c, device=ref.device, dtype=ref.dtype)).T

    def forward_absorbed(self, x: Tensor, cos: Tensor, sin: Tensor, cache: CacheView,
                         q_latent: Tensor | None = None) -> Tensor:
        """Decode with absorbed projections (DeepSeek-V2 report, arXiv:2405.04434, §2.1.2).

        score = scale * ((W_UK^T q_nope) . c_s + q_pe . k_pe_s)   -> MQA with one 576-dim shared key
        out   = W_O [W_UV (sum_s p_s c_s)]                          (per head)
        The keys/values are never expanded to H heads: the cache holds d_c + d_r numbers per token.
        """
        B, T, _ = x.shape
        H, S = self.n_heads, cache.length
        q_nope, q_pe, c, k_pe = self._project(x, cos, sin, q_latent)
        write_cache(cache, c, k_pe)
        # Attend over positions 0 .. S-1 of each row's slot; positions after a row's own are masked.
        c_all = cached_rows(cache.kv, cache)  # [B, S, d_c]
        pe_all = cached_rows(cache.pe, cache)  # [B, S, d_r]
        w = self._kv_b_weight().view(H, self.d_n + self.d_v, self.d_c)
        w_uk, w_uv = w[:, : self.d_n], w[:, self.d_n :]
        # Absorbed query W_UK^T q_nope: one matmul batched over heads, [H, B*T, d_n] @ [H, d_n, d_c].
        q_lat = torch.bmm(q_nope.reshape(B * T, H, self.d_n).transpose(0, 1), w_uk)
        q_lat = q_lat.transpose(0, 1).reshape(B, T * H, self.d_c)
        if T > 1 and not torch.compiler.is_compiling():
            a = self._absorbed_sdpa(q_lat, q_pe.reshape(B, T * H, self.d_r), c_all, pe_all, cache.positions)
            o = torch.bmm(a.view(B * T, H, self.d_c).transpose(0, 1), w_uv.transpose(1, 2))
            return self.o_proj(o.transpose(0, 1).reshape(B, T, H * self.d_v))
        # One shared key/value for all heads = single-head attention with the H*T queries stacked, so
        # nothing is ever expanded to H heads. Written out (two score matmuls, softmax, one value
        # matmul) instead of SDPA over concatenated [c | k_pe] keys: at decode sizes the small ops are
        # the cost, and this needs no concatenation of q or of the cached keys.
        scores = torch.bmm(q_pe.reshape(B, T * H, self.d_r), pe_all.transpose(1, 2))
        scores = torch.baddbmm(scores, q_lat, c_all.transpose(1, 2), beta=self.scale, alpha=self.scale)
        # Eager with one row and one token: the caller's S is that token's position + 1, nothing to
        # hide, and skipping the mask saves three ops per layer. A compiled graph always masks, so one
        # graph serves every batch size.
        if B > 1 or T > 1 or torch.compiler.is_compiling():
            hidden = torch.arange(S, device=x.device) > cache.positions[:, :, None]  # [B, T, S]
            scores = scores.view(B, T, H, S).masked_fill(hidden[:, :, None], float("-inf")).view(B, T * H, S)
        p = scores.softmax(dim=-1, dtype=torch.float32).to(c_all.dtype)
        a = torch.bmm(p, c_all).view(B * T, H, self.d_c)  # sum_s p_s c_s per head
        o = torch.bmm(a.transpose(0, 1), w_uv.transpose(1, 2))  # W_UV per head: [H, B*T, d_v]
        return self.o_proj(o.transpose(0, 1).reshape(B, T, H * self.d_v))


    def _absorbed_sdpa(self, q_lat: Tensor, q_pe: Tensor, c_all: Tensor, pe_all: Tensor,
                       positions: Tensor) -> Tensor:
        """Several new tokens per row (a prompt chunk after a cached prefix, scoring a batch of
        continuations): the same absorbed attention through one fused SDPA call, so the
        [B, T*H, S] score matrix is never materialised (it dominated such chunks on CPU).
        One shared key [c | k_pe] (d_c + d_r) and value c, zero-padded to the key width because
        flash kernels need equal q/k/v head dims. Returns sum_s p_s c_s: [B, T*H, d_c]."""
        B, TH, _ = q_lat.shape
        T, S = positions.shape[1], c_all.shape[1]
        q = torch.cat([q_lat, q_pe], dim=-1)[:, None]  # [B, 1, T*H, d_c + d_r]
        k = torch.cat([c_all, pe_all], dim=-1)[:, None]
        v = F.pad(c_all, (0, self.d_r))[:, None]
        seen = torch.arange(S, device=q.device) <= positions[:, :, None]  # [B, T, S]
        mask = seen[:, :, None].expand(B, T, TH // T, S).reshape(B, 1, TH, S)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return a[:, 0, :, : self.d_c]


class CachedDecoderLayer:
    """The cached forward of :class:`~seekforge.model.model.DecoderLayer` (mixed in there)."""

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, cache: CacheView, prefill: bool) -> Tensor:
        h = self.input_layernorm(x)
        if prefill:
            attn = self.self_attn(h, cos, sin, None, cache)
        else:
            attn = self.self_attn.forward_absorbed(h, cos, sin, cache)
        return self._ffn(x + attn, False)[0]


class CachedInference:
    """Cached inference entry points of :class:`~seekforge.model.model.DeepseekV3ForCausalLM`."""

    def new_cache(self, num_slots: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> MLACache:
        """An empty latent cache for ``num_slots`` sequences of up to ``max_len`` tokens."""
        ref = self.model.embed_tokens.weight  # never quantized (lm_head may be)
        device, dtype = device or ref.device, dtype or ref.dtype
        n = len(self.model.layers)
        cfg = self.config
        def buf(width: int) -> Tensor:
            return torch.zeros(num_slots, max_len, width, device=device, dtype=dtype)

        return MLACache(kv=[buf(cfg.kv_lora_rank) for _ in range(n)],
                        pe=[buf(cfg.qk_rope_head_dim) for _ in range(n)],
                        index_keys=[buf(cfg.index_head_dim) for _ in range(n)] if cfg.is_dsa else [])

    def _cache_args(self, cache: MLACache, slots: Tensor, start_pos: Tensor, T: int,
                    device: torch.device) -> tuple[Tensor, Tensor, int, bool]:
        """-> (slots, positions [B, T], attention length, is-prefill), validated against the cache."""
        slots = torch.as_tensor(slots, device=device).long()
        start_pos = torch.as_tensor(start_pos, device=device).long()
        positions = start_pos[:, None] + torch.arange(T, device=device)
        length = int(positions.max()) + 1
        if length > cache.max_len:
            raise ValueError(f"forward_cached: position {length - 1} does not fit the cache "
                             f"(max_len {cache.max_len})")
        prefill = T > 1 and not bool(start_pos.any())
        return slots, positions, length, prefill

    @torch.no_grad()
    def forward_cached(self, input_ids: Tensor, cache: MLACache, slots: Tensor,
                       start_pos: Tensor, with_logits: bool = True) -> ModelOutput:
        """Run ``input_ids`` [B, T] at positions start_pos[b] .. +T-1 of cache slot slots[b].

        The new latents are written to the cache. T>1 with every row at position 0 is a prefill (SDPA
        over the chunk); anything else attends to the cache with the absorbed-MLA path
        (:meth:`decode_step`). Returns ``logits`` [B, T, V] and ``hidden`` [B, T, d] (after the final
        norm; MTP depth-1 input). ``with_logits=False`` leaves ``logits`` empty (shape [B, T, 0]): a
        caller that needs only a few positions' logits applies ``lm_head`` to those rows of
        ``hidden`` (on a small model the head is a large share of the work).
        """
        B, T = input_ids.shape
        slots, positions, length, prefill = self._cache_args(cache, slots, start_pos, T, input_ids.device)
        return self._main_cached(input_ids, cache, slots, positions, length, prefill, with_logits)

    def decode_step(self, input_ids: Tensor, cache: MLACache, slots: Tensor, positions: Tensor,
                    length: int) -> ModelOutput:
        """Tokens after a cached prefix (decode, a later prefill chunk, speculative verification).

        ``positions`` [B, T] must be valid (use :meth:`forward_cached` for checked arguments);
        ``length`` = max(positions) + 1. Nothing here reads a tensor back to the host, so the engine
        can hand this method to ``torch.compile`` as one graph for every batch size and length.
        Call it under ``torch.no_grad()`` / ``inference_mode()`` (it is not decorated: torch.compile
        would then trace the decorator's wrapper, whose code every decorated function shares).
        """
        return self._main_cached(input_ids, cache, slots, positions, length, prefill=False)

    def _main_cached(self, input_ids: Tensor, cache: MLACache, slots: Tensor, positions: Tensor, length: int,
                     prefill: bool, with_logits: bool = True) -> ModelOutput:
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(positions, h.dtype)
        for i, layer in enumerate(self.main_layers):
            h = layer.forward_cached(h, cos, sin, cache.view(i, slots, positions, length), prefill)
        h = self.model.norm(h)
        logits = self.lm_head(h) if with_logits else h.new_empty(*h.shape[:-1], 0)
        return ModelOutput(logits=logits, hidden=h)

    @torch.no_grad()
    def mtp_forward_cached(self, hidden: Tensor, next_ids: Tensor, cache: MLACache, slots: Tensor,
                           start_pos: Tensor, depth: int = 1) -> ModelOutput:
        """MTP module ``depth`` as a drafter (§5.4.3): for the tokens at positions start_pos ..
        (``hidden`` [B, T, d] = their main ``hidden``, or the previous depth's output) and the tokens
        that follow them (``next_ids`` [B, T]), predict the token after ``next_ids``.

        Uses (and fills) this MTP layer's own cache entries at the same positions. Returns ``logits``
        [B, T, V] and ``hidden`` (the block output, input of depth + 1).
        """
        if not 1 <= depth <= len(self.mtp_layers):
            raise ValueError(f"mtp_forward_cached: depth must be in 1..{len(self.mtp_layers)}, got {depth}")
        B, T = next_ids.shape
        slots, positions, length, prefill = self._cache_args(cache, slots, start_pos, T, next_ids.device)
        if not prefill:
            return self.mtp_decode_step(hidden, next_ids, cache, slots, positions, length, depth)
        return self._mtp_cached(hidden, next_ids, cache, slots, positions, length, depth, prefill=True)

    def mtp_decode_step(self, hidden: Tensor, next_ids: Tensor, cache: MLACache, slots: Tensor,
                        positions: Tensor, length: int, depth: int = 1) -> ModelOutput:
        """:meth:`mtp_forward_cached` after a cached prefix, like :meth:`decode_step`: arguments are
        trusted, nothing is read back to the host, so the engine can compile it (call it without
        gradients, as decode_step)."""
        return self._mtp_cached(hidden, next_ids, cache, slots, positions, length, depth, prefill=False)

    def _mtp_cached(self, hidden: Tensor, next_ids: Tensor, cache: MLACache, slots: Tensor, positions: Tensor,
                    length: int, depth: int, prefill: bool) -> ModelOutput:
        layer = self.mtp_layers[depth - 1]
        li = self.config.num_hidden_layers + depth - 1
        x = layer.combine(hidden, self.model.embed_tokens(next_ids))
        cos, sin = self.model.rotary_emb(positions, x.dtype)
        h = layer.forward_cached(x, cos, sin, cache.view(li, slots, positions, length), prefill)
        return ModelOutput(logits=self.lm_head(layer.shared_head.norm(h)), hidden=h)
