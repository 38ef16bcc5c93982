"""Analytic parameter, FLOP and KV-cache accounting from a config alone (no model is built).

Used by ``seekforge model info`` and ``seekforge plan``. Everything here is arithmetic on shapes,
so it works for the 671B DeepSeek-V3 as quickly as for the tiny test model.

Two inputs are accepted:

* a seekforge :class:`~seekforge.model.config.ModelConfig` (DeepSeek-V3/V2: MLA + DeepSeekMoE + MTP)
  or :class:`~seekforge.model.v4_config.V4Config` (DeepSeek-V4: sliding window + compressed
  attention, mHC residual streams, an all-MoE stack);
* an :class:`Arch`, a small generic description (attention kind, dense or MoE feed-forward per
  layer) that the planner also builds from Llama / Qwen2 / Qwen3 / Mixtral / Qwen2-MoE
  ``config.json`` files, so one estimator serves every family.

Conventions (symbols: d hidden, H heads, d_q / d_c query / KV latent ranks, d_n / d_r / d_v nope /
rope / value head dims, E routed and S shared experts, K experts per token):

* Parameter shapes are those of the Hugging Face DeepSeek-V3 state dict (transformers'
  ``modeling_deepseek_v3.py``). All feed-forward blocks are SwiGLU (3 matrices). The MoE
  router bias ``e_score_correction_bias`` is a buffer without gradient, so it is *not* a parameter.
* ``active`` = parameters one token touches: everything except the routed experts it is not sent
  to, i.e. shared experts + K of E routed experts, the full router, embedding and head counted.
  With this convention V3 has 37.55B (the report, arXiv:2412.19437, says 37B); DeepSeek's
  README_WEIGHTS.md in the deepseek-ai/DeepSeek-V3 repository says 36.7B (it counts differently).
* MTP modules are counted apart (``mtp``): their own block, ``enorm``/``hnorm``/``eh_proj`` and
  final norm; the embedding and output head they share with the main model are not repeated.
  ``total`` is the main model only (V3: 671B; the Hub's "685B" adds the MTP copy).

FLOPs per trained token (Kaplan/Chinchilla's C ≈ 6·N·D plus the attention term of PaLM App. B):

    F = 6 · N_matmul_active  +  6 · Σ_layers H · (d_qk + d_v) · T

* ``N_matmul_active`` = active parameters that are matmul weights: the LM head and router are in,
  the embedding lookup is *out* (a gather, no multiply-adds), norms and biases are out.
  The factor 6 = 2 (multiply-add) for the forward pass + 4 for the backward (input and weight grads).
* Attention: per layer and token, QKᵀ costs 2·H·d_qk·T and AV 2·H·d_v·T in the forward pass, ×3 for
  training. This counts the full T×T score matrix (non-causal), the convention of PaLM, nanochat's
  ``estimate_flops`` and torchtitan (6·L·H·(d_qk+d_v)·T); it is also how the DeepSeek-V3 44% MFU in
  ``data_and_cost_notes.md`` §16 is computed. ``causal=True`` halves the term (what a causal
  flash kernel really executes).
* MTP depth k runs one more block and the head on every token, so by default it is included
  (``include_mtp=True``) — seekforge's trainer trains it. Recomputation (activation checkpointing)
  is *not* counted: these are model FLOPs, the numerator of MFU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from seekforge.model.config import ModelConfig
from seekforge.model.v4_config import CSA, HCA, V4Config


# ------------------------------------------------------------------------------------------------
# The generic architecture description
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attention:
    """One attention block. ``kind="mla"`` is DeepSeek's latent attention, ``"gqa"`` covers MHA/GQA/MQA,
    ``"v4"`` is DeepSeek-V4's (one shared key = value head of ``qk_head_dim``, a sliding window, and
    in CSA / HCA layers a compressed branch)."""

    kind: Literal["mla", "gqa", "v4"]
    num_heads: int
    qk_head_dim: int  # per query head (MLA: d_n + d_r)
    v_head_dim: int
    num_kv_heads: int = 0  # GQA only
    q_lora_rank: int | None = None  # MLA only; None -> plain q_proj
    kv_lora_rank: int = 0  # MLA only (d_c)
    rope_head_dim: int = 0  # MLA only (d_r, the shared RoPE key)
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v
    qk_norm: bool = False  # Qwen3 normalises q and k per head (two [head_dim] RMSNorm weights)
    # DeepSeek Sparse Attention (V3.2), MLA only: the lightning indexer and the k tokens it keeps
    index_topk: int = 0  # 0 = dense attention
    index_n_heads: int = 0
    index_head_dim: int = 0
    # DeepSeek-V4 only. A CSA layer has compress_rate m (overlapping blocks) and the indexer fields
    # above; an HCA layer compress_rate m' and no indexer; a sliding-window layer compress_rate 0.
    window: int = 0
    compress_rate: int = 0
    o_groups: int = 0  # grouped output projection: o_groups blocks of heads -> o_lora_rank each -> d
    o_lora_rank: int = 0


@dataclass(frozen=True)
class FeedForward:
    """A SwiGLU block: dense (``num_experts == 0``) or MoE with optional always-on shared experts."""

    intermediate_size: int = 0  # dense width
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    shared_intermediate_size: int = 0  # total width of the shared expert(s): S·I_m for DeepSeek
    shared_expert_gate: bool = False  # Qwen2-MoE gates its shared expert with a [1, d] linear
    clipped: bool = False  # DeepSeek-V4 clips the SwiGLU inputs (more tensors kept for backward)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


@dataclass(frozen=True)
class Layer:
    attention: Attention
    ffn: FeedForward
    hyper_connections: int = 0  # DeepSeek-V4's mHC: residual streams n (0 = one plain residual)
    sinkhorn_iters: int = 0  # mHC's Sinkhorn-Knopp iterations (memory only)


@dataclass(frozen=True)
class Arch:
    """Everything the accounting needs about a decoder-only transformer."""

    name: str
    vocab_size: int
    hidden_size: int
    layers: tuple[Layer, ...]
    tie_word_embeddings: bool = False
    mtp_layers: tuple[Layer, ...] = field(default=())  # DeepSeek-V3 multi-token prediction depths
    # seekforge's model computes its loss with a fused cross-entropy that keeps only the logits and
    # their logsumexp (no fp32 log-probabilities); HF/torchtitan models use the stock one. Memory only.
    fused_cross_entropy: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_moe(self) -> bool:
        return any(layer.ffn.is_moe for layer in self.layers)


def arch_from_model_config(cfg: ModelConfig, name: str = "deepseek") -> Arch:
    """The :class:`Arch` of a seekforge/DeepSeek ``ModelConfig``.

    MLA in every layer; a dense SwiGLU in the first ``first_k_dense_replace`` layers, MoE after.
    """
    attn = Attention(
        kind="mla", num_heads=cfg.num_attention_heads, qk_head_dim=cfg.qk_head_dim, v_head_dim=cfg.v_head_dim,
        q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, rope_head_dim=cfg.qk_rope_head_dim,
        index_topk=cfg.index_topk or 0, index_n_heads=cfg.index_n_heads if cfg.is_dsa else 0,
        index_head_dim=cfg.index_head_dim if cfg.is_dsa else 0,
    )
    dense = FeedForward(intermediate_size=cfg.intermediate_size)
    moe = FeedForward(
        num_experts=cfg.n_routed_experts, experts_per_token=cfg.num_experts_per_tok,
        expert_intermediate_size=cfg.moe_intermediate_size,
        shared_intermediate_size=cfg.n_shared_experts * cfg.moe_intermediate_size,
    )

    def layer(i: int) -> Layer:
        return Layer(attn, moe if cfg.is_moe_layer(i) else dense)

    L = cfg.num_hidden_layers
    return Arch(
        name=name, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        layers=tuple(layer(i) for i in range(L)), tie_word_embeddings=cfg.tie_word_embeddings,
        # MTP block k sits at layer index L + k - 1 and follows the dense/MoE rule of that index.
        mtp_layers=tuple(layer(L + k) for k in range(cfg.num_nextn_predict_layers)),
        fused_cross_entropy=True,
    )


def arch_from_v4_config(cfg: V4Config, name: str = "deepseek_v4") -> Arch:
    """The :class:`Arch` of a DeepSeek-V4 config: per layer its attention type, every FFN a MoE
    (hash-routed layers have the same shapes as learned-router ones), mHC on every block. V4 has no
    MTP module in transformers, so none is counted."""
    def attention(kind: str) -> Attention:
        csa = kind == CSA
        return Attention(
            kind="v4", num_heads=cfg.num_attention_heads, qk_head_dim=cfg.head_dim, v_head_dim=cfg.head_dim,
            num_kv_heads=1, q_lora_rank=cfg.q_lora_rank, rope_head_dim=cfg.qk_rope_head_dim,
            index_topk=cfg.index_topk if csa else 0, index_n_heads=cfg.index_n_heads if csa else 0,
            index_head_dim=cfg.index_head_dim if csa else 0, window=cfg.sliding_window,
            compress_rate=cfg.compress_rates[kind] if kind in (CSA, HCA) else 0,
            o_groups=cfg.o_groups, o_lora_rank=cfg.o_lora_rank,
        )

    moe = FeedForward(num_experts=cfg.n_routed_experts, experts_per_token=cfg.num_experts_per_tok,
                      expert_intermediate_size=cfg.moe_intermediate_size,
                      shared_intermediate_size=cfg.moe_intermediate_size, clipped=True)
    return Arch(name=name, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                layers=tuple(Layer(attention(kind), moe, cfg.hc_mult, cfg.hc_sinkhorn_iters)
                             for kind in cfg.layer_types),
                fused_cross_entropy=True)


def as_arch(model: ModelConfig | V4Config | Arch) -> Arch:
    if isinstance(model, Arch):
        return model
    if isinstance(model, ModelConfig):
        return arch_from_model_config(model)
    if isinstance(model, V4Config):
        return arch_from_v4_config(model)
    raise TypeError(f"expected a ModelConfig, a V4Config or an Arch, got {type(model).__name__}")


# ------------------------------------------------------------------------------------------------
# Per-block counts
# ------------------------------------------------------------------------------------------------
def attention_params(a: Attention, d: int) -> dict[str, int]:
    """Parameters of one attention block: ``matmul`` (linear weights) and ``other`` (norms, biases)."""
    H = a.num_heads
    if a.kind == "v4":
        return _v4_attention_params(a, d)
    if a.kind == "mla":
        if a.q_lora_rank:  # q_a_proj [d_q, d], q_a_layernorm [d_q], q_b_proj [H·d_qk, d_q]
            q_mm, q_other = d * a.q_lora_rank + a.q_lora_rank * H * a.qk_head_dim, a.q_lora_rank
        else:  # q_proj [H·d_qk, d]
            q_mm, q_other = d * H * a.qk_head_dim, 0
        d_n = a.qk_head_dim - a.rope_head_dim
        mm = (q_mm
              + d * (a.kv_lora_rank + a.rope_head_dim)  # kv_a_proj_with_mqa [d_c + d_r, d]
              + a.kv_lora_rank * H * (d_n + a.v_head_dim)  # kv_b_proj [H·(d_n + d_v), d_c]
              + H * a.v_head_dim * d)  # o_proj [d, H·d_v]
        other = q_other + a.kv_lora_rank  # + kv_a_layernorm [d_c]
        if a.index_topk:  # indexer: wq_b [H_I·d_I, d_q], wk [d_I, d], weights_proj [H_I, d]; k_norm w + b
            mm += (a.q_lora_rank or 0) * a.index_n_heads * a.index_head_dim + d * a.index_head_dim \
                + d * a.index_n_heads
            other += 2 * a.index_head_dim
        return {"matmul": mm, "other": other}
    kv = a.num_kv_heads or H
    q_out, kv_out = H * a.qk_head_dim, kv * a.qk_head_dim
    mm = d * q_out + d * kv_out + d * kv * a.v_head_dim + H * a.v_head_dim * d
    other = (q_out + kv_out + kv * a.v_head_dim) if a.qkv_bias else 0
    if a.qk_norm:
        other += 2 * a.qk_head_dim
    return {"matmul": mm, "other": other}


def _v4_attention_params(a: Attention, d: int) -> dict[str, int]:
    """DeepSeek-V4 attention (shapes of transformers' ``DeepseekV4Attention``; c = head_dim, q_r =
    q_lora_rank, g x o_r the grouped output): q_a [q_r, d] + norm, q_b [H·c, q_r], one key = value
    projection [c, d] + norm, o_a (H·c -> o_r per group, so H·c·o_r), o_b [d, g·o_r], H sink logits.
    A compressor pools blocks from kv and gate projections of the block's tokens, with a learned
    position bias per block offset: two series of width c in CSA (overlapping blocks), one in HCA.
    CSA's indexer has its own such compressor of width c_I, a query projection [H_I·c_I, q_r] and
    head weights [H_I, d]."""
    H, c, q_r = a.num_heads, a.qk_head_dim, a.q_lora_rank or 0
    mm = d * q_r + q_r * H * c + d * c + H * c * a.o_lora_rank + a.o_groups * a.o_lora_rank * d
    other = q_r + c + H
    m = a.compress_rate
    series = 2 if a.index_topk else 1  # CSA's overlapping blocks pool two series
    if m:
        mm += 2 * d * series * c  # kv and gate projections
        other += m * series * c + c  # position bias per block offset, entry norm
    if a.index_topk:
        c_i, n_i = a.index_head_dim, a.index_n_heads
        mm += 2 * d * 2 * c_i + q_r * n_i * c_i + d * n_i
        other += m * 2 * c_i + c_i
    return {"matmul": mm, "other": other}


def _hyper_connection_params(n: int, d: int) -> dict[str, int]:
    """mHC around one sub-block (Xie et al. 2025, arXiv:2512.24880, as DeepSeek-V4 uses it): from the
    n streams (n·d wide) a [(2 + n)·n, n·d] matrix makes the pre / post weights and the n x n mixing
    logits, plus (2 + n)·n biases and 3 scales."""
    return {"matmul": (2 + n) * n * n * d, "other": (2 + n) * n + 3}


def ffn_params(f: FeedForward, d: int) -> dict[str, int]:
    """Parameters of one feed-forward block, split by role (each SwiGLU MLP of width I has 3·d·I)."""
    if not f.is_moe:
        return {"dense": 3 * d * f.intermediate_size}
    return {
        "router": f.num_experts * d,
        "routed_experts": f.num_experts * 3 * d * f.expert_intermediate_size,
        "shared_experts": 3 * d * f.shared_intermediate_size + (d if f.shared_expert_gate else 0),
    }


def _layer_counts(layer: Layer, d: int) -> dict[str, int]:
    """Totals, active and matmul-active parameters of one block (attention + FFN + its two norms)."""
    att = attention_params(layer.attention, d)
    ffn = ffn_params(layer.ffn, d)
    f = layer.ffn
    if f.is_moe:
        routed_active = f.experts_per_token * 3 * d * f.expert_intermediate_size
        ffn_active = ffn["router"] + ffn["shared_experts"] + routed_active
    else:
        ffn_active = ffn["dense"]
    norms = 2 * d  # input_layernorm + post_attention_layernorm
    hc = {"matmul": 0, "other": 0}
    if layer.hyper_connections:  # one mHC around attention, one around the FFN
        hc = {k: 2 * v for k, v in _hyper_connection_params(layer.hyper_connections, d).items()}
    hc_total = hc["matmul"] + hc["other"]
    total = att["matmul"] + att["other"] + sum(ffn.values()) + norms + hc_total
    active = att["matmul"] + att["other"] + ffn_active + norms + hc_total
    # The Qwen2-MoE shared-expert gate is a [1, d] linear: a (tiny) matmul, kept in ffn_active.
    return {"attention": att["matmul"] + att["other"], "norms": norms, "hyper_connections": hc_total, **ffn,
            "total": total, "active": active, "matmul_active": att["matmul"] + ffn_active + hc["matmul"]}


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def param_counts(model: ModelConfig | Arch) -> dict[str, int]:
    """Parameter counts of the main model, and of the MTP modules apart.

    Keys: ``total``, ``active``, ``embedding`` (input embedding + untied LM head), ``mtp`` (not in
    ``total``), ``matmul_active`` (what the 6N FLOP rule multiplies), and a breakdown
    ``attention``, ``dense_mlp``, ``router``, ``routed_experts``, ``shared_experts``, ``norms``,
    ``embed_tokens``, ``lm_head``, ``hyper_connections`` (DeepSeek-V4's mHC), plus ``mtp_active``
    and ``mtp_matmul_active``.
    """
    arch = as_arch(model)
    d, V = arch.hidden_size, arch.vocab_size
    names = ("attention", "dense_mlp", "router", "routed_experts", "shared_experts", "norms",
             "hyper_connections")
    parts = dict.fromkeys(names, 0)
    active = matmul_active = 0
    for layer in arch.layers:
        c = _layer_counts(layer, d)
        parts["attention"] += c["attention"]
        parts["dense_mlp"] += c.get("dense", 0)
        for key in ("router", "routed_experts", "shared_experts", "hyper_connections"):
            parts[key] += c.get(key, 0)
        parts["norms"] += c["norms"]
        active += c["active"]
        matmul_active += c["matmul_active"]
    parts["norms"] += d  # final model.norm
    if n := arch.layers[-1].hyper_connections:  # mHC's head merges the n streams: [n, n·d], n biases, 1 scale
        parts["hyper_connections"] += n * n * d + n + 1
        active += n * n * d + n + 1
        matmul_active += n * n * d
    embed_tokens = V * d
    lm_head = 0 if arch.tie_word_embeddings else V * d
    embedding = embed_tokens + lm_head
    total = sum(parts.values()) + embedding
    active += d + embedding  # final norm + embedding + head
    # The head is a [V, d] matmul on every token even when tied to the embedding; the lookup is not.
    matmul_active += V * d

    mtp = mtp_active = mtp_matmul_active = 0
    for layer in arch.mtp_layers:
        c = _layer_counts(layer, d)
        own = 2 * d + 2 * d * d + d  # enorm + hnorm, eh_proj [d, 2d], final norm before the shared head
        mtp += c["total"] + own
        mtp_active += c["active"] + own
        # Its block, eh_proj, and one more pass through the (shared) head on every token.
        mtp_matmul_active += c["matmul_active"] + 2 * d * d + V * d
    return {"total": total, "active": active, "embedding": embedding, "mtp": mtp, "mtp_active": mtp_active,
            "matmul_active": matmul_active, "mtp_matmul_active": mtp_matmul_active,
            "embed_tokens": embed_tokens, "lm_head": lm_head, **parts}


def attention_flops_per_token(model: ModelConfig | Arch, seq_len: int, *, causal: bool = False,
                              include_mtp: bool = True) -> float:
    """Training FLOPs per token of the score (QKᵀ) and value (AV) products: 6·Σ H·(d_qk+d_v)·T.

    With DeepSeek Sparse Attention a query attends to min(T, k) tokens and the indexer scores all T
    (:func:`dsa_attention_flops`)."""
    arch = as_arch(model)
    layers = arch.layers + (arch.mtp_layers if include_mtp else ())
    total = 0.0
    for lay in layers:
        a = lay.attention
        if a.kind == "v4":
            total += sum(v4_attention_flops(a, seq_len, causal=causal).values())
        elif a.index_topk:
            f = dsa_attention_flops(a, seq_len, causal=causal)
            total += f["attention"] + f["indexer"]
        else:
            total += 6 * a.num_heads * (a.qk_head_dim + a.v_head_dim) * seq_len * (0.5 if causal else 1.0)
    return total


def dsa_attention_flops(a: Attention, seq_len: int, *, causal: bool = False) -> dict[str, float]:
    """Training FLOPs per token of one DSA layer at context T (same 6x and T conventions as above):

    ``indexer``  scoring every token: H_I·d_I multiply-adds for q·k plus H_I for the head weights;
    ``attention`` MLA over the min(T, k) selected tokens; ``dense`` MLA over all T (what V3 pays);
    ``saved`` = dense - attention - indexer (negative when T is not much larger than k).
    Causal: query t sees min(t + 1, k) tokens, on average T/2 for T <= k and k·(1 - k/2T) above.
    """
    T, k = seq_len, a.index_topk
    per_token = 6 * a.num_heads * (a.qk_head_dim + a.v_head_dim)
    dense = per_token * T * (0.5 if causal else 1.0)
    if k >= T:
        attention = dense
    else:
        attention = per_token * k * ((1 - k / (2 * T)) if causal else 1.0)
    indexer = 6 * a.index_n_heads * (a.index_head_dim + 1) * T * (0.5 if causal else 1.0)
    return {"indexer": indexer, "attention": attention, "dense": dense, "saved": dense - attention - indexer}


def v4_attention_flops(a: Attention, seq_len: int, *, causal: bool = False) -> dict[str, float]:
    """Training FLOPs per token of one DeepSeek-V4 attention layer at context T (the 6x convention
    above; keys and values are c-wide, so one attended entry costs 6·H·2c):

    ``window``      the last min(T, n_win) tokens (causal: query t sees min(t + 1, n_win));
    ``compressed``  CSA: min(k, T/m) selected entries; HCA: all T/m' entries (causal: half);
    ``indexer``     CSA: H_I·(c_I + 1) multiply-adds per entry over all T/m entries (causal: half).
    """
    T, n_win = seq_len, a.window
    per_entry = 6 * a.num_heads * (a.qk_head_dim + a.v_head_dim)

    def causal_mean(limit: float, visible: float) -> float:
        """Mean over queries of min(visible at the query, limit) when visibility grows linearly to
        ``visible``; without causal, min(visible, limit)."""
        if not causal:
            return min(visible, limit)
        return visible / 2 if visible <= limit else limit * (1 - limit / (2 * visible))

    out = {"window": per_entry * causal_mean(n_win, T), "compressed": 0.0, "indexer": 0.0}
    if a.compress_rate:
        entries = T / a.compress_rate
        limit = a.index_topk if a.index_topk else entries
        out["compressed"] = per_entry * causal_mean(limit, entries)
        if a.index_topk:
            out["indexer"] = 6 * a.index_n_heads * (a.index_head_dim + 1) * entries * (0.5 if causal else 1.0)
    return out


def flops_per_token(model: ModelConfig | Arch, seq_len: int, *, causal: bool = False,
                    include_mtp: bool = True) -> float:
    """Training FLOPs per token: 6·N_matmul_active + attention term (see the module docstring)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be > 0 (got {seq_len})")
    arch = as_arch(model)
    pc = param_counts(arch)
    n = pc["matmul_active"] + (pc["mtp_matmul_active"] if include_mtp else 0)
    return 6.0 * n + attention_flops_per_token(arch, seq_len, causal=causal, include_mtp=include_mtp)


def kv_cache_bytes_per_token(model: ModelConfig | Arch, bytes_per_elem: float = 2,
                             include_mtp: bool = False, context: int | None = None) -> dict[str, float]:
    """KV-cache bytes per token summed over layers, as stored and as plain MHA would store it.

    MLA caches the normalised latent and the shared RoPE key: (d_c + d_r) per layer (DeepSeek-V2
    report, arXiv:2405.04434, Table 1).
    DeepSeek-V3.2 adds the indexer's key, d_I per layer (``indexer``; included in ``actual``).
    GQA caches K and V of its KV heads: KV·(d_qk + d_v). ``mha`` is the same model with one K and V
    per query head: H·(d_qk + d_v). Returns ``{"mla"|"gqa": ..., "mha": ..., "actual": ...}``.
    MTP layers are left out unless asked for (they are only cached when drafting speculatively).
    DeepSeek-V4 caches per layer its window (n_win keys of c, a fixed size: spread over ``context``
    tokens when given, else left out), one c-wide entry per m tokens, and in CSA layers the
    indexer's c_I-wide key per entry.
    """
    arch = as_arch(model)
    layers = arch.layers + (arch.mtp_layers if include_mtp else ())
    mha = actual = indexer = 0.0
    kinds = set()
    for lay in layers:
        a = lay.attention
        mha += a.num_heads * (a.qk_head_dim + a.v_head_dim)
        if a.kind == "v4":
            window = min(context, a.window) * a.qk_head_dim / context if context else 0.0
            # closed blocks only: a context of L tokens holds L // m entries
            entries = (context // a.compress_rate / context if context else 1 / a.compress_rate) \
                if a.compress_rate else 0.0
            actual += window + entries * a.qk_head_dim
            indexer += entries * a.index_head_dim if a.index_topk else 0.0
        elif a.kind == "mla":
            actual += a.kv_lora_rank + a.rope_head_dim
            indexer += a.index_head_dim if a.index_topk else 0  # V3.2: one d_I-dim indexer key per layer
        else:
            actual += (a.num_kv_heads or a.num_heads) * (a.qk_head_dim + a.v_head_dim)
        kinds.add(a.kind)
    out = {"mha": mha * bytes_per_elem, "actual": (actual + indexer) * bytes_per_elem}
    for kind in kinds:
        out[kind] = actual * bytes_per_elem
    if indexer:
        out["indexer"] = indexer * bytes_per_elem
    return out


__all__ = ["Arch", "Attention", "FeedForward", "Layer", "arch_from_model_config", "arch_from_v4_config",
           "as_arch", "param_counts", "flops_per_token", "attention_flops_per_token", "dsa_attention_flops",
           "v4_attention_flops", "kv_cache_bytes_per_token", "attention_params", "ffn_params"]
