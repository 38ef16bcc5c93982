"""``seekforge demo`` (``make demo``): a first look at seekforge in well under a minute on a laptop CPU.

For now it shows what the model presets cost (parameters, FLOPs per token, KV cache) and times a
training step (forward + backward + AdamW) of the ``small-moe`` preset on a random batch. The
trainer will grow this into the full pipeline (data -> tokenizer -> pretrain -> chat).
"""

from __future__ import annotations

import argparse
import time

import torch

from seekforge.model.config import PRESETS, preset_config
from seekforge.utils import human_bytes, human_count


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="built-in demo: model presets and a timed training step")
    p.add_argument("--preset", default="small-moe", help="preset whose training step is timed")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def preset_table() -> str:
    from seekforge.model.accounting import flops_per_token, kv_cache_bytes_per_token, param_counts

    head = "| preset | total | active | MTP | FLOPs/token (T=4096) | KV/token bf16 MLA (MHA) |"
    lines = [head, "|" + "---|" * 6]
    for name in PRESETS:
        cfg = preset_config(name)
        pc = param_counts(cfg)
        kv = kv_cache_bytes_per_token(cfg)
        flops = flops_per_token(cfg, min(4096, cfg.max_position_embeddings))
        lines.append(f"| {name} | {human_count(pc['total'])} | {human_count(pc['active'])} | "
                     f"{human_count(pc['mtp'])} | {human_count(flops)} | "
                     f"{human_bytes(kv['mla'])} ({human_bytes(kv['mha'])}) |")
    return "\n".join(lines)


def time_training_step(preset: str, batch: int, seq_len: int, steps: int,
                       device: str = "auto") -> dict[str, float]:
    """Tokens/s of forward + backward + AdamW.step on random tokens (after one warm-up step)."""
    from seekforge.model import load_model
    from seekforge.model.accounting import flops_per_token

    torch.manual_seed(0)
    model = load_model(preset, device=device)
    dev = model.lm_head.weight.device
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len), device=dev)

    def step() -> float:
        out = model(x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_router_bias(out.expert_loads)
        return out.losses["main"].item()

    loss0 = step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    dt = (time.perf_counter() - t0) / steps
    tok_s = batch * seq_len / dt
    return {"seconds_per_step": dt, "tokens_per_s": tok_s, "loss_first": loss0, "loss_last": loss,
            "model_tflops": tok_s * flops_per_token(model.config, seq_len, causal=True) / 1e12}


def run(args: argparse.Namespace) -> int:
    print("## seekforge model presets (analytic; `seekforge model info --preset NAME` for details)\n")
    print(preset_table())
    print(f"\n## one training step of {args.preset}: batch {args.batch} x {args.seq_len} tokens, "
          f"forward + backward + AdamW\n")
    r = time_training_step(args.preset, args.batch, args.seq_len, args.steps, args.device)
    print(f"  {r['seconds_per_step'] * 1e3:.0f} ms/step, {r['tokens_per_s']:,.0f} tokens/s, "
          f"{r['model_tflops'] * 1e3:.1f} GFLOP/s of model FLOPs (causal), "
          f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}")
    return 0
