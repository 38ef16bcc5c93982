"""Training-step throughput of seekforge's DeepSeek-V3 vs transformers' DeepseekV3ForCausalLM.

Same config (``small-moe`` by default), same weights (transformers loads seekforge's export), same
random batch, same optimizer (AdamW). One step = forward + backward + AdamW.step. MFU is measured
against the fp32 (or bf16 on CUDA) matmul peak of THIS machine, timed in the same run, so the
number says how well the model uses the hardware rather than a datasheet.

    .venv/bin/python bench/model_throughput.py                      # eager, wall clock
    .venv/bin/python bench/model_throughput.py --compile            # also torch.compile rows
    .venv/bin/python bench/model_throughput.py --threads 1 --timer cpu   # on a busy, shared machine

Timing is interleaved (A, B, A, B, ...) and the median is reported. ``--timer cpu`` measures the
process's CPU time instead of wall time (and the matmul peak the same way): with one thread this is
insensitive to other jobs on a shared machine, where wall-clock numbers swing by 10x.
Model FLOPs use seekforge.model.accounting.flops_per_token (6·N_active + attention, non-causal
convention); seekforge runs with MTP off and no balance loss so both sides do the same work; the
last row adds MTP + the balance loss (the full DeepSeek-V3 recipe, which transformers cannot train).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import torch


def matmul_peak(device: torch.device, dtype: torch.dtype, clock, n: int = 2048, reps: int = 10) -> float:
    """Best observed FLOP/s of an n x n x n matmul (the denominator of MFU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = clock()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t)
    return 2 * n**3 / best


def make_step(model: torch.nn.Module, x: torch.Tensor, hf: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step() -> float:
        out = model(input_ids=x, labels=x) if hf else model(x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not hf:
            model.update_router_bias(out.expert_loads)
        return float(out.loss)

    return step


def time_steps(step, n: int, device: torch.device, clock) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = clock()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (clock() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small-moe")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="steps per timing round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile'd rows for both")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                    help="wall clock, or process CPU time (robust on a shared machine with --threads 1)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    import transformers

    from seekforge.model import load_model, save_model
    from seekforge.model.accounting import flops_per_token
    from seekforge.model.config import parse_overrides
    from seekforge.utils import parse_dtype, resolve_device

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    device = resolve_device(args.device)
    dtype = parse_dtype(None, device)
    torch.manual_seed(0)
    overrides = parse_overrides(args.overrides)
    base = load_model(args.preset, device=device, dtype=dtype, num_nextn_predict_layers=0, aux_loss_alpha=0.0,
                      **overrides)
    cfg = base.config
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device=device)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(base, tmp)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).to(device).train()
        # The per-expert Python loop (transformers 4's only MoE path; "eager" experts in v5), for reference.
        hf_loop = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, dtype=dtype, experts_implementation="eager").to(device).train()
        full = load_model(tmp, device=device, dtype=dtype, num_nextn_predict_layers=0)
    torch.manual_seed(0)
    full_recipe = load_model(args.preset, device=device, dtype=dtype, **overrides)  # MTP + balance loss
    base.train()
    with torch.no_grad():
        same = (base(x).logits - hf(input_ids=x).logits).abs().max().item()
    del full

    flops = flops_per_token(cfg, args.seq_len, include_mtp=False)
    rows: list[tuple[str, torch.nn.Module, bool, float]] = [
        ("transformers DeepseekV3ForCausalLM", hf, True, flops),
        ("transformers, per-expert loop (experts_implementation=eager)", hf_loop, True, flops),
        ("seekforge", base, False, flops),
        ("seekforge + MTP + balance loss", full_recipe, False,
         flops_per_token(full_recipe.config, args.seq_len, include_mtp=True)),
    ]
    compile_s: dict[str, float] = {}
    if args.compile:
        for name, model, is_hf, fl in [rows[0], rows[2]]:
            cm = torch.compile(model)
            step = make_step(cm, x, is_hf)
            t = time.perf_counter()
            step()
            step()
            compile_s[name + " (compiled)"] = time.perf_counter() - t
            rows.append((name + " (compiled)", cm, is_hf, fl))

    steps = {name: make_step(model, x, is_hf) for name, model, is_hf, _ in rows}
    for step in steps.values():  # warm-up (allocator, lazy init, compile)
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, args.steps, device, clock))

    peak = matmul_peak(device, dtype, clock)
    tokens = args.batch * args.seq_len
    print(f"\n{args.preset}: batch {args.batch} x {args.seq_len}, {dtype}, {device}, "
          f"{torch.get_num_threads()} threads, {args.timer} time; "
          f"max |logit diff| seekforge vs transformers = {same:.1e}")
    print(f"matmul peak measured here: {peak / 1e9:.1f} GFLOP/s ({dtype}, {args.timer} time)\n")
    print(f"| implementation | ms/step ({args.timer}) | tokens/s | vs transformers | MFU |")
    print("|---|---|---|---|---|")
    ref = tokens / statistics.median(times[rows[0][0]])
    for name, _, _, fl in rows:
        dt = statistics.median(times[name])
        tps = tokens / dt
        print(f"| {name} | {dt * 1e3:.0f} | {tps:,.0f} | {tps / ref:.2f}x | {100 * tps * fl / peak:.1f}% |")
    for name, s in compile_s.items():
        print(f"\ncompile + first 2 steps of {name}: {s:.0f} s")


if __name__ == "__main__":
    main()
