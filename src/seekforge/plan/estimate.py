"""The planner's arithmetic: memory per device, training time, cost and energy of a run.

Inputs are an :class:`~seekforge.model.accounting.Arch`, a :class:`~seekforge.plan.hardware.Hardware`
and a :class:`PlanSpec`. Every formula is written out in ``docs/plan.md``; the short version:

memory per device = weights + gradients + optimizer states      (bytes/param by precision, ZeRO-sharded)
                  + activations                                   (per token per layer, by checkpointing)
                  + logits                                        (counted in ``activations``)
                  + buffers                                       (runtime baseline, FSDP/DDP comm buffers)
                  + kv_cache                                      (serving only)

training hours    = tokens x FLOPs/token x recompute / (devices x peak x MFU) / 3600

Bytes per parameter (weights, gradients, optimizer) — ZeRO's accounting (Rajbhandari et al. 2020),
with fp32 gradients as PyTorch AMP and FSDP2 keep them (DeepSpeed's estimator also uses 18):

    fp32   4 + 4 + 8          = 16   (Adam m and v in fp32)
    bf16   2 + 4 + (4 + 8)    = 18   (bf16 working copy; fp32 master + m + v in the optimizer)
    fp8    1 + 4 + (4 + 4)    = 13   (DeepSeek-V3 §3.3: FP8 GEMM weights, fp32 master/grads, bf16 m, v)

ZeRO-1 shards the optimizer states over the data-parallel ranks, ZeRO-2 also the gradients,
ZeRO-3/FSDP also the weights; routed-expert parameters are first split over the expert-parallel
ranks and then sharded over the remaining (expert-data-parallel) ranks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from seekforge.config import ConfigError
from seekforge.model.accounting import (
    Arch,
    Attention,
    Layer,
    as_arch,
    attention_flops_per_token,
    kv_cache_bytes_per_token,
    param_counts,
)
from seekforge.model.v4_config import V4_QUERY_BLOCK
from seekforge.plan.arch import lora_params
from seekforge.plan.hardware import GIB, Hardware

METHODS = ("pretrain", "full", "lora", "qlora", "inference")
PRECISIONS = ("fp32", "bf16", "fp8")
CHECKPOINTING = ("none", "selective", "full")
OFFLOAD = ("none", "optimizer", "params")
SHARDING = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}

# (weights, gradients, optimizer) bytes per trainable parameter; see the module docstring.
STATE_BYTES = {"fp32": (4.0, 4.0, 8.0), "bf16": (2.0, 4.0, 12.0), "fp8": (1.0, 4.0, 8.0)}
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp8": 1.0}  # frozen / served weights
ACT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp8": 2.0}  # activations stay bf16 in FP8 training
# bitsandbytes NF4 with double quantisation: 4 bits + an 8-bit absmax per 64 weights + an fp32 scale
# per 256 absmax blocks = 4 + 8/64 + 32/(64*256) = 4.127 bits per quantised weight (QLoRA paper §2).
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
# Float8 training speed-up over bf16 at the same utilisation: torchtitan Llama-3.1-8B on 8xH100,
# 5,762 -> 8,532 tokens/s/GPU (benchmarks/llama3_h100_202412_torchtitan.md).
FP8_SPEEDUP = 8532 / 5762
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: 70B on 1.4T tokens
DDP_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb
PREFILL_CHUNK = 4096  # serving: one prompt is prefilled in chunks of at most this many tokens

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str | float | int, flag: str) -> float:
    """``2B`` -> 2e9, ``300M``, ``1.5T``, ``20k``, ``1e9`` or a plain number."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*", str(text).lower())
    if not m:
        raise ConfigError(f"{flag}: {text!r} is not a count; use a number with an optional suffix "
                          "k/M/B/T, e.g. 2B or 300M")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def parse_duration_hours(text: str, flag: str = "--budget") -> float:
    """``3h``, ``90m``, ``2d``, ``45s`` or plain hours -> hours."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|d|w)?\s*", str(text).lower())
    if not m:
        raise ConfigError(f"{flag}: {text!r} is not a duration; use e.g. 3h, 90m, 2d or 45s")
    scale = {"s": 1 / 3600, "m": 1 / 60, "min": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0}[m.group(2) or "h"]
    hours = float(m.group(1)) * scale
    if hours <= 0:
        raise ConfigError(f"{flag}: the budget must be > 0 (got {text!r})")
    return hours


def parse_global_batch(text: str | int, seq_len: int) -> int:
    """Global batch in tokens. A plain count is tokens (``1M``, ``524288``); ``512seq`` is sequences."""
    s = str(text).strip().lower()
    for suffix in ("sequences", "seqs", "seq"):
        if s.endswith(suffix):
            return int(parse_count(s[: -len(suffix)], "--global-batch") * seq_len)
    return int(parse_count(s, "--global-batch"))


@dataclass
class PlanSpec:
    """What to plan. Field names match the ``seekforge plan`` flags (``--micro-batch`` -> micro_batch)."""

    method: str = "pretrain"
    tokens: float | None = None  # training tokens, or generated tokens when serving
    tokens_per_param: float | None = None  # alternative to tokens: x params_total
    seq_len: int = 2048
    global_batch_tokens: int | None = None  # default: micro_batch x seq_len x data-parallel ranks
    micro_batch: int = 1  # sequences per device per forward/backward
    lora_rank: int = 16
    context: int = 4096  # serving: tokens per sequence (prompt + output) held in the KV cache
    concurrency: int = 1  # serving: sequences decoded together
    precision: str | None = None  # fp32 | bf16 | fp8; None = fp32 on cpu, bf16 elsewhere
    checkpointing: str = "none"
    zero: int = 0  # 0 = DDP, 1/2/3 = ZeRO stage (3 = FSDP)
    offload: str = "none"
    tp: int = 1
    pp: int = 1
    ep: int = 1
    num_gpus: int = 1
    mfu: float | None = None  # default: the hardware's
    price: float | None = None  # USD per device-hour; default: the hardware's
    electricity_price: float = 0.0  # USD/kWh added on top of the rental price (0: included in it)
    pue: float = 1.2  # data-centre power usage effectiveness applied to the devices' TDP

    def validate(self, hw: Hardware) -> None:
        def choice(name: str, value: Any, valid: tuple) -> None:
            if value not in valid:
                raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not one of {', '.join(valid)}")

        choice("method", self.method, METHODS)
        choice("precision", self.precision, PRECISIONS)
        choice("checkpointing", self.checkpointing, CHECKPOINTING)
        choice("offload", self.offload, OFFLOAD)
        for name in ("seq_len", "micro_batch", "lora_rank", "context", "concurrency", "tp", "pp", "ep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.num_gpus < 1:
            raise ConfigError(f"--num-gpus must be >= 1 (got {self.num_gpus}): a run needs at least one "
                              "device")
        if hw.name == "cpu" and self.num_gpus != 1:
            raise ConfigError(f"--num-gpus must be 1 with --hardware cpu (got {self.num_gpus})")
        if self.zero not in (0, 1, 2, 3):
            raise ConfigError(f"--sharding: ZeRO stage must be 0-3 (got {self.zero})")
        if self.num_gpus % (self.tp * self.pp):
            raise ConfigError(f"--num-gpus {self.num_gpus} must be a multiple of --tp x --pp = "
                              f"{self.tp * self.pp}")
        dp = self.num_gpus // (self.tp * self.pp)
        if dp % self.ep:
            raise ConfigError(f"--ep {self.ep} must divide the data-parallel degree {dp} "
                              "(= num_gpus / (tp x pp)); expert parallelism borrows data-parallel ranks")
        if self.offload == "params" and self.zero != 3:
            raise ConfigError("--offload params needs --sharding zero3/fsdp (parameters are offloaded "
                              "per shard)")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise ConfigError(f"--mfu must be in (0, 1] (got {self.mfu})")
        for name in ("price", "electricity_price"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {value})")
        if self.pue < 1:
            raise ConfigError(f"--pue must be >= 1 (got {self.pue})")
        if self.tokens is not None and self.tokens <= 0:
            raise ConfigError(f"--tokens must be > 0 (got {self.tokens:g})")
        if self.tokens_per_param is not None and self.tokens_per_param <= 0:
            raise ConfigError(f"--tokens-per-param must be > 0 (got {self.tokens_per_param:g})")
        if self.tokens is not None and self.tokens_per_param is not None:
            raise ConfigError("give either --tokens or --tokens-per-param, not both")

    @property
    def dp(self) -> int:
        return self.num_gpus // (self.tp * self.pp)

    @property
    def training(self) -> bool:
        return self.method != "inference"


# ------------------------------------------------------------------------------------------------
# Parameter groups
# ------------------------------------------------------------------------------------------------
def _train_param_groups(arch: Arch, pc: dict[str, int], method: str) -> tuple[float, float]:
    """(non-expert, routed-expert) parameter counts that live on the devices for this method.

    Training runs the MTP modules too (they are trained); serving leaves them out.
    """
    expert = pc["routed_experts"]
    total = pc["total"]
    if method != "inference" and arch.mtp_layers:
        d = arch.hidden_size
        mtp_experts = sum(lay.ffn.num_experts * 3 * d * lay.ffn.expert_intermediate_size
                          for lay in arch.mtp_layers if lay.ffn.is_moe)
        expert += mtp_experts
        total += pc["mtp"]
    return float(total - expert), float(expert)


# ------------------------------------------------------------------------------------------------
# Activations
# ------------------------------------------------------------------------------------------------
def _attention_saved(layer: Layer, d: int, seq_len: int = 0, act_bytes: float = 2.0) -> tuple[float, float]:
    """(elements, fp32 bytes) autograd keeps per token for one attention block without recomputation.

    Counted for SDPA/flash attention (no T x T scores): the tensors SDPA saves (q, k, v, output,
    log-sum-exp), the projection inputs, and the latent RMSNorms' input/normalised/output triples.
    v and the output are padded to d_qk when d_v < d_qk (flash kernels need equal head dims).
    GQA keys/values are counted at H heads: SDPA gets them repeated to the query heads.
    """
    a = layer.attention
    H = a.num_heads
    vd = max(a.qk_head_dim, a.v_head_dim)
    lse = 4.0 * H
    if a.kind == "v4":
        return _v4_attention_saved(a, seq_len, act_bytes)
    if a.kind == "mla":
        q_side = 3 * a.q_lora_rank if a.q_lora_rank else 0
        kv_side = (a.kv_lora_rank + a.rope_head_dim) + 2 * a.kv_lora_rank
        return q_side + kv_side + 2 * H * a.qk_head_dim + 2 * H * vd + H * a.v_head_dim, lse
    kv = a.num_kv_heads or H
    qk_norm = 2 * (H + kv) * a.qk_head_dim if a.qk_norm else 0
    return 2 * H * a.qk_head_dim + H * vd + H * vd + H * a.v_head_dim + qk_norm, lse


def _v4_attention_saved(a: Attention, seq_len: int, act_bytes: float) -> tuple[float, float]:
    """seekforge's DeepSeek-V4 attention (counted from its autograd graph): no fused kernel, so the
    fp32 softmax over [keys | sink] is kept (and its copy in the activation dtype when that is not
    fp32). Queries run in blocks of max(256, n_win) (``V4_QUERY_BLOCK``) against the keys
    their window reaches, so a query's S keys are about the block plus n_win - 1 earlier tokens (all
    T when T fits one block), plus the T/m compressed entries. Besides: the q side (q_a output, its
    norm, q_b output and a per-head copy of the roped q), the key = value head (norm in/out, rope),
    the attended heads and the grouped output's intermediate, the compressor's kv and gate
    projections (two series in CSA), and CSA's indexer (queries, keys, top-k indices)."""
    H, c, T = a.num_heads, a.qk_head_dim, seq_len
    block = max(V4_QUERY_BLOCK, a.window)
    entries = T / a.compress_rate if a.compress_rate else 0.0
    keys = min(T, block) + (a.window - 1 if block < T else 0) + entries
    elements = 3 * (a.q_lora_rank or 0) + 2 * H * c + 3 * c + H * c + a.o_groups * a.o_lora_rank
    fp32 = 4.0 * H * (keys + 1) + keys  # fp32 softmax output; the boolean mask
    if act_bytes < 4:
        elements += H * (keys + 1)  # the probabilities cast to the activation dtype for the product
    if a.compress_rate:
        elements += (4 if a.index_topk else 2) * c
    if a.index_topk:
        elements += 2 * a.index_n_heads * a.index_head_dim + 2 * a.index_head_dim
        # per-head and weighted scores over all entries, the selection mask, top-k int64 indices + mask
        fp32 += 4.0 * (a.index_n_heads + 1) * entries + entries + 9.0 * min(a.index_topk, entries)
    return elements, fp32


def _hyper_connection_saved(layer: Layer, d: int) -> tuple[float, float]:
    """(elements, fp32 bytes) per token of DeepSeek-V4's two mHC around a layer's sub-blocks: each
    keeps its n·d streams and their fp32 normed copy, the Sinkhorn-Knopp iterations' n x n
    matrices and sums, and the merge's block output, mixing matrix and post weights."""
    n = layer.hyper_connections
    if not n:
        return 0.0, 0.0
    per_block_fp32 = 4.0 * (n * d + layer.sinkhorn_iters * (2 * n * n + 2 * n) + n * n + n)
    return 2.0 * (n * d + d), 2.0 * per_block_fp32


def _ffn_saved(layer: Layer, d: int) -> tuple[float, float]:
    """(elements, fp32 bytes) kept per token for one SwiGLU FFN (gate, up, silu(gate), product).

    MoE (seekforge's grouped experts): each of the K routed copies keeps its gathered input (d), the
    fused gate/up output (2·I_m), silu, silu·up and the gate-weighted product (3·I_m; the weight is
    applied before the down projection); the fp32 router keeps logits, scores and choice scores (3E).
    """
    f = layer.ffn
    if not f.is_moe:
        return 4.0 * f.intermediate_size, 0.0
    if f.clipped:  # DeepSeek-V4: the clamps keep their inputs, the experts two more d-wide tensors
        routed = f.experts_per_token * (3 * d + 6 * f.expert_intermediate_size)
        return routed + 6.0 * f.shared_intermediate_size, 3 * 4.0 * f.num_experts
    routed = f.experts_per_token * (d + 5 * f.expert_intermediate_size)
    return routed + 4.0 * f.shared_intermediate_size, 3 * 4.0 * f.num_experts


def _matmul_outputs(layer: Layer, d: int) -> float:
    """Elements per token output by all matmuls of one layer (selective checkpointing keeps half)."""
    a, f = layer.attention, layer.ffn
    H = a.num_heads
    if a.kind == "v4":
        series = 2 if a.index_topk else 1
        att = (a.q_lora_rank or 0) + H * a.qk_head_dim + a.qk_head_dim + a.o_groups * a.o_lora_rank + d
        att += 2 * series * a.qk_head_dim if a.compress_rate else 0
        att += 4 * a.index_head_dim + a.index_n_heads * (a.index_head_dim + 1) if a.index_topk else 0
    elif a.kind == "mla":
        d_n = a.qk_head_dim - a.rope_head_dim
        q = (a.q_lora_rank + H * a.qk_head_dim) if a.q_lora_rank else H * a.qk_head_dim
        att = q + a.kv_lora_rank + a.rope_head_dim + H * (d_n + a.v_head_dim) + d
    else:
        kv = a.num_kv_heads or H
        att = H * a.qk_head_dim + kv * (a.qk_head_dim + a.v_head_dim) + d
    if f.is_moe:
        ffn = f.num_experts + f.experts_per_token * (2 * f.expert_intermediate_size + d) \
            + 2 * f.shared_intermediate_size + (d if f.shared_intermediate_size else 0)
    else:
        ffn = 2 * f.intermediate_size + d
    n = layer.hyper_connections  # mHC: the (2 + n)·n mixing weights before each sub-block
    return att + ffn + 2 * (2 + n) * n


def layer_activation_bytes(layer: Layer, d: int, policy: str, act_bytes: float, seq_len: int = 0) -> float:
    """Bytes per token one layer keeps from forward to backward under a checkpointing policy.

    * none: everything autograd saves — two RMSNorms (input, normalised value, scaled output: 3d
      each), attention and FFN as in :func:`_attention_saved` / :func:`_ffn_saved`, and
      DeepSeek-V4's mHC (:func:`_hyper_connection_saved`). ``seq_len`` matters only for V4, whose
      attention keeps its score matrix.
    * selective: torchtitan's op-level policy — the layer input, every other matmul output and the
      attention output (+ log-sum-exp); norms, RoPE and SwiGLU are recomputed.
    * full: only the layer input.
    """
    # DeepSeek-V4's mHC carries n residual streams: the layer input is n·d wide.
    layer_input = (layer.hyper_connections or 1) * d
    if policy == "full":
        return layer_input * act_bytes
    a = layer.attention
    if policy == "selective":
        out = a.num_heads * max(a.qk_head_dim, a.v_head_dim)
        return (layer_input + 0.5 * _matmul_outputs(layer, d) + out) * act_bytes + 4.0 * a.num_heads
    att, att_fp32 = _attention_saved(layer, d, seq_len, act_bytes)
    ffn, ffn_fp32 = _ffn_saved(layer, d)
    hc, hc_fp32 = _hyper_connection_saved(layer, d)
    return (6 * d + att + ffn + hc) * act_bytes + att_fp32 + ffn_fp32 + hc_fp32


def logits_bytes_per_element(arch: Arch, act_bytes: float) -> float:
    """Bytes per [token, vocab] element the loss keeps, summed over heads (main + MTP depths).

    Stock cross-entropy (HF ``ForCausalLMLoss``, torchtitan): logits are upcast to fp32 and
    ``log_softmax`` keeps its fp32 output for backward (4 B per head); the caller drops the logits;
    at the start of backward two fp32 gradients exist at once (8 B). seekforge's fused
    cross-entropy keeps each head's logits (act_bytes) and recomputes the softmax in backward
    (fp32, 4 B) before casting it back (act_bytes more when the logits are not fp32).
    """
    heads = 1 + len(arch.mtp_layers)
    if arch.fused_cross_entropy:
        return act_bytes * heads + 4.0 + (act_bytes if act_bytes < 4 else 0.0)
    return 4.0 * heads + 8.0


def activation_bytes(arch: Arch, spec: PlanSpec) -> dict[str, float]:
    """Activation bytes per device: the layers' saved tensors and the logits (see docs/plan.md)."""
    prec = spec.precision or "bf16"
    ab = ACT_BYTES[prec]
    d, V = arch.hidden_size, arch.vocab_size
    if not spec.training:
        # Serving keeps nothing for backward: one layer's intermediates for a prefill chunk, plus the
        # fp32 logits of the last position of every sequence.
        chunk = min(spec.context, PREFILL_CHUNK)
        one = max(layer_activation_bytes(lay, d, "none", ab) for lay in arch.layers)
        return {"layers": one * chunk / spec.tp, "logits": spec.concurrency * V * 4.0}
    tokens = spec.micro_batch * spec.seq_len
    layers = arch.layers + arch.mtp_layers
    kept = sum(layer_activation_bytes(lay, d, spec.checkpointing, ab, spec.seq_len) for lay in layers)
    # Each MTP depth also keeps enorm/hnorm triples and the eh_proj input (2d) and output (d).
    kept += len(arch.mtp_layers) * (6 * d + 3 * d) * ab
    if spec.checkpointing != "none":  # during backward one layer is recomputed in full at a time
        kept += max(layer_activation_bytes(lay, d, "none", ab, spec.seq_len) for lay in layers)
    # 1F1B pipelines keep pp micro-batches in flight on the first stage, each through L/pp layers:
    # the first stage therefore holds about a whole model's worth (Korthikanti et al. 2022, §4.2.3).
    layer_bytes = kept * tokens / spec.tp  # tensor parallel with sequence parallel splits every tensor
    logits = tokens * V * logits_bytes_per_element(arch, ab) / spec.tp
    if spec.pp > 1:  # the logits live on the last stage, which holds only its own L/pp layers
        return {"layers": max(layer_bytes, layer_bytes / spec.pp + logits), "logits": 0.0}
    return {"layers": layer_bytes, "logits": logits}


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------
def _largest_unit_params(arch: Arch, spec: PlanSpec) -> float:
    """Parameters of the biggest FSDP unit (a block, or the embedding/head) on one device."""
    d = arch.hidden_size
    biggest = float(arch.vocab_size * d) / spec.tp
    for lay in arch.layers + arch.mtp_layers:
        single = Arch(arch.name, arch.vocab_size, d, (lay,))
        pc = param_counts(single)
        block = pc["total"] - pc["embedding"] - d
        expert = pc["routed_experts"]
        biggest = max(biggest, (block - expert) / spec.tp + expert / (spec.tp * spec.ep))
    return biggest


def memory_per_device(arch: Arch, hw: Hardware, spec: PlanSpec) -> dict[str, float]:
    """Bytes per device by part; ``host`` is what offloading puts in CPU RAM (per device)."""
    prec = spec.precision or "bf16"
    pc = param_counts(arch)
    non_expert, expert = _train_param_groups(arch, pc, spec.method)
    tp, pp, ep, dp = spec.tp, spec.pp, spec.ep, spec.dp
    edp = dp // ep

    def per_device(n_ne: float, n_e: float, sharded: bool) -> float:
        """Parameters on one device: split by tp x pp (experts also by ep), then ZeRO-sharded over dp."""
        return n_ne / (tp * pp) / (dp if sharded else 1) + n_e / (tp * pp * ep) / (edp if sharded else 1)

    weights = gradients = optimizer = host = kv = 0.0
    trainable = 0.0  # parameters the optimizer steps on this device
    if spec.method in ("pretrain", "full"):
        wb, gb, ob = STATE_BYTES[prec]
        trainable = per_device(non_expert, expert, spec.zero >= 1)
        weights = per_device(non_expert, expert, spec.zero >= 3) * wb
        gradients = per_device(non_expert, expert, spec.zero >= 2) * gb
        optimizer = per_device(non_expert, expert, spec.zero >= 1) * ob
    elif spec.method in ("lora", "qlora"):
        if spec.method == "qlora":
            # bitsandbytes quantises the linear layers; embeddings, head and norms stay bf16.
            frozen_other = pc["embedding"] + pc["norms"]
            frozen_bytes = (non_expert - frozen_other) * NF4_BYTES + frozen_other * 2.0
            frozen_bytes_e = expert * NF4_BYTES
        else:
            frozen_bytes, frozen_bytes_e = non_expert * WEIGHT_BYTES[prec], expert * WEIGHT_BYTES[prec]
        weights = per_device(frozen_bytes, frozen_bytes_e, spec.zero >= 3)
        n_lora = lora_params(arch, spec.lora_rank)
        # Adapters train in fp32 (PEFT's default): 4 weights + 4 grads + 8 Adam.
        weights += per_device(n_lora * 4.0, 0.0, spec.zero >= 3)
        gradients = per_device(n_lora * 4.0, 0.0, spec.zero >= 2)
        optimizer = per_device(n_lora * 8.0, 0.0, spec.zero >= 1)
        trainable = per_device(n_lora, 0.0, spec.zero >= 1)
    else:  # inference
        weights = per_device(non_expert, expert, False) * WEIGHT_BYTES[prec]
        kv_prec = 4.0 if prec == "fp32" else (1.0 if prec == "fp8" else 2.0)
        per_tok = kv_cache_bytes_per_token(arch, bytes_per_elem=kv_prec, context=spec.context)
        # GQA splits its KV heads over TP ranks; the MLA latent (and V4's one key = value head) is
        # shared by all heads, so every TP rank keeps the whole cache. Pipeline stages keep their
        # own layers' caches.
        mla = arch.layers[0].attention.kind in ("mla", "v4")
        kv_heads = arch.layers[0].attention.num_kv_heads or arch.layers[0].attention.num_heads
        kv_split = 1 if mla else min(tp, kv_heads)
        kv = spec.concurrency * spec.context * per_tok["actual"] / kv_split / pp

    if spec.offload == "optimizer":
        host += optimizer
        optimizer = 0.0
    elif spec.offload == "params":
        host += weights + gradients + optimizer
        weights = gradients = optimizer = 0.0

    act = activation_bytes(arch, spec)
    buffers = hw.runtime_gib * GIB
    if spec.training and spec.zero >= 3:
        # FSDP gathers the current and the prefetched unit in working precision, and reduce-scatters
        # one unit's gradients in fp32.
        unit = _largest_unit_params(arch, spec)
        buffers += unit * (2 * WEIGHT_BYTES[prec] + 4.0)
    elif spec.training and dp > 1 and spec.method in ("pretrain", "full"):
        # DDP copies gradients into flat buckets (gradient_as_bucket_view=False by default).
        buffers += gradients if spec.zero == 0 else 2 * DDP_BUCKET_BYTES
    if spec.training and hw.name == "cpu" and spec.offload == "none":
        # seekforge's trainer runs AdamW with foreach=True on CPU (fused on CUDA); torch's foreach
        # Adam materialises sqrt(v) for all parameters at once: one fp32 copy of the trainable
        # parameters during optimizer.step(). Activations are freed by then, so only the part of that
        # workspace exceeding them raises the peak.
        buffers += max(0.0, 4.0 * trainable - act["layers"] - act["logits"])
    parts = {"weights": weights, "gradients": gradients, "optimizer_states": optimizer,
             "activations": act["layers"] + act["logits"], "buffers": buffers, "kv_cache": kv}
    parts["total"] = sum(parts.values())
    parts["logits"] = act["logits"]  # already inside activations; shown for the table
    parts["host"] = host
    return parts


# ------------------------------------------------------------------------------------------------
# Time, cost, energy
# ------------------------------------------------------------------------------------------------
def training_flops_per_token(arch: Arch, spec: PlanSpec) -> float:
    """Model FLOPs per token for the method (recomputation excluded; see accounting.flops_per_token).

    Full training: 6·N + attention. LoRA/QLoRA: the frozen weights need only the forward (2N) and
    the input-gradient half of the backward (2N), the adapters the full 6 per parameter.
    """
    pc = param_counts(arch)
    n = pc["matmul_active"] + pc["mtp_matmul_active"]
    attn = attention_flops_per_token(arch, spec.seq_len)
    if spec.method in ("lora", "qlora"):
        return 4.0 * n + attn + 6.0 * lora_params(arch, spec.lora_rank)
    return 6.0 * n + attn


def effective_peak(hw: Hardware, precision: str) -> float:
    """The FLOP/s that MFU multiplies. FP8 counts as bf16 peak x the measured FP8 speed-up, i.e. MFU
    stays "bf16-equivalent" as DeepSeek and torchtitan report it."""
    if precision == "fp8":
        hw.peak_flops("fp8")  # raises if the device has no FP8
        return hw.peak_flops("bf16") * FP8_SPEEDUP
    return hw.peak_flops(precision)


def recompute_factor(checkpointing: str) -> float:
    """Executed / model FLOPs: full checkpointing re-runs the forward (2N of 6N -> 8/6); selective
    recomputes only cheap elementwise ops (its cost is inside the typical MFU)."""
    return 4.0 / 3.0 if checkpointing == "full" else 1.0


def implied_mfu(total_flops: float, device_hours: float, peak_flops: float) -> float:
    """MFU a reported run implies: model FLOPs / (device-seconds x peak)."""
    return total_flops / (device_hours * 3600.0 * peak_flops)


def decode_tokens_per_s(arch: Arch, hw: Hardware, spec: PlanSpec) -> float:
    """Serving throughput of all devices when every one of ``concurrency`` sequences decodes.

    A decode step reads the weights it touches and every sequence's KV cache once from memory and
    is bandwidth-bound at small batches: t = bytes / (bandwidth x MBU); compute-bound at large ones:
    t = 2·N_active·B / (peak x MFU). MoE: a batch of B tokens touches about E·(1 - (1 - K/E)^B) experts.
    """
    prec = spec.precision or "bf16"
    pc = param_counts(arch)
    B = spec.concurrency
    experts_touched_frac = 0.0
    moe = [lay.ffn for lay in arch.layers if lay.ffn.is_moe]
    if moe:
        f = moe[0]
        experts_touched_frac = 1 - (1 - f.experts_per_token / f.num_experts) ** B
    weight_bytes = (pc["total"] - pc["routed_experts"] * (1 - experts_touched_frac)) * WEIGHT_BYTES[prec]
    kv_per_tok = kv_cache_bytes_per_token(arch, WEIGHT_BYTES[prec], context=spec.context)["actual"]
    kv_bytes = B * spec.context * kv_per_tok
    group = spec.tp * spec.pp  # one replica spans tp x pp devices; pipeline stages run one at a time
    replicas = spec.num_gpus // group
    t_mem = (weight_bytes + kv_bytes) / spec.tp / (hw.mem_bw_gbs * 1e9 * hw.mbu) if hw.mem_bw_gbs else 0.0
    flops = (2.0 * pc["matmul_active"] + attention_flops_per_token(arch, spec.context) / 3) * B
    t_compute = flops / spec.tp / (effective_peak(hw, prec) * (spec.mfu or hw.mfu))
    return replicas * B / max(t_mem, t_compute)


def estimate(model: Arch | Any, hw: Hardware, spec: PlanSpec, search_fit: bool = True) -> dict[str, Any]:
    """The full plan as a JSON-ready dict (keys documented in docs/plan.md)."""
    arch = as_arch(model)
    spec = dataclasses.replace(spec)
    if spec.precision is None:
        spec.precision = "fp32" if hw.name == "cpu" else "bf16"
    spec.validate(hw)
    pc = param_counts(arch)
    mfu = spec.mfu if spec.mfu is not None else hw.mfu
    price = spec.price if spec.price is not None else hw.price_per_hour
    tokens = spec.tokens
    if tokens is None and spec.tokens_per_param is not None:
        tokens = spec.tokens_per_param * pc["total"]
    if tokens is None and spec.method == "pretrain":
        tokens = CHINCHILLA_TOKENS_PER_PARAM * pc["total"]

    result: dict[str, Any] = {
        "method": spec.method, "hardware": hw.name, "num_gpus": spec.num_gpus, "precision": spec.precision,
        "params_total": pc["total"], "params_active": pc["active"], "params_embedding": pc["embedding"],
        "params_mtp": pc["mtp"],
    }
    mem = memory_per_device(arch, hw, spec)
    fits = mem["total"] <= hw.memory_bytes
    keys = ("weights", "gradients", "optimizer_states", "activations", "buffers", "kv_cache", "total")
    result["memory_per_device_bytes"] = {k: int(mem[k]) for k in keys}
    result["logits_bytes"] = int(mem["logits"])
    result["host_memory_bytes"] = int(mem["host"])
    result["device_memory_bytes"] = int(hw.memory_bytes)
    result["fits"] = bool(fits)

    if spec.training:
        fpt = training_flops_per_token(arch, spec)
        global_batch = spec.global_batch_tokens or spec.micro_batch * spec.seq_len * spec.dp
        step_tokens = spec.micro_batch * spec.seq_len * spec.dp
        if global_batch < step_tokens:
            raise ConfigError(f"--global-batch {global_batch} tokens is smaller than one step of "
                              "micro-batches: micro_batch x seq_len x data-parallel ranks = "
                              f"{step_tokens} tokens")
        if tokens is not None and tokens < global_batch:
            raise ConfigError(f"--tokens {tokens:.0f} is fewer than one global batch ({global_batch} "
                              "tokens); train on more tokens or use a smaller --global-batch/--seq-len")
        tok_per_s = spec.num_gpus * effective_peak(hw, spec.precision) * mfu / fpt \
            / recompute_factor(spec.checkpointing)
        result.update({
            "flops_per_token": fpt, "tokens": tokens, "global_batch_tokens": global_batch,
            "grad_accum_steps": math.ceil(global_batch / step_tokens),
            "steps": math.ceil(tokens / global_batch) if tokens else None,
            "total_flops": fpt * tokens if tokens else None, "tokens_per_s": tok_per_s,
        })
        hours = tokens / tok_per_s / 3600 if tokens else None
    else:
        fpt = 2.0 * pc["matmul_active"] + attention_flops_per_token(arch, spec.context) / 3
        tok_per_s = decode_tokens_per_s(arch, hw, spec)
        result.update({"flops_per_token": fpt, "tokens": tokens,
                       "total_flops": fpt * tokens if tokens else None, "tokens_per_s": tok_per_s})
        hours = tokens / tok_per_s / 3600 if tokens else None
    device_hours = hours * spec.num_gpus if hours is not None else None
    energy = device_hours * hw.tdp_w / 1000 * spec.pue if device_hours is not None else None
    cost = device_hours * price + energy * spec.electricity_price if device_hours is not None else None
    result.update({"mfu": mfu, "price_per_device_hour": price, "hours": hours, "device_hours": device_hours,
                   "cost_usd": cost, "energy_kwh": energy})
    result["settings"] = {k: v for k, v in dataclasses.asdict(spec).items()
                          if k not in ("tokens", "mfu", "price", "precision")}
    if not fits and search_fit:
        result["suggestion"] = find_fit(arch, hw, spec)
    return result


# ------------------------------------------------------------------------------------------------
# "It does not fit": the cheapest change that does
# ------------------------------------------------------------------------------------------------
def _fits(arch: Arch, hw: Hardware, spec: PlanSpec) -> tuple[bool, dict[str, int]]:
    try:
        spec.validate(hw)
    except ConfigError:
        return False, {}
    mem = memory_per_device(arch, hw, spec)
    return mem["total"] <= hw.memory_bytes, {"memory_per_device_bytes": int(mem["total"]),
                                             "host_memory_bytes": int(mem["host"])}


def _expert_parallel(arch: Arch, dp: int) -> int:
    """The largest power-of-two EP degree that divides both the data-parallel degree and E."""
    experts = [lay.ffn.num_experts for lay in arch.layers if lay.ffn.is_moe]
    ep = 1
    while experts and dp % (ep * 2) == 0 and experts[0] % (ep * 2) == 0:
        ep *= 2
    return ep


def _candidates(arch: Arch, spec: PlanSpec, max_devices: int) -> list[tuple[str, PlanSpec]]:
    """Single changes in order of cost: smaller micro-batch, checkpointing, higher ZeRO stage, offload,
    more devices (with FSDP, and for MoE models expert parallelism). Each is (description, spec)."""
    out: list[tuple[str, PlanSpec]] = []
    rep = dataclasses.replace
    if spec.training:
        mb = spec.micro_batch // 2
        while mb >= 1:  # gradient accumulation keeps the global batch
            out.append((f"--micro-batch {mb}", rep(spec, micro_batch=mb)))
            mb //= 2
        for policy in CHECKPOINTING[CHECKPOINTING.index(spec.checkpointing) + 1:]:
            out.append((f"--checkpointing {policy}", rep(spec, checkpointing=policy)))
        if spec.dp > 1:
            for stage in range(spec.zero + 1, 4):
                name = {1: "zero1", 2: "zero2", 3: "fsdp"}[stage]
                out.append((f"--sharding {name}", rep(spec, zero=stage)))
        if spec.offload == "none":
            out.append(("--offload optimizer", rep(spec, offload="optimizer")))
        if spec.offload != "params":
            out.append(("--sharding fsdp --offload params", rep(spec, zero=3, offload="params")))
    else:
        c = spec.concurrency // 2
        while c >= 1:
            out.append((f"--concurrency {c}", rep(spec, concurrency=c)))
            c //= 2
    n = spec.num_gpus * 2
    while n <= max_devices:
        if spec.training:
            ep = max(spec.ep, _expert_parallel(arch, n // (spec.tp * spec.pp)))
            flags = f"--num-gpus {n} --sharding fsdp" + (f" --ep {ep}" if ep > 1 else "")
            out.append((flags, rep(spec, num_gpus=n, zero=max(spec.zero, 3), ep=ep)))
        else:  # serving: split the model with tensor parallelism inside a node, pipeline across nodes
            tp = min(8, n // spec.pp)
            out.append((f"--num-gpus {n} --tp {tp} --pp {n // tp}", rep(spec, num_gpus=n, tp=tp, pp=n // tp)))
        n *= 2
    return out


def find_fit(arch: Arch, hw: Hardware, spec: PlanSpec, max_devices: int = 16384) -> dict[str, Any] | None:
    """The first single change (in the order of :func:`_candidates`) that fits, else all memory-saving
    changes together (+ devices); None when nothing fits."""
    if hw.name == "cpu":
        max_devices = 1
    for change, cand in _candidates(arch, spec, max_devices):
        ok, mem = _fits(arch, hw, cand)
        if ok:
            return {"change": change, **mem}
    if spec.training:  # everything at once: micro-batch 1, full checkpointing, FSDP + offload
        combined = dataclasses.replace(spec, micro_batch=1, checkpointing="full", zero=3, offload="params")
        label = "--micro-batch 1 --checkpointing full --sharding fsdp --offload params"
        options = [(label, combined)]
        for k in range(1, 15):
            n = spec.num_gpus * 2**k
            if n <= max_devices:
                ep = max(spec.ep, _expert_parallel(arch, n // (spec.tp * spec.pp)))
                options.append((f"{label} --num-gpus {n}" + (f" --ep {ep}" if ep > 1 else ""),
                                dataclasses.replace(combined, num_gpus=n, ep=ep)))
        for change, cand in options:
            ok, mem = _fits(arch, hw, cand)
            if ok:
                return {"change": change, **mem}
    return None


# ------------------------------------------------------------------------------------------------
# Inverse mode: what fits in a budget
# ------------------------------------------------------------------------------------------------
def budget_plan(hw: Hardware, spec: PlanSpec, hours: float | None = None, usd: float | None = None,
                model: Arch | None = None, presets: dict[str, Arch] | None = None) -> dict[str, Any]:
    """The largest compute-optimal model and its tokens for a wall-clock or dollar budget.

    Compute C = hours x devices x peak x MFU x 3600. Chinchilla (Hoffmann et al. 2022): D ≈ 20·N and
    C ≈ 6·N·D, so N = sqrt(C / 120), D = 20·N (dense; for MoE we count N = total parameters, the
    conservative reading in data_and_cost_notes.md §18). With ``presets`` the largest preset whose
    compute-optimal run fits the budget is named; with ``model`` the tokens that model can see.
    """
    spec = dataclasses.replace(spec)
    if spec.precision is None:
        spec.precision = "fp32" if hw.name == "cpu" else "bf16"
    spec.validate(hw)
    price = spec.price if spec.price is not None else hw.price_per_hour
    per_hour = spec.num_gpus * (price + hw.tdp_w / 1000 * spec.pue * spec.electricity_price)
    if usd is not None:
        if usd <= 0:
            raise ConfigError(f"--budget-usd must be > 0 (got {usd})")
        if per_hour <= 0:
            raise ConfigError(f"--budget-usd needs a price: {hw.name} costs $0/hour here; set --price "
                              "(USD per device-hour) or --electricity-price, or use --budget HOURS")
        hours = usd / per_hour
    if hours is None:
        raise ConfigError("inverse mode needs --budget DURATION (e.g. 3h) or --budget-usd AMOUNT")
    mfu = spec.mfu if spec.mfu is not None else hw.mfu
    rate = spec.num_gpus * effective_peak(hw, spec.precision) * mfu / recompute_factor(spec.checkpointing)
    compute = hours * 3600 * rate
    n_opt = math.sqrt(compute / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    out: dict[str, Any] = {
        "budget_hours": hours, "budget_usd": hours * per_hour, "num_gpus": spec.num_gpus, "hardware": hw.name,
        "mfu": mfu, "total_flops": compute,
        "compute_optimal": {"params": n_opt, "tokens": CHINCHILLA_TOKENS_PER_PARAM * n_opt,
                            "tokens_per_param": CHINCHILLA_TOKENS_PER_PARAM},
    }
    if presets:
        best = None
        for name, arch in presets.items():
            total = param_counts(arch)["total"]
            tokens = CHINCHILLA_TOKENS_PER_PARAM * total
            flops = training_flops_per_token(arch, spec) * tokens
            if flops <= compute and (best is None or total > best["params_total"]):
                fit = estimate(arch, hw, dataclasses.replace(spec, tokens=tokens), search_fit=False)
                best = {"name": name, "params_total": total, "params_active": param_counts(arch)["active"],
                        "tokens": tokens, "hours": flops / rate / 3600, "fits": fit["fits"]}
        out["preset"] = best
    if model is not None:
        fpt = training_flops_per_token(model, spec)
        tokens = compute / fpt
        total = param_counts(model)["total"]
        out["model"] = {"params_total": total, "params_active": param_counts(model)["active"],
                        "tokens": tokens, "tokens_per_param": tokens / total}
    return out
