"""``seekforge model init`` and ``seekforge model info``.

    seekforge model init --preset small-moe --set num_hidden_layers=4 --tokenizer tok/ --out runs/init
    seekforge model info --preset v3            # 671B total / 37B active, instantly (analytic)
    seekforge model info runs/init              # any HF DeepSeek-V3/V2 directory
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from seekforge.config import ConfigError
from seekforge.model.config import PRESETS, ModelConfig, model_config_from, preset_config
from seekforge.utils import human_bytes, human_count


def register(subparsers: argparse._SubParsersAction) -> None:
    from seekforge.cli import add_config_args

    p = subparsers.add_parser("model", help="create a model directory or show a model's size and cost")
    sub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    init = sub.add_parser("init", help="write a randomly initialised model (HF format) from a preset")
    init.add_argument("--preset", required=True, help=f"one of: {', '.join(PRESETS)}")
    add_config_args(init, config_positional=False)
    init.add_argument("--tokenizer", help="tokenizer directory: sets vocab_size/bos/eos and is copied along")
    init.add_argument("--out", required=True, help="output model directory")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--dtype", default="float32", help="weight dtype on disk (float32 | bfloat16)")
    init.set_defaults(func=cmd_init)

    info = sub.add_parser("info", help="parameters, FLOPs/token, KV-cache and weight memory")
    info.add_argument("model", nargs="?", help="model directory (or give --preset)")
    info.add_argument("--preset", help=f"one of: {', '.join(PRESETS)}, v4-flash, v4-pro, tiny-v4, small-v4")
    add_config_args(info, config_positional=False)
    info.add_argument("--seq-len", type=int, default=None,
                      help="sequence length for FLOPs (default min(4096, max_position_embeddings))")
    info.set_defaults(func=cmd_info)


def tokenizer_overrides(tokenizer_dir: str | Path) -> dict[str, Any]:
    """vocab_size / bos / eos / pad of a tokenizer directory (len(tokenizer) counts added tokens)."""
    from seekforge.tokenizer import load_tokenizer

    if not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer directory {tokenizer_dir} does not exist")
    tok = load_tokenizer(tokenizer_dir)
    out: dict[str, Any] = {"vocab_size": len(tok)}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tok, key, None)
        if value is not None:
            out[key] = value
    return out


def _resolve(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> tuple[ModelConfig, str]:
    spec = getattr(args, "preset", None) or getattr(args, "model", None)
    if not spec:
        raise ConfigError("give a model directory or --preset NAME")
    if getattr(args, "preset", None) and getattr(args, "model", None):
        raise ConfigError("give either a model directory or --preset, not both")
    if getattr(args, "preset", None) and args.preset not in PRESETS:
        preset_config(args.preset)  # raises the "unknown preset, did you mean" error
    from seekforge.config import deep_merge, parse_overrides

    overrides = deep_merge(extra or {}, parse_overrides(args.overrides))
    return model_config_from(spec, overrides), str(spec)


def cmd_init(args: argparse.Namespace) -> int:
    import psutil

    from seekforge.model import build_model, save_model
    from seekforge.model.accounting import param_counts
    from seekforge.utils import parse_dtype

    extra = tokenizer_overrides(args.tokenizer) if args.tokenizer else {}
    cfg, spec = _resolve(args, extra)
    dtype = parse_dtype(args.dtype, torch.device("cpu"))
    pc = param_counts(cfg)
    need = (pc["total"] + pc["mtp"]) * 4 * 2  # fp32 build + the copy written to disk
    if need > psutil.virtual_memory().available:
        raise ConfigError(f"preset {spec!r} needs about {human_bytes(need)} of memory to initialise here "
                          f"({human_count(pc['total'] + pc['mtp'])} parameters); choose a smaller preset or "
                          "override sizes with --set")
    torch.manual_seed(args.seed)
    model = build_model(cfg, "cpu")
    out = save_model(model, args.out, tokenizer=args.tokenizer, dtype=dtype)
    print(f"wrote {out} ({spec}, {human_count(model.num_parameters())} parameters incl. MTP, {args.dtype})")
    return 0


def info_rows(cfg: ModelConfig, seq_len: int) -> list[tuple[str, str]]:
    """The ``model info`` table as (label, value) rows, computed analytically (no weights needed)."""
    from seekforge.model.accounting import flops_per_token, kv_cache_bytes_per_token, param_counts

    pc = param_counts(cfg)
    kv = kv_cache_bytes_per_token(cfg, bytes_per_elem=2)
    total_all = pc["total"] + pc["mtp"]
    experts = (f"{cfg.n_routed_experts} x {cfg.moe_intermediate_size}, top-{cfg.num_experts_per_tok}, "
               f"{cfg.n_shared_experts} shared, "
               f"{cfg.num_hidden_layers - cfg.first_k_dense_replace} MoE layers")
    mla = f"{human_bytes(kv['mla'])}  ({cfg.kv_lora_rank}+{cfg.qk_rope_head_dim} per layer)"
    mha = f"{human_bytes(kv['mha'])}  ({kv['mha'] / kv['mla']:.1f}x MLA)"
    rows = [
        ("parameters (total, main model)", f"{human_count(pc['total'])}  ({pc['total']:,})"),
        ("parameters (active per token)", f"{human_count(pc['active'])}  ({pc['active']:,})"),
        ("parameters (embedding + lm_head)", f"{human_count(pc['embedding'])}"),
        ("parameters (MTP modules, extra)", f"{human_count(pc['mtp'])}  (D={cfg.num_nextn_predict_layers})"),
        ("routed experts", experts),
        (f"training FLOPs/token (T={seq_len}, incl. MTP)", f"{human_count(flops_per_token(cfg, seq_len))}"),
        ("training FLOPs/token (no MTP)", f"{human_count(flops_per_token(cfg, seq_len, include_mtp=False))}"),
        ("KV cache/token bf16, MLA (d_c + d_r)", mla),
        ("KV cache/token bf16, MHA same heads", mha),
        ("weights bf16 / fp32 (incl. MTP)", f"{human_bytes(2 * total_all)} / {human_bytes(4 * total_all)}"),
    ]
    return rows + (_dsa_rows(cfg, seq_len, kv) if cfg.is_dsa else [])


def _dsa_rows(cfg: ModelConfig, seq_len: int, kv: dict[str, float]) -> list[tuple[str, str]]:
    """DeepSeek-V3.2: the indexer, the attention FLOPs its top-k saves, its cache."""
    from seekforge.model.accounting import arch_from_model_config, dsa_attention_flops

    attn = arch_from_model_config(cfg).layers[0].attention
    L = cfg.num_hidden_layers
    f = {key: L * value for key, value in dsa_attention_flops(attn, seq_len).items()}
    return [
        ("sparse attention (DSA indexer)",
         f"{cfg.index_n_heads} heads x {cfg.index_head_dim}, top-{cfg.index_topk} tokens per query"),
        (f"attention FLOPs/token dense MLA (T={seq_len})", human_count(f["dense"])),
        ("attention FLOPs/token DSA: top-k + indexer",
         f"{human_count(f['attention'])} + {human_count(f['indexer'])}  (saves {human_count(f['saved'])})"),
        ("KV cache/token bf16, incl. indexer keys",
         f"{human_bytes(kv['actual'])}  "
         f"(indexer {human_bytes(kv['indexer'])}: {cfg.index_head_dim} per layer)"),
    ]


def _v4_spec(args: argparse.Namespace) -> Any:
    """The V4Config when --preset / the directory is a DeepSeek-V4 one, else None."""
    from seekforge.model.hf_v4 import is_v4_dir, read_config
    from seekforge.model.v4_config import V4_PRESETS, v4_preset

    if getattr(args, "preset", None) in V4_PRESETS:
        if args.overrides:
            raise ConfigError("--set is not supported with the DeepSeek-V4 presets yet")
        return v4_preset(args.preset)
    if getattr(args, "model", None) and is_v4_dir(args.model):
        return read_config(args.model)
    return None


def v4_info_rows(cfg: Any, contexts: tuple[int, ...] = (4096, 131072, 1048576)) -> list[tuple[str, str]]:
    """``model info`` rows for DeepSeek-V4: sizes, FLOPs and cache by layer type, next to V3's MLA."""
    from seekforge.model.v4_accounting import cache_bytes, flops_per_token, mla_cache_bytes, parameter_counts

    pc = parameter_counts(cfg)
    kinds = {k: cfg.layer_types.count(k) for k in dict.fromkeys(cfg.layer_types)}
    rows = [
        ("parameters (total)", f"{human_count(pc.total)}  ({pc.total:,})"),
        ("parameters (active per token)", f"{human_count(pc.active)}  ({pc.active:,})"),
        ("parameters (embedding + lm_head)", human_count(pc.embedding)),
        ("layer types", ", ".join(f"{n} x {k}" for k, n in kinds.items())),
        ("MoE layers", f"{cfg.mlp_layer_types.count('hash_moe')} hash-routed, "
                       f"{cfg.mlp_layer_types.count('moe')} learned; {cfg.n_routed_experts} x "
                       f"{cfg.moe_intermediate_size}, top-{cfg.num_experts_per_tok}, 1 shared"),
        ("residual streams (mHC)", str(cfg.hc_mult)),
    ]
    for ctx in contexts:
        if ctx > cfg.max_position_embeddings:
            continue
        by_kind = cache_bytes(cfg, ctx)
        total = sum(by_kind.values())
        parts = ", ".join(f"{k.split('_')[0]} {human_bytes(v)}" for k, v in by_kind.items() if v)
        mla = mla_cache_bytes(ctx, cfg.num_hidden_layers)
        label = f"{ctx // 1024}k"
        rows.append((f"forward FLOPs/token at {label} context", human_count(flops_per_token(cfg, ctx))))
        rows.append((f"cache bf16 per sequence at {label}",
                     f"{human_bytes(total)}  ({parts}; V3's MLA (512+64) with as many layers: "
                     f"{human_bytes(mla)}, {mla / total:.1f}x)"))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    v4 = _v4_spec(args)
    if v4 is not None:
        rows = v4_info_rows(v4)
        width = max(len(k) for k, _ in rows)
        print(f"model: {args.preset or args.model}  (DeepSeek-V4: d={v4.hidden_size}, "
              f"layers={v4.num_hidden_layers}, heads={v4.num_attention_heads} x {v4.head_dim}, "
              f"window={v4.sliding_window}, vocab={v4.vocab_size})")
        for k, v in rows:
            print(f"  {k:<{width}}  {v}")
        return 0
    cfg, spec = _resolve(args)
    seq_len = args.seq_len or min(4096, cfg.max_position_embeddings)
    rows = info_rows(cfg, seq_len)
    width = max(len(k) for k, _ in rows)
    print(f"model: {spec}  (d={cfg.hidden_size}, layers={cfg.num_hidden_layers}, "
          f"heads={cfg.num_attention_heads}, vocab={cfg.vocab_size}, "
          f"router={cfg.scoring_func}/{cfg.topk_method})")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0
