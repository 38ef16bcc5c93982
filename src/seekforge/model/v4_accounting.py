"""Sizes and costs of a DeepSeek-V4 model, computed from the config alone (``seekforge model info``).

Cache: every layer keeps its last ``sliding_window`` keys (K = V: one c-wide vector per token); CSA
layers also keep one entry per m tokens plus the indexer's c_I-wide key per entry, HCA layers one
entry per m' tokens. So a sequence of L tokens holds, per layer, min(L, n_win) + L/m entries.
Attention FLOPs per token (scores and weighted sum, 2 x 2 x H x c per attended entry): the window,
plus min(index_topk, L/m) entries in CSA layers (the indexer scores all L/m of them with its n_I
heads of width c_I) or L/m' entries in HCA layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from seekforge.model.v4_config import CSA, HCA, V4Config


@dataclass
class V4Counts:
    total: int  # every parameter
    active: int  # per token: all but the routed experts a token does not use
    embedding: int  # embed_tokens + lm_head


def parameter_counts(cfg: V4Config) -> V4Counts:
    d, H, c, E, K, inter = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.n_routed_experts,
                            cfg.num_experts_per_tok, cfg.moe_intermediate_size)
    n = cfg.hc_mult
    hc = (2 + n) * n * (n * d + 1) + 3
    attn = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * H * c + d * c + c
    attn += H * c * cfg.o_lora_rank + cfg.o_groups * cfg.o_lora_rank * d + H
    expert = 3 * d * inter
    total = active = 0
    for kind in cfg.layer_types:
        layer = attn + 2 * hc + 2 * d + E * d + expert * (E + 1)  # router bias: a buffer
        if kind == CSA:
            m = cfg.compress_rates[CSA]
            c_i, n_i = cfg.index_head_dim, cfg.index_n_heads
            layer += 2 * d * 2 * c + m * 2 * c + c  # two-series kv/gate projections, block bias, norm
            layer += 2 * d * 2 * c_i + m * 2 * c_i + c_i + cfg.q_lora_rank * n_i * c_i + d * n_i
        elif kind == HCA:
            layer += 2 * d * c + cfg.compress_rates[HCA] * c + c
        total += layer
        active += layer - (E - K) * expert
    embedding = 2 * cfg.vocab_size * d
    head = n * (n * d) + n + 1 + d  # hc_head + final norm
    # hash layers hold a [vocab, K] token -> expert table (a buffer, not a parameter): not counted
    return V4Counts(total=total + embedding + head, active=active + embedding + head, embedding=embedding)


def cache_bytes(cfg: V4Config, context: int, bytes_per_elem: int = 2) -> dict[str, float]:
    """Bytes held for ONE sequence of ``context`` tokens, per layer type summed over its layers."""
    win = min(context, cfg.sliding_window)
    out = {kind: 0.0 for kind in ("sliding_attention", CSA, HCA)}
    for kind in cfg.layer_types:
        entries = win * cfg.head_dim
        if kind == CSA:
            blocks = context // cfg.compress_rates[CSA]
            entries += blocks * (cfg.head_dim + cfg.index_head_dim)
        elif kind == HCA:
            entries += context // cfg.compress_rates[HCA] * cfg.head_dim
        out[kind] += entries * bytes_per_elem
    return out


def attention_flops_per_token(cfg: V4Config, context: int) -> float:
    """Forward FLOPs a token at position ``context`` spends attending (projections excluded)."""
    per_entry = 4 * cfg.num_attention_heads * cfg.head_dim
    total = 0.0
    for kind in cfg.layer_types:
        total += per_entry * min(context, cfg.sliding_window)
        if kind == CSA:
            blocks = context // cfg.compress_rates[CSA]
            indexer = 2 * cfg.index_n_heads * cfg.index_head_dim * blocks
            total += per_entry * min(cfg.index_topk, blocks) + indexer
        elif kind == HCA:
            total += per_entry * (context // cfg.compress_rates[HCA])
    return total


def flops_per_token(cfg: V4Config, context: int) -> float:
    """Forward FLOPs per token: 2 x active matrix parameters (embedding lookup excluded) + attention."""
    counts = parameter_counts(cfg)
    return 2 * (counts.active - cfg.vocab_size * cfg.hidden_size) + attention_flops_per_token(cfg, context)


def mla_cache_bytes(context: int, layers: int, latent: int = 512 + 64, bytes_per_elem: int = 2) -> float:
    """V3's MLA cache for the same sequence: d_c + d_r (512 + 64 in V3) numbers per token per layer."""
    return float(context * layers * latent * bytes_per_elem)
