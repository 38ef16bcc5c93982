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

from seekforge.model.accounting import arch_from_v4_config, param_counts
from seekforge.model.v4_config import CSA, HCA, V4Config


@dataclass
class V4Counts:
    total: int  # every parameter
    active: int  # per token: all but the routed experts a token does not use
    embedding: int  # embed_tokens + lm_head


def parameter_counts(cfg: V4Config) -> V4Counts:
    """Totals from the shared accounting (``seekforge.model.accounting``, which ``seekforge plan``
    uses too). The hash layers' [vocab, K] token -> expert table is a buffer, not a parameter."""
    pc = param_counts(arch_from_v4_config(cfg))
    return V4Counts(total=pc["total"], active=pc["active"], embedding=pc["embedding"])


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
    """Forward FLOPs per token: 2 x active matrix parameters (the embedding lookup, norms and biases
    excluded) + attention."""
    matmul_active = param_counts(arch_from_v4_config(cfg))["matmul_active"]
    return 2 * matmul_active + attention_flops_per_token(cfg, context)


def mla_cache_bytes(context: int, layers: int, latent: int = 512 + 64, bytes_per_elem: int = 2) -> float:
    """V3's MLA cache for the same sequence: d_c + d_r (512 + 64 in V3) numbers per token per layer."""
    return float(context * layers * latent * bytes_per_elem)
