"""Cached inference for DeepSeek-V4: the window + compressed caches, prefill and one-token decode.

What a V4 layer must remember about a sequence to decode its next token:

    window      the roped key (= value) of its last ``sliding_window`` tokens: a ring buffer indexed
                by position mod n_win, with the position each entry holds (-1: empty)
    entries     one compressed entry per closed block of m tokens (CSA: m = 4, HCA: m' = 128)
    raw ring    the pool inputs (kv and gate projections) of the last m tokens, or 2m with CSA's
                overlapping blocks: when a token closes a block, its entry is pooled from here
    indexer     CSA only: the same three for the lightning indexer's small keys

So the cache holds n_win + L/m entries per layer, not L. A prompt is prefilled with the full-sequence
forward and the cache filled from it; each later token goes through :meth:`decode_step`, which
writes its key, pools a block when the token closes one, and attends to [window | entries] with the
same masks and top-k selection as the full forward. Prompts that continue a cached sequence
(``start_pos > 0``) are run token by token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from seekforge.model.outputs import ModelOutput


@dataclass
class BlockState:
    """One compressor's memory in one layer (the attention's compressor or CSA's indexer)."""

    raw_kv: Tensor  # [slots, R, series * width]: pool inputs of the last R positions, at position mod R
    raw_gate: Tensor  # [slots, R, series * width]: gate logits + position bias, same layout
    entries: Tensor  # [slots, max_len // m, width]: entry w pools block w (positions w*m .. w*m + m-1)


@dataclass
class V4LayerCache:
    window: Tensor  # [slots, n_win, c]
    window_pos: Tensor  # [slots, n_win], the position held by each ring entry (-1: empty)
    compressor: BlockState | None  # CSA / HCA layers
    indexer: BlockState | None  # CSA layers


@dataclass
class V4Cache:
    layers: list[V4LayerCache]
    max_len: int

    @property
    def num_slots(self) -> int:
        return self.layers[0].window.shape[0]

    def drop_layers_from(self, n: int) -> None:
        """Free the buffers of layers n.. (the engine's call for unused MTP layers; V4 has none)."""
        del self.layers[n:]

    def nbytes(self) -> int:
        total = 0
        for lc in self.layers:
            tensors = [lc.window, lc.window_pos]
            for state in (lc.compressor, lc.indexer):
                if state is not None:
                    tensors += [state.raw_kv, state.raw_gate, state.entries]
            total += sum(t.numel() * t.element_size() for t in tensors)
        return total


def _block_state(comp, slots: int, max_len: int, device, dtype) -> BlockState:
    ring = (2 if comp.overlap else 1) * comp.rate
    width = comp.kv_proj.out_features

    def buf(*shape: int) -> Tensor:
        return torch.zeros(*shape, device=device, dtype=dtype)

    return BlockState(buf(slots, ring, width), buf(slots, ring, width),
                      buf(slots, max_len // comp.rate + 1, comp.width))


def _fill_block_state(comp, state: BlockState, x: Tensor, slots: Tensor, rope) -> None:
    """After a prefill of x [B, T, d] at positions 0..T-1: entries of the closed blocks, raw ring."""
    T = x.shape[1]
    entries = comp.compress(x, rope)
    state.entries[slots, : entries.shape[1]] = entries.to(state.entries.dtype)
    ring = state.raw_kv.shape[1]
    keep = torch.arange(max(0, T - ring), T, device=x.device)
    raw_kv, raw_gate = comp.project(x[:, keep], keep)
    state.raw_kv[slots[:, None], keep % ring] = raw_kv.to(state.raw_kv.dtype)
    state.raw_gate[slots[:, None], keep % ring] = raw_gate.to(state.raw_gate.dtype)


def _advance_block_state(comp, state: BlockState, x: Tensor, pos: Tensor, slots: Tensor, rope) -> None:
    """One new token per row (x [B, 1, d] at positions ``pos`` [B]): store its pool inputs and, in
    rows where it closes block w, pool that block (with block w-1 for CSA) into entry w."""
    ring, m = state.raw_kv.shape[1], comp.rate
    raw_kv, raw_gate = comp.project(x[:, 0], pos)
    state.raw_kv[slots, pos % ring] = raw_kv.to(state.raw_kv.dtype)
    state.raw_gate[slots, pos % ring] = raw_gate.to(state.raw_gate.dtype)
    closing = ((pos + 1) % m == 0).nonzero()[:, 0]
    if closing.numel() == 0:
        return
    s, p = slots[closing], pos[closing]
    blocks = 2 if comp.overlap else 1
    span = p[:, None] + torch.arange(1 - blocks * m, 1, device=p.device)  # the blocks' positions
    kv = state.raw_kv[s[:, None], span % ring].view(len(s), blocks, m, -1)
    gate = state.raw_gate[s[:, None], span % ring].view(len(s), blocks, m, -1)
    w = p // m
    if comp.overlap:  # block 0 has no predecessor: its slots get weight 0
        gate[:, 0] = gate[:, 0].masked_fill((w < 1)[:, None, None], float("-inf"))
    block_ids = w[:, None] + torch.arange(1 - blocks, 1, device=p.device)
    state.entries[s, w] = comp.pool(kv, gate, block_ids, rope)[:, -1].to(state.entries.dtype)


class V4CachedInference:
    """Cached-inference entry points of :class:`~seekforge.model.v4.DeepseekV4ForCausalLM`, with
    the signatures of V3's (:mod:`seekforge.model.cache`) so one inference engine serves both."""

    padded_prefill = False  # a padded row would pool its padding into compressed entries

    def new_cache(self, num_slots: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> V4Cache:
        ref = self.model.embed_tokens.weight  # never quantized (lm_head may be)
        device, dtype = device or ref.device, dtype or ref.dtype
        layers = []
        for layer in self.model.layers:
            attn = layer.self_attn
            window = torch.zeros(num_slots, attn.window, attn.head_dim, device=device, dtype=dtype)
            window_pos = torch.full((num_slots, attn.window), -1, device=device, dtype=torch.long)
            comp = attn.compressor
            indexer = getattr(comp, "indexer", None)
            layers.append(V4LayerCache(
                window, window_pos,
                _block_state(comp, num_slots, max_len, device, dtype) if comp is not None else None,
                _block_state(indexer, num_slots, max_len, device, dtype) if indexer is not None else None))
        return V4Cache(layers, max_len)

    @torch.no_grad()
    def forward_cached(self, input_ids: Tensor, cache: V4Cache, slots: Tensor, start_pos: Tensor,
                       with_logits: bool = True) -> ModelOutput:
        """Run ``input_ids`` [B, T] at positions start_pos[b] .. +T-1 of cache slot slots[b]."""
        B, T = input_ids.shape
        device = input_ids.device
        slots = torch.as_tensor(slots, device=device).long()
        start_pos = torch.as_tensor(start_pos, device=device).long()
        positions = start_pos[:, None] + torch.arange(T, device=device)
        if int(positions.max()) >= cache.max_len:
            raise ValueError(f"forward_cached: position {int(positions.max())} does not fit the cache "
                             f"(max_len {cache.max_len})")
        if not bool(start_pos.any()):
            hidden = self._prefill(input_ids, cache, slots, positions)
        else:
            steps = [self.decode_step(input_ids[:, t:t + 1], cache, slots, positions[:, t:t + 1],
                                      int(positions[:, t].max()) + 1, with_logits=False).hidden
                     for t in range(T)]
            hidden = torch.cat(steps, dim=1)
        logits = self.lm_head(hidden) if with_logits else hidden.new_empty(B, T, 0)
        return ModelOutput(logits=logits, hidden=hidden)

    def _prefill(self, input_ids: Tensor, cache: V4Cache, slots: Tensor, positions: Tensor) -> Tensor:
        rope = self.model.rotary_emb

        def attention(i: int) -> Callable[[Tensor], Tensor]:
            attn, lc = self.model.layers[i].self_attn, cache.layers[i]

            def run(x: Tensor) -> Tensor:
                out = attn(x, positions, rope)
                T, W = x.shape[1], attn.window
                lc.window_pos[slots] = -1  # the slot may hold an earlier sequence
                keep = torch.arange(max(0, T - W), T, device=x.device)
                kv = attn.project(x[:, keep], positions[:, keep], rope)[2]
                lc.window[slots[:, None], keep % W] = kv.to(lc.window.dtype)
                lc.window_pos[slots[:, None], keep % W] = keep
                if lc.compressor is not None:
                    _fill_block_state(attn.compressor, lc.compressor, x, slots, rope)
                if lc.indexer is not None:
                    _fill_block_state(attn.compressor.indexer, lc.indexer, x, slots, rope)
                return out

            return run

        return self.body(input_ids, positions, attention)[0]

    def decode_step(self, input_ids: Tensor, cache: V4Cache, slots: Tensor, positions: Tensor,
                    length: int, with_logits: bool = True) -> ModelOutput:
        """One new token per row (``input_ids`` [B, 1] at ``positions`` [B, 1]) after its cached
        prefix; ``length`` = max(positions) + 1. Call under ``no_grad`` / ``inference_mode``."""
        if input_ids.shape[1] != 1:
            raise ValueError(f"decode_step: DeepSeek-V4 decodes one token per row, got {input_ids.shape[1]}")
        rope, pos = self.model.rotary_emb, positions[:, 0]

        def attention(i: int) -> Callable[[Tensor], Tensor]:
            attn, lc = self.model.layers[i].self_attn, cache.layers[i]

            def run(x: Tensor) -> Tensor:
                q, q_latent, kv, cos, sin = attn.project(x, positions, rope)
                W = attn.window
                lc.window[slots, pos % W] = kv[:, 0].to(lc.window.dtype)
                lc.window_pos[slots, pos % W] = pos
                keys, held = lc.window[slots], lc.window_pos[slots]
                allowed = (held >= 0) & (held <= pos[:, None]) & (held > pos[:, None] - W)
                comp = attn.compressor
                if comp is not None:
                    _advance_block_state(comp, lc.compressor, x, pos, slots, rope)
                    n = length // comp.rate  # blocks closed by the furthest row
                    entries = lc.compressor.entries[slots, :n]
                    if lc.indexer is not None:  # CSA: attend to the top-k entries only (gathered)
                        _advance_block_state(comp.indexer, lc.indexer, x, pos, slots, rope)
                        index_keys = lc.indexer.entries[slots, :n]
                        top, seen = comp.indexer.top_entries(x, q_latent, positions, index_keys, rope)
                        top, seen = top[:, 0], seen[:, 0]
                        entries = entries.gather(1, top[..., None].expand(-1, -1, entries.shape[-1]))
                    else:
                        seen = torch.arange(n, device=x.device) < ((pos + 1) // comp.rate)[:, None]
                    keys = torch.cat([keys, entries.to(keys.dtype)], dim=1)
                    allowed = torch.cat([allowed, seen], dim=-1)
                return attn.output(attn.attend(q, keys, allowed[:, None]), cos, sin)

            return run

        hidden = self.body(input_ids, positions, attention)[0]
        logits = self.lm_head(hidden) if with_logits else hidden.new_empty(*hidden.shape[:-1], 0)
        return ModelOutput(logits=logits, hidden=hidden)
