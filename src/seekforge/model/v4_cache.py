"""Cached inference for DeepSeek-V4: the window + compressed caches, prefill and one-token decode.

What a V4 layer must remember about a sequence to decode its next token:

    window      the roped key (= value) of its last ``sliding_window`` tokens: a ring buffer indexed
                by position mod n_win, with the position each entry holds (-1: empty)
    entries     one compressed entry per closed block of m tokens (CSA: m = 4, HCA: m' = 128)
    raw ring    the pool inputs (kv and gate projections) of the last m tokens, or 2m with CSA's
                overlapping blocks: when a token closes a block, its entry is pooled from here
    indexer     CSA only: the same three for the lightning indexer's small keys

So the cache holds n_win + L/m entries per layer, not L. A prompt is prefilled with the full-sequence
forward and the cache filled from it. Tokens that continue a cached sequence (``start_pos > 0``: a
prompt chunk after the first) run as one forward: each layer's queries attend to [the window ring |
the chunk's own keys | the compressed entries], with the masks and top-k selection of the full
forward, after the compressor and indexer states have pooled the blocks the chunk closes; the ring
takes the chunk's last keys afterwards. Each decoded token goes through :meth:`decode_step`, which
writes its key, pools a block when the token closes one, and attends to [window | entries] (for
CSA the top-k entries gathered, not a mask over all of them).
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


def _advance_block_state(comp, state: BlockState, x: Tensor, positions: Tensor, slots: Tensor, rope) -> None:
    """New tokens x [B, T, d] at consecutive positions [B, T] after each row's cached prefix: store
    their pool inputs in the raw ring and pool every block w they close (with block w-1 for CSA)
    into entry w. One decoded token is the case T = 1."""
    B, T = positions.shape
    ring, m = state.raw_kv.shape[1], comp.rate
    device, start = x.device, positions[:, 0]
    raw_kv, raw_gate = comp.project(x, positions)
    # Each row's pool inputs at positions start - R .. start + T - 1: the ring's R, then the new
    # tokens'. Slots of negative positions hold leftovers that only entry 0's missing predecessor
    # would read, and that predecessor is gated out below.
    seq_pos = start[:, None] + torch.arange(-ring, T, device=device)
    rows = slots[:, None]
    seq_kv = torch.cat([state.raw_kv[rows, seq_pos[:, :ring] % ring], raw_kv.to(state.raw_kv.dtype)], dim=1)
    seq_gate = torch.cat([state.raw_gate[rows, seq_pos[:, :ring] % ring], raw_gate.to(state.raw_gate.dtype)],
                         dim=1)
    state.raw_kv[rows, seq_pos[:, T:] % ring] = seq_kv[:, T:]
    state.raw_gate[rows, seq_pos[:, T:] % ring] = seq_gate[:, T:]
    first, end = start // m, (start + T) // m  # entries closed before / after these tokens
    K = int((end - first).max())
    if K == 0:
        return
    w = first[:, None] + torch.arange(K, device=device)  # [B, K]: the blocks closed now (where < end)
    closed_now = w < end[:, None]
    blocks = 2 if comp.overlap else 1
    span = w[..., None] * m + torch.arange((1 - blocks) * m, m, device=device)  # the blocks' positions
    at = (span - start[:, None, None] + ring).clamp(0, ring + T - 1)  # -> index into seq_*
    batch = torch.arange(B, device=device)[:, None, None]
    kv = seq_kv[batch, at].view(B * K, blocks, m, -1)
    gate = seq_gate[batch, at].view(B * K, blocks, m, -1)
    w = w.reshape(-1)
    if comp.overlap:  # block 0 has no predecessor: its slots get weight 0
        gate[:, 0] = gate[:, 0].masked_fill((w < 1)[:, None, None], float("-inf"))
    block_ids = w[:, None] + torch.arange(1 - blocks, 1, device=device)
    entries = comp.pool(kv, gate, block_ids, rope)[:, -1].view(B, K, -1)
    state.entries[rows.expand(B, K)[closed_now], w.view(B, K)[closed_now]] = \
        entries[closed_now].to(state.entries.dtype)


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
            hidden = self._continue(input_ids, cache, slots, positions)
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

    def _continue(self, input_ids: Tensor, cache: V4Cache, slots: Tensor, positions: Tensor) -> Tensor:
        """Tokens [B, T] at positions start[b] .. start[b] + T - 1 after each row's cached prefix
        (a row with start 0 begins a new sequence). Each layer's queries attend to [the window ring's
        keys | the tokens' own keys | the compressed entries], with the masks of the full forward."""
        rope, start = self.model.rotary_emb, positions[:, :1]

        def attention(i: int) -> Callable[[Tensor], Tensor]:
            attn, lc = self.model.layers[i].self_attn, cache.layers[i]

            def run(x: Tensor) -> Tensor:
                q, q_latent, kv, cos, sin = attn.project(x, positions, rope)
                B, T, W = x.shape[0], x.shape[1], attn.window
                # The ring holds keys of positions before the tokens (entries at or past start are
                # an earlier sequence's); the tokens see each other causally; both within W.
                held = lc.window_pos[slots][:, None]  # [B, 1, W]
                from_ring = (held >= 0) & (held < start[..., None]) & (held > positions[..., None] - W)
                t = torch.arange(T, device=x.device)
                own = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - W)
                keys = torch.cat([lc.window[slots], kv.to(lc.window.dtype)], dim=1)
                allowed = torch.cat([from_ring, own.expand(B, T, T)], dim=-1)
                comp = attn.compressor
                if comp is not None:
                    _advance_block_state(comp, lc.compressor, x, positions, slots, rope)
                    n = (int(positions.max()) + 1) // comp.rate  # blocks closed by the furthest row
                    entries = lc.compressor.entries[slots, :n]
                    if lc.indexer is not None:  # CSA: the indexer's top-k per query, as a mask
                        _advance_block_state(comp.indexer, lc.indexer, x, positions, slots, rope)
                        index_keys = lc.indexer.entries[slots, :n]
                        seen = comp.indexer.choose(x, q_latent, positions, index_keys, rope)
                    else:
                        seen = torch.arange(n, device=x.device) < ((positions + 1) // comp.rate)[..., None]
                    keys = torch.cat([keys, entries.to(keys.dtype)], dim=1)
                    allowed = torch.cat([allowed, seen], dim=-1)
                # Queries in blocks, as in the full forward, so the scores stay [block, keys].
                block = max(attn.QUERY_BLOCK, W)
                attended = torch.cat([attn.attend(q[:, s:s + block], keys, allowed[:, s:s + block])
                                      for s in range(0, T, block)], dim=1)
                # Only now the ring takes the tokens' last W keys: the queries above needed the
                # keys these overwrite.
                last = positions[:, max(0, T - W):]
                lc.window[slots[:, None], last % W] = kv[:, -last.shape[1]:].to(lc.window.dtype)
                lc.window_pos[slots[:, None], last % W] = last
                return attn.output(attended, cos, sin)

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
                    _advance_block_state(comp, lc.compressor, x, positions, slots, rope)
                    n = length // comp.rate  # blocks closed by the furthest row
                    entries = lc.compressor.entries[slots, :n]
                    if lc.indexer is not None:  # CSA: attend to the top-k entries only (gathered)
                        _advance_block_state(comp.indexer, lc.indexer, x, positions, slots, rope)
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
