"""Prefix tuning native to Multi-head Latent Attention: learned latents prepended in every layer.

P-tuning v2 / PEFT prefix tuning learn P virtual keys and values *per head* per layer. MLA caches
neither: each token is one normalised latent ``c`` [d_c] plus one shared RoPE key ``k_pe`` [d_r],
and heads are expanded from ``c`` by ``kv_b_proj``. So the natural prefix here is P learned
entries of the latent cache per layer:

    prefix_kv [P, d_c]   (what ``kv_a_layernorm`` would output)
    prefix_pe [P, d_r]   (a rope key; learned directly, so it has no position of its own)

Every query attends to all P entries plus its causal past. Keys and values of the prefix go
through the layer's (frozen) ``kv_b_proj`` like any token's, so a prefix costs (d_c + d_r)·P
numbers per layer - e.g. 576·16 = 9,216 per layer for V3 shapes, 1/56 of a per-head prefix.

Inference needs nothing new: in the absorbed decode path the prefix rows are put in front of
the cached latents, so ``forward_cached`` (and therefore ``seekforge.infer``) just works.

How: :func:`attach_prefix` turns each main layer's ``MLAttention`` into
:class:`PrefixMLAttention` (same weights, two extra parameters). No edit to the model file is
needed, but the two forward paths below mirror ``MLAttention.forward`` / ``forward_absorbed``:
if those change, update these (tests/finetune/test_prefix.py compares both paths).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekforge.model.cache import CacheView, write_cache
from seekforge.model.model import MLAttention

PREFIX_TYPE = "SEEKFORGE_MLA_PREFIX"


class PrefixMLAttention(MLAttention):
    """MLAttention with ``prefix_kv`` [P, d_c] and ``prefix_pe`` [P, d_r] prepended to the keys."""

    prefix_kv: nn.Parameter
    prefix_pe: nn.Parameter

    def _prefix(self, B: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        P = self.prefix_kv.shape[0]
        return (
            self.prefix_kv.to(dtype)[None].expand(B, P, self.d_c),
            self.prefix_pe.to(dtype)[None].expand(B, P, self.d_r),
        )

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None = None,
        cache: CacheView | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        H, P = self.n_heads, self.prefix_kv.shape[0]
        q_nope, q_pe, c, k_pe = self._project(x, cos, sin)
        if cache is not None:  # the cache holds real tokens only; the prefix is added on read
            write_cache(cache, c, k_pe)
        pkv, ppe = self._prefix(B, c.dtype)
        c_all, pe_all = torch.cat([pkv, c], dim=1), torch.cat([ppe, k_pe], dim=1)  # [B, P+T, .]
        S = P + T
        kv = self.kv_b_proj(c_all).view(B, S, H, self.d_n + self.d_v)
        k_nope, v = kv.split([self.d_n, self.d_v], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, pe_all[:, :, None, :].expand(B, S, H, self.d_r)], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        if self.d_v < self.d_qk:
            v = F.pad(v, (0, self.d_qk - self.d_v))
        # is_causal would align the triangle top-left (wrong with P extra keys): build the mask.
        own = (
            mask
            if mask is not None
            else torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
        )
        own = own.expand(B, 1, T, T)
        allowed = torch.cat([own.new_ones(B, 1, T, P), own], dim=-1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)
        o = o[..., : self.d_v].transpose(1, 2).reshape(B, T, H * self.d_v)
        return self.o_proj(o)

    def forward_absorbed(self, x: Tensor, cos: Tensor, sin: Tensor, cache: CacheView) -> Tensor:
        B, T, _ = x.shape
        H, P, S = self.n_heads, self.prefix_kv.shape[0], cache.length
        positions = cache.positions
        q_nope, q_pe, c, k_pe = self._project(x, cos, sin)
        write_cache(cache, c, k_pe)
        pkv, ppe = self._prefix(B, cache.kv.dtype)
        c_all = torch.cat([pkv, cache.kv[cache.slots, :S]], dim=1)  # [B, P+S, d_c]
        pe_all = torch.cat([ppe, cache.pe[cache.slots, :S]], dim=1)
        w = self._kv_b_weight().view(H, self.d_n + self.d_v, self.d_c)
        w_uk, w_uv = w[:, : self.d_n], w[:, self.d_n :]
        q_lat = torch.einsum("bthn,hnc->bhtc", q_nope, w_uk)
        q = torch.cat([q_lat, q_pe.transpose(1, 2)], dim=-1)
        k = torch.cat([c_all, pe_all], dim=-1)[:, None]
        past = torch.arange(S, device=x.device)[None, None, :] <= positions[:, :, None]  # [B, T, S]
        allowed = torch.cat([past.new_ones(B, T, P), past], dim=-1)
        a = F.scaled_dot_product_attention(
            q, k, c_all[:, None], attn_mask=allowed[:, None], scale=self.scale, enable_gqa=True
        )
        o = torch.einsum("bhtc,hvc->bthv", a, w_uv).reshape(B, T, H * self.d_v)
        return self.o_proj(o)


@torch.no_grad()
def _sample_latents(model, input_ids: Tensor | None, P: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """Latents (c, pre-RoPE k_pe) of P real tokens per layer: an in-distribution starting point.

    Random vectors would be far from what the frozen ``kv_b_proj`` was trained on; latents of real
    text (from the training data when given) start the prefix as "P ordinary earlier tokens".
    """
    g = torch.Generator().manual_seed(seed)
    layers = model.main_layers
    ref = model.lm_head.weight
    if input_ids is None:
        input_ids = torch.randint(0, model.config.vocab_size, (1, max(P, 8)), generator=g)
    input_ids = input_ids.to(ref.device)
    captured: list[Tensor] = []
    hooks = [
        layer.self_attn.kv_a_proj_with_mqa.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
        for layer in layers
    ]
    try:
        model(input_ids)
    finally:
        for h in hooks:
            h.remove()
    out = []
    flat_n = input_ids.numel()
    pick = torch.randint(0, flat_n, (P,), generator=g).to(ref.device)
    for layer, raw in zip(layers, captured):
        attn = layer.self_attn
        raw = raw.reshape(flat_n, -1)[pick]
        c, k_pe = raw.split([attn.d_c, attn.d_r], dim=-1)
        out.append((attn.kv_a_layernorm(c), k_pe))
    return out


def attach_prefix(
    model, num_virtual_tokens: int, input_ids: Tensor | None = None, seed: int = 0
) -> list[nn.Parameter]:
    """Give every main layer of a seekforge model a learned MLA prefix; return the new parameters."""
    if num_virtual_tokens < 1:
        raise ValueError(f"prefix.num_virtual_tokens must be >= 1 (got {num_virtual_tokens})")
    if getattr(model.config, "is_dsa", False):
        # A prefix would turn each DSA layer back into dense MLA: its queries would skip the lightning
        # indexer's top-k and attend to every token, which is not the model that was trained.
        raise ValueError("method=prefix: prefix tuning is built for dense MLA layers; this model uses "
                         "DeepSeek-V3.2 sparse attention (index_topk is set). Use method=lora instead")
    init = _sample_latents(model, input_ids, num_virtual_tokens, seed)
    params = []
    for layer, (c, pe) in zip(model.main_layers, init):
        attn = layer.self_attn
        attn.__class__ = PrefixMLAttention  # same module, two more parameters, prefix-aware forwards
        # fp32 even over a bf16 base: these few numbers are all that trains (cast at use).
        attn.prefix_kv = nn.Parameter(c.clone().float())
        attn.prefix_pe = nn.Parameter(pe.clone().float())
        params += [attn.prefix_kv, attn.prefix_pe]
    return params


def prefix_state_dict(model) -> dict[str, Tensor]:
    return {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if name.endswith((".prefix_kv", ".prefix_pe"))
    }


def load_prefix(model, state: dict[str, Tensor]) -> None:
    """Attach a saved prefix (``prefix_state_dict`` keys) to a freshly loaded base model."""
    P = next(iter(state.values())).shape[0]
    attach_prefix(model, P)
    own = dict(model.named_parameters())
    missing = [k for k in own if k.endswith((".prefix_kv", ".prefix_pe")) and k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"prefix adapter does not fit this model: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    with torch.no_grad():
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(
                    f"prefix adapter: {k} has shape {list(v.shape)}, the model needs {list(own[k].shape)} "
                    "(adapter trained on a different base?)"
                )
            own[k].copy_(v)
