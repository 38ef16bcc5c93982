"""The ONE adapter from a seekforge model directory to a GGUF file that llama.cpp runs (``deepseek2``).

    export_gguf("runs/x/final", "x.gguf", outtype="q8_0")

What goes into the file (llama.cpp's ``deepseek2`` architecture, the one its converter writes for
``DeepseekV3ForCausalLM`` / ``DeepseekV2ForCausalLM``; key and tensor names from the ``gguf`` package):

* hyper-parameters under ``deepseek2.*``: MLA ranks and head dims (``key_length_mla`` /
  ``value_length_mla`` make llama.cpp run the absorbed MLA form, ``head_count_kv`` = 1), MoE sizes,
  ``expert_gating_func`` (sigmoid or softmax), ``expert_weights_scale`` (routed_scaling_factor),
  ``expert_weights_norm``, group routing counts, leading dense layers, RoPE/YaRN;
* tensors: ``kv_b_proj`` split per head into ``attn_k_b`` (transposed: [H, d_c, d_n]) and
  ``attn_v_b`` ([H, d_v, d_c]); routed experts stacked into ``ffn_{gate,up,down}_exps``; the router
  bias as ``exp_probs_b.bias``; MTP layers are dropped (llama.cpp runs the main model only);
* the tokenizer: byte-level BPE tokens, token types, merges, bos/eos/pad, whether BOS is added,
  the chat template, and ``tokenizer.ggml.pre``, the name of the llama.cpp pre-tokenizer (split
  regexes) used when llama.cpp tokenizes text itself (see :data:`LLAMA_CPP_PRE`).

Precision: norms, the router and every 1-D tensor stay F32 (as llama.cpp's converter keeps them);
the other matrices follow ``outtype``. Q8_0/Q4_0 pack rows in blocks of 32 values, quantized with the
``gguf`` package's numpy code.

Where seekforge and llama.cpp compute differently, the exporter refuses with the reason instead of
writing a file that loads but computes another model (llama.cpp does not check these): group routing
scored by the best expert (V2 ``group_limited_greedy``; llama.cpp sums the top two), YaRN with
``mscale != mscale_all_dim`` or non-default betas. Models without shared experts get one all-zero
shared expert (llama.cpp requires the tensors); all-dense models are written without experts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, ExpertGatingFuncType, GGMLQuantizationType, LlamaFileType, TokenType

from seekforge.config import ConfigError, read_json
from seekforge.model.config import ModelConfig

log = logging.getLogger("seekforge.export")

ARCH = "deepseek2"
SUPPORTED_MODEL_TYPES = ("deepseek_v3", "deepseek_v2")
OUTTYPES = ("f32", "f16", "q8_0", "q4_0")

# tokenizer.ggml.pre for seekforge's pre-tokenizers (``tokenizer train --pretokenizer``). "gpt-2" is
# llama.cpp's GPT-2 split regex, which "bytelevel" uses: identical ids. No llama.cpp pre-tokenizer splits
# exactly like "seekforge"; of deepseek-v3, gpt-4o, llama3, qwen2 and qwen35, llama3 gave our ids on the
# most documents (English and Tang poems all, mixed Chinese 99%; the remaining difference is a newline
# followed by punctuation, docs/export.md). Ids fed to llama.cpp directly are unaffected either way.
LLAMA_CPP_PRE = {"bytelevel": "gpt-2", "seekforge": "llama3", "deepseek-v3": "deepseek-v3"}

# The config field that sets each GGUF tensor's row length (its innermost dimension), for errors.
_ROW_FIELD = {
    "token_embd": "hidden_size", "output": "hidden_size", "attn_q_a": "hidden_size",
    "attn_q": "hidden_size", "attn_q_b": "q_lora_rank", "attn_kv_a_mqa": "hidden_size",
    "attn_k_b": "qk_nope_head_dim", "attn_v_b": "kv_lora_rank",
    "attn_output": "num_attention_heads*v_head_dim",
    "ffn_gate": "hidden_size", "ffn_up": "hidden_size", "ffn_down": "intermediate_size",
    "ffn_gate_exps": "hidden_size", "ffn_up_exps": "hidden_size", "ffn_down_exps": "moe_intermediate_size",
    "ffn_gate_shexp": "hidden_size", "ffn_up_shexp": "hidden_size",
    "ffn_down_shexp": "moe_intermediate_size*n_shared_experts",
}

# seekforge / HF parameter names inside a layer -> GGUF names (one-to-one ones).
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_a_proj.weight": "attn_q_a.weight",
    "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attn_q_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
}
_GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight",
                   "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Faults:
    """Deliberate mistakes the exporter can make, ONLY for tests that prove llama.cpp's output exposes
    them: each one still gives a file llama.cpp loads without complaint (the silent failure modes)."""

    skip_k_b_transpose: bool = False  # write attn_k_b as [H, d_n, d_c] (loads when d_n == d_c)
    omit_gating_func: bool = False  # no expert_gating_func: llama.cpp falls back to softmax
    omit_weights_scale: bool = False  # no expert_weights_scale: routed experts are not scaled


class GGUFVocab(NamedTuple):
    """Everything llama.cpp needs to tokenize and detokenize like the model's tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    add_bos: bool
    chat_template: str | None


# =============================================================================================
# Public entry point
# =============================================================================================


def export_gguf(model_dir: str | Path, out_path: str | Path, outtype: str = "f32", *,
                tokenizer_dir: str | Path | None = None, tokenizer_pre: str | None = None) -> Path:
    """Write ``model_dir`` (a seekforge / HF DeepSeek-V3 or V2 directory) as a llama.cpp GGUF file.

    ``outtype``: f32 | f16 | q8_0 | q4_0 for the weight matrices. ``tokenizer_dir``: where the
    tokenizer lives if not in ``model_dir``. ``tokenizer_pre``: override ``tokenizer.ggml.pre``
    (default: detected from the tokenizer's split rules, :data:`LLAMA_CPP_PRE`).
    The file is written atomically; returns its path.
    """
    return _export(model_dir, out_path, outtype, tokenizer_dir=tokenizer_dir, tokenizer_pre=tokenizer_pre,
                   faults=Faults())


def _export(model_dir: str | Path, out_path: str | Path, outtype: str, *, tokenizer_dir: str | Path | None,
            tokenizer_pre: str | None, faults: Faults) -> Path:
    import torch

    from seekforge.model import load_model
    from seekforge.utils import atomic_file

    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown GGUF outtype {outtype!r}; expected one of {', '.join(OUTTYPES)}")
    cfg = read_supported_config(model_dir)
    vocab = read_vocab(Path(tokenizer_dir) if tokenizer_dir else model_dir, cfg.vocab_size, tokenizer_pre)
    model = load_model(model_dir, device="cpu", dtype=torch.float32)
    tensors = dict(gguf_tensors(model.state_dict(), cfg, faults))
    qtype = _QTYPES[outtype]
    types = {name: _tensor_type(name, arr, qtype) for name, arr in tensors.items()}
    check_row_lengths(tensors, types, outtype)

    with atomic_file(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_name(model_dir.resolve().name)
        writer.add_file_type(_FILE_TYPES[outtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_hparams(writer, cfg, faults)
        write_vocab(writer, vocab)
        for name, arr in tensors.items():
            data = gguf.quants.quantize(arr, types[name])
            raw = None if types[name] in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) else types[name]
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    log.info("wrote %s (%s, %d tensors)", out_path, outtype, len(tensors))
    return out_path


# =============================================================================================
# Config: what llama.cpp's deepseek2 can represent
# =============================================================================================


def read_supported_config(model_dir: Path) -> ModelConfig:
    """The model's config, or a ValueError naming what llama.cpp's ``deepseek2`` would compute differently."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory: {path} is missing")
    raw = read_json(path)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} cannot be exported to GGUF; supported model "
                         "types: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)} (DeepseekV3ForCausalLM, DeepseekV2ForCausalLM)")
    try:
        cfg = ModelConfig.from_hf_dict(raw)
        cfg.validate()
    except ConfigError as e:
        raise ValueError(f"{path}: {e}") from None
    problems = unsupported_features(cfg)
    if problems:
        raise ValueError(f"{path}: llama.cpp's deepseek2 would compute a different model: "
                         + "; ".join(problems))
    if cfg.rms_norm_eps != 1e-6:
        # seekforge (like HF) uses 1e-6 in the two latent norms; llama.cpp uses rms_norm_eps everywhere.
        log.warning("rms_norm_eps is %g: llama.cpp also uses it in q_a/kv_a_layernorm, where seekforge uses "
                    "1e-6; expect small logit differences", cfg.rms_norm_eps)
    return cfg


def unsupported_features(cfg: ModelConfig) -> list[str]:
    """Each config choice that llama.cpp's deepseek2 graph has no equivalent for (empty: exportable)."""
    problems = []
    if cfg.is_moe and cfg.n_group > 1 and cfg.topk_method == "group_limited_greedy":
        problems.append("topk_method 'group_limited_greedy' scores a group by its best expert; llama.cpp "
                        "scores it by the sum of its top two (use topk_method 'noaux_tc' or n_group 1)")
    if _group_routing(cfg) and cfg.n_routed_experts // cfg.n_group < 2:
        problems.append(f"group routing with {cfg.n_routed_experts // cfg.n_group} expert per group: "
                        "llama.cpp scores a group by its top two experts")
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default")) or "default"
    if kind == "yarn":
        mscale, mscale_all = rs.get("mscale"), rs.get("mscale_all_dim")
        if not mscale or not mscale_all or float(mscale) != float(mscale_all):
            problems.append(f"YaRN needs mscale == mscale_all_dim, both set (got {mscale} and {mscale_all}): "
                            "llama.cpp derives the attention temperature from mscale_all_dim alone")
        for key, default in (("beta_fast", 32), ("beta_slow", 1)):
            if rs.get(key) is not None and float(rs[key]) != default:
                problems.append(f"YaRN {key} {rs[key]}: llama.cpp's deepseek2 always uses {default}")
        if rs.get("truncate") is False:
            problems.append("YaRN truncate=false: llama.cpp rounds the correction range (truncate=true)")
        if rs.get("attention_factor") is not None:
            problems.append("YaRN attention_factor is not representable in deepseek2")
    return problems


# =============================================================================================
# Tensors
# =============================================================================================


def gguf_tensors(state: dict[str, Any], cfg: ModelConfig, faults: Faults = Faults()) -> Iterator[
        tuple[str, np.ndarray]]:
    """(GGUF name, float32 numpy array in PyTorch [out, in] order) for every tensor llama.cpp reads.

    The ``gguf`` writer reverses numpy shapes into ggml's (innermost first), so ``[out, in]`` lands
    as ggml ``{in, out}``, which is what ``ggml_mul_mat(W, x)`` expects.
    """
    L = cfg.num_hidden_layers
    H, d_n, d_v, d_c = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    for name, tensor in state.items():
        arr = tensor.detach().float().cpu().numpy()
        if name in _GLOBAL_TENSORS:
            yield _GLOBAL_TENSORS[name], arr
            continue
        m = _LAYER_RE.match(name)
        if not m:
            raise ValueError(f"GGUF export: no GGUF name for parameter {name!r}")
        i, rest = int(m.group(1)), m.group(2)
        if i >= L:  # MTP modules: llama.cpp's deepseek2 graph runs the main model only
            continue
        if rest == "mlp.gate.e_score_correction_bias" and cfg.topk_method != "noaux_tc":
            continue  # the bias is used for selection only with noaux_tc; llama.cpp always adds it
        if rest in _LAYER_TENSORS:
            yield f"blk.{i}.{_LAYER_TENSORS[rest]}", arr
        elif rest == "self_attn.kv_b_proj.weight":
            # kv_b rows are head-major [H, d_n + d_v, d_c]: W_UK then W_UV per head
            # (DeepSeek-V2, arXiv:2405.04434 §2.1.2).
            per_head = arr.reshape(H, d_n + d_v, d_c)
            k_b = per_head[:, :d_n, :]
            # llama.cpp absorbs W_UK into the query (q_nope -> latent), so it wants W_UK^T per head.
            k_b = k_b if faults.skip_k_b_transpose else k_b.transpose(0, 2, 1)
            yield f"blk.{i}.attn_k_b.weight", np.ascontiguousarray(k_b)
            yield f"blk.{i}.attn_v_b.weight", np.ascontiguousarray(per_head[:, d_n:, :])
        elif rest == "mlp.experts.gate_up_proj":  # [E, 2*I_m, d]: gate rows first, then up
            gate, up = np.split(arr, 2, axis=1)
            yield f"blk.{i}.ffn_gate_exps.weight", np.ascontiguousarray(gate)
            yield f"blk.{i}.ffn_up_exps.weight", np.ascontiguousarray(up)
        elif rest == "mlp.experts.down_proj":  # [E, d, I_m]
            yield f"blk.{i}.ffn_down_exps.weight", arr
            if cfg.n_shared_experts == 0:  # see write_hparams: an all-zero shared expert adds exactly 0
                d, I = cfg.hidden_size, cfg.moe_intermediate_size
                yield f"blk.{i}.ffn_gate_shexp.weight", np.zeros((I, d), np.float32)
                yield f"blk.{i}.ffn_up_shexp.weight", np.zeros((I, d), np.float32)
                yield f"blk.{i}.ffn_down_shexp.weight", np.zeros((d, I), np.float32)
        else:
            raise ValueError(f"GGUF export: no GGUF name for parameter {name!r}")


_QTYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
           "q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}
_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
               "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}


def _tensor_type(name: str, arr: np.ndarray, qtype: Any) -> Any:
    """F32 for norms, the router, its bias and any 1-D tensor (as llama.cpp's converter); else ``qtype``."""
    keep_f32 = arr.ndim == 1 or name.endswith("_norm.weight") or ".ffn_gate_inp." in name
    if keep_f32 or not name.endswith(".weight"):
        return GGMLQuantizationType.F32
    return qtype


def check_row_lengths(tensors: dict[str, np.ndarray], types: dict[str, Any], outtype: str) -> None:
    """Block-quantized types pack each row in blocks; a row of another length cannot be stored."""
    bad = []
    for name, arr in tensors.items():
        block = GGML_QUANT_SIZES[types[name]][0]
        if arr.shape[-1] % block:
            kind = name.split(".")[-2]
            bad.append(f"{name} (row {arr.shape[-1]} = {_ROW_FIELD.get(kind, '?')})")
    if bad:
        block = GGML_QUANT_SIZES[_QTYPES[outtype]][0]
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise ValueError(f"--outtype {outtype} stores rows in blocks of {block} values, but these tensors "
                         f"have rows of other lengths: {shown}. Use --outtype f16 (or f32), or a model whose "
                         f"dimensions are multiples of {block}")


# =============================================================================================
# Hyper-parameters
# =============================================================================================


def write_hparams(writer: Any, cfg: ModelConfig, faults: Faults = Faults()) -> None:
    """The ``deepseek2.*`` keys llama.cpp's loader reads (names: the ``gguf`` package's writer helpers)."""
    d_c, d_r = cfg.kv_lora_rank, cfg.qk_rope_head_dim
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)  # MTP layers are not written
    dense_layers = cfg.first_k_dense_replace if cfg.is_moe else cfg.num_hidden_layers
    writer.add_leading_dense_block_count(dense_layers)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    # Attention: llama.cpp runs MLA absorbed, as MQA over the shared [latent | rope key]
    # (DeepSeek-V2's weight absorption, arXiv:2405.04434 §2.1.2).
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(1)
    # The loader reads q_lora_rank for every layer count except the "lite" ones (26/27); 0 = plain
    # q_proj (then the graph uses attn_q because that tensor is present).
    writer.add_q_lora_rank(cfg.q_lora_rank or 0)
    writer.add_kv_lora_rank(d_c)
    writer.add_key_length(d_c + d_r)
    writer.add_value_length(d_c)
    writer.add_key_length_mla(cfg.qk_nope_head_dim + d_r)
    writer.add_value_length_mla(cfg.v_head_dim)
    writer.add_rope_dimension_count(d_r)
    writer.add_rope_freq_base(cfg.rope_theta)
    _write_yarn(writer, cfg)
    # MoE (the loader requires the expert sizes even when every layer is dense).
    if cfg.is_moe:
        writer.add_expert_count(cfg.n_routed_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
    writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    # No shared experts: one all-zero shared expert is written instead (it adds exactly 0), because
    # llama.cpp's deepseek2 requires the shared-expert tensors.
    writer.add_expert_shared_count(max(cfg.n_shared_experts, 1))
    if not cfg.is_moe:  # all layers dense: llama.cpp wants no experts and no groups at all
        writer.add_expert_count(0)
        writer.add_expert_used_count(0)
    if _group_routing(cfg):
        writer.add_expert_group_count(cfg.n_group)
        writer.add_expert_group_used_count(cfg.topk_group)
    if not faults.omit_gating_func:  # missing -> llama.cpp assumes softmax (old V2 files)
        writer.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if cfg.scoring_func == "sigmoid"
                                      else ExpertGatingFuncType.SOFTMAX)
    if not faults.omit_weights_scale:  # missing -> no scaling at all
        writer.add_expert_weights_scale(float(cfg.routed_scaling_factor))
    # seekforge (like HF) skips the normalisation for a single expert; llama.cpp would make it 1.
    writer.add_expert_weights_norm(bool(cfg.norm_topk_prob and cfg.num_experts_per_tok > 1))


def _group_routing(cfg: ModelConfig) -> bool:
    """Whether routing is group-limited in a way llama.cpp must reproduce: 'greedy' ignores groups, and
    keeping every group is no limit (llama.cpp also asserts topk_group < n_group)."""
    return cfg.is_moe and cfg.topk_method == "noaux_tc" and cfg.n_group > 1 and cfg.topk_group < cfg.n_group


def _write_yarn(writer: Any, cfg: ModelConfig) -> None:
    rs = cfg.rope_scaling or {}
    if (rs.get("rope_type", rs.get("type", "default")) or "default") != "yarn":
        return
    factor = float(rs.get("factor") or 1.0)
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(factor)
    writer.add_rope_scaling_orig_ctx_len(int(rs.get("original_max_position_embeddings",
                                                    cfg.max_position_embeddings)))
    # Stored as 0.1 * mscale_all_dim: llama.cpp's loader divides by 0.1 again (its converter's convention).
    writer.add_rope_scaling_yarn_log_mul(0.1 * float(rs["mscale_all_dim"]))


# =============================================================================================
# Tokenizer
# =============================================================================================


def read_vocab(tokenizer_dir: Path, vocab_size: int, pre: str | None = None) -> GGUFVocab:
    """The byte-level BPE tokenizer of ``tokenizer_dir`` as llama.cpp's ``gpt2`` vocab, padded to
    ``vocab_size``."""
    from seekforge.tokenizer import load_tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{tokenizer_dir} has no tokenizer.json: the GGUF file embeds the tokenizer. "
                                "Save the model with its tokenizer (seekforge model init --tokenizer DIR) or "
                                "pass --tokenizer DIR")
    spec = read_json(path)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(spec):
        raise ValueError(f"{path}: only byte-level BPE tokenizers can be exported (llama.cpp 'gpt2' vocab), "
                         f"got model type {model.get('type')!r}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        raise ValueError(f"{path}: the BPE has no merges; llama.cpp refuses a gpt2 vocab without merges")
    tok = load_tokenizer(tokenizer_dir)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"{path}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows no token uses (vocab rounded up): llama.cpp needs a name
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    probe = tok("a")["input_ids"]
    template = getattr(tok, "chat_template", None)
    return GGUFVocab(tokens=tokens, token_types=[int(t) for t in types], merges=merges,
                     pre=pre or detect_pre(spec, path), bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     add_bos=bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id,
                     chat_template=_plain_jinja(template) if isinstance(template, str) else None)


def _is_byte_level(spec: dict[str, Any]) -> bool:
    parts = json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))
    return '"ByteLevel"' in parts


def detect_pre(spec: dict[str, Any], path: Path) -> str:
    """llama.cpp's pre-tokenizer name for a seekforge tokenizer, found by comparing its split rules."""
    from seekforge.tokenizer.train import PRETOKENIZERS, build_tokenizer

    for kind in PRETOKENIZERS:
        if json.loads(build_tokenizer(kind).to_str())["pre_tokenizer"] == spec.get("pre_tokenizer"):
            return LLAMA_CPP_PRE[kind]
    raise ValueError(f"{path}: the tokenizer's split rules are not one of seekforge's "
                     f"({', '.join(PRETOKENIZERS)}), "
                     "so the matching llama.cpp pre-tokenizer is unknown; pass --tokenizer-pre NAME (e.g. "
                     "deepseek-v3 for DeepSeek-V3's own tokenizer, gpt-2 for GPT-2's byte-level regex)")


def _plain_jinja(template: str) -> str:
    """The chat template without transformers' ``{% generation %}`` markers (an HF-only Jinja extension
    for assistant masks). llama.cpp and llama-cpp-python skip the tag, but plain Jinja (and so other GGUF
    runtimes) rejects it; without it the template renders the same text."""
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    if vocab.bos_token_id is not None:
        writer.add_bos_token_id(vocab.bos_token_id)
    if vocab.eos_token_id is not None:
        writer.add_eos_token_id(vocab.eos_token_id)
    if vocab.pad_token_id is not None:
        writer.add_pad_token_id(vocab.pad_token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


__all__ = ["export_gguf", "read_supported_config", "unsupported_features", "gguf_tensors", "write_hparams",
           "read_vocab", "write_vocab", "detect_pre", "check_row_lengths", "GGUFVocab", "Faults", "ARCH",
           "OUTTYPES", "SUPPORTED_MODEL_TYPES", "LLAMA_CPP_PRE"]
