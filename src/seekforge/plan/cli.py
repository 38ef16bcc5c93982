"""``seekforge plan``: will this run fit, how long will it take, what will it cost — before launching it.

    seekforge plan --preset 1b-moe --tokens 20B --hardware h100-sxm --num-gpus 8
    seekforge plan --model ~/models/Qwen2.5-7B --method lora --hardware rtx-4090 --json
    seekforge plan --preset small-moe --hardware cpu --measure --data corpus.txt
    seekforge plan --budget 3h --hardware h100-sxm --num-gpus 8          # inverse: what fits the budget

The numbers come from :mod:`seekforge.plan.estimate`; formulas and sources are in docs/plan.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from seekforge.config import ConfigError
from seekforge.model.accounting import arch_from_model_config
from seekforge.model.config import LARGE_PRESETS, PRESETS, preset_config
from seekforge.model.v4_config import V4_LARGE_PRESETS, V4_PRESETS
from seekforge.plan.arch import resolve_arch
from seekforge.plan.estimate import (
    CHECKPOINTING,
    METHODS,
    OFFLOAD,
    PRECISIONS,
    SHARDING,
    PlanSpec,
    budget_plan,
    estimate,
    parse_count,
    parse_duration_hours,
    parse_global_batch,
)
from seekforge.plan.hardware import BUILTIN, get_hardware, hardware_names, load_hardware_file
from seekforge.utils import human_bytes, human_count


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="estimate memory, time, cost and energy of a training or serving run",
        description="Estimate memory per device, training time, cost and energy before launching a run; "
                    "with --budget, the largest compute-optimal model a budget buys. Formulas: docs/plan.md.")
    add_plan_args(p)
    p.set_defaults(func=run)


def add_plan_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model (exactly one)")
    m.add_argument("--preset", help=f"a seekforge preset: {', '.join([*PRESETS, *V4_PRESETS])}")
    m.add_argument("--config", help="a seekforge YAML: a model config, or a training config with a "
                   "model: key")
    m.add_argument("--model", dest="model_dir", metavar="DIR",
                   help="a local HF model directory (config.json of DeepSeek-V3/V2, Llama, Mistral, Qwen2/3, "
                        "Mixtral, Qwen2/3-MoE)")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model field of --preset/--config, e.g. --set num_hidden_layers=8")

    t = p.add_argument_group("what to run")
    t.add_argument("--method", choices=METHODS, default="pretrain",
                   help="pretrain | full (fine-tune) | lora | qlora (4-bit base) | inference (serving)")
    t.add_argument("--tokens", help="training tokens (2B, 300M, 1.5T); serving: tokens to generate")
    t.add_argument("--tokens-per-param", type=float, help="training tokens as a multiple of params_total "
                   "(default for pretraining: 20, Chinchilla)")
    t.add_argument("--seq-len", type=int, help="tokens per training sequence (default 2048, or the config's)")
    t.add_argument("--global-batch", help="tokens per optimizer step (1M, 524288), or sequences with a 'seq' "
                   "suffix (512seq); default: one micro-batch per data-parallel rank")
    t.add_argument("--micro-batch", type=int, help="sequences per device per forward/backward (default 1)")
    t.add_argument("--lora-rank", type=int, default=16, help="LoRA/QLoRA rank r (default 16)")
    t.add_argument("--context", type=int, default=4096, help="serving: tokens per sequence in the KV cache")
    t.add_argument("--concurrency", type=int, default=1, help="serving: sequences decoded at once")

    s = p.add_argument_group("precision, memory and parallelism")
    s.add_argument("--precision", choices=PRECISIONS, help="fp32 | bf16 (mixed) | fp8 (DeepSeek-V3 recipe); "
                   "default fp32 on cpu, bf16 elsewhere")
    s.add_argument("--checkpointing", choices=CHECKPOINTING, default="none",
                   help="activation checkpointing: none | selective | full")
    s.add_argument("--sharding", choices=list(SHARDING), default="ddp",
                   help="data-parallel sharding: ddp | zero1 | zero2 | zero3 | fsdp (= zero3)")
    s.add_argument("--offload", choices=OFFLOAD, default="none",
                   help="CPU offload: none | optimizer | params")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    s.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree")
    s.add_argument("--ep", type=int, default=1,
                   help="expert-parallel degree (divides the data-parallel degree)")

    h = p.add_argument_group("hardware and prices")
    h.add_argument("--hardware",
                   help="device name (default h100-sxm; cpu with --measure); see --list-hardware")
    h.add_argument("--hardware-file", help="YAML/JSON file adding or overriding hardware entries")
    h.add_argument("--list-hardware", action="store_true", help="print the hardware table and exit")
    h.add_argument("--num-gpus", type=int, default=1, help="number of devices (default 1)")
    h.add_argument("--mfu", type=float, help="model-FLOPs utilisation (default: the hardware's)")
    h.add_argument("--price", type=float, help="USD per device-hour (default: the hardware's)")
    h.add_argument("--electricity-price", type=float, default=0.0,
                   help="USD per kWh added to the cost (default 0: rental prices include power)")
    h.add_argument("--pue", type=float, default=1.2, help="data-centre PUE for energy (default 1.2)")

    b = p.add_argument_group("inverse mode")
    b.add_argument("--budget", help="wall-clock budget (3h, 90m, 2d): the largest compute-optimal model")
    b.add_argument("--budget-usd", type=float, help="dollar budget instead of hours")

    x = p.add_argument_group("measure (runs the real trainer for a few steps)")
    x.add_argument("--measure", action="store_true", help="run `seekforge train` for a few steps and report "
                   "peak memory, tokens/s and MFU next to the estimate")
    x.add_argument("--measure-steps", type=int, default=3,
                   help="steps to run (default 3; the first is warm-up)")
    x.add_argument("--data", help="training data for --measure (token shards or .txt/.jsonl)")
    x.add_argument("--tokenizer", help="tokenizer directory for --measure with raw text data")
    x.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra `seekforge train --set` overrides for --measure")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def spec_from_args(args: argparse.Namespace, train_defaults: dict[str, Any]) -> PlanSpec:
    seq_len = args.seq_len or train_defaults.get("seq_len") or 2048
    micro = (args.micro_batch or train_defaults.get("micro_batch_size") or train_defaults.get("micro_batch")
             or 1)
    if args.global_batch is not None:
        global_batch = parse_global_batch(args.global_batch, seq_len)
        if global_batch <= 0:
            raise ConfigError(f"--global-batch must be > 0 (got {args.global_batch!r})")
    else:
        global_batch = train_defaults.get("batch_tokens")
    return PlanSpec(
        method=args.method, tokens=parse_count(args.tokens, "--tokens") if args.tokens is not None else None,
        tokens_per_param=args.tokens_per_param, seq_len=seq_len, global_batch_tokens=global_batch,
        micro_batch=micro, lora_rank=args.lora_rank, context=args.context, concurrency=args.concurrency,
        precision=args.precision, checkpointing=args.checkpointing, zero=SHARDING[args.sharding],
        offload=args.offload, tp=args.tp, pp=args.pp, ep=args.ep, num_gpus=args.num_gpus, mfu=args.mfu,
        price=args.price, electricity_price=args.electricity_price, pue=args.pue)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-ready result of ``seekforge plan`` for parsed arguments (used by run() and tests)."""
    if args.measure:
        _check_measure_args(args)
    hw_name = args.hardware or ("cpu" if args.measure else "h100-sxm")
    hw = get_hardware(hw_name, args.hardware_file)
    inverse = args.budget is not None or args.budget_usd is not None
    has_model = any((args.preset, args.config, args.model_dir))
    if inverse:
        arch, train_defaults = resolve_arch(args.preset, args.config, args.model_dir, args.overrides) \
            if has_model else (None, {})
        spec = spec_from_args(args, train_defaults)
        hours = parse_duration_hours(args.budget) if args.budget is not None else None
        presets = {n: arch_from_model_config(preset_config(n), name=n) for n in PRESETS}
        return budget_plan(hw, spec, hours=hours, usd=args.budget_usd, model=arch, presets=presets)
    arch, train_defaults = resolve_arch(args.preset, args.config, args.model_dir, args.overrides)
    if args.measure:  # plan exactly what `seekforge train` will run: its defaults unless given
        train_defaults = {**_trainer_defaults(), **train_defaults}
    spec = spec_from_args(args, train_defaults)
    result = estimate(arch, hw, spec)
    if args.measure:
        result["measured"] = _measure(args, spec, hw.name)
    return result


def _trainer_defaults() -> dict[str, Any]:
    import dataclasses

    try:
        from seekforge.train.config import TrainConfig
    except ImportError as e:
        raise ConfigError(f"--measure needs `seekforge train`, which is not importable here: {e}") from None
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {k: fields[k] for k in ("seq_len", "batch_tokens", "micro_batch_size")}


def _check_measure_args(args: argparse.Namespace) -> None:
    """Fail fast (before measuring the CPU or planning) on --measure requests that cannot run."""
    if args.method != "pretrain":
        raise ConfigError("--measure runs `seekforge train` and so only supports --method pretrain")
    if args.model_dir or (args.preset and args.overrides):
        raise ConfigError("--measure needs --preset NAME (without --set) or a training --config")
    if args.preset in LARGE_PRESETS or args.preset in V4_LARGE_PRESETS:
        raise ConfigError(f"--measure: preset {args.preset!r} is too large to train here; "
                          "measure a small one")
    if not args.data and not args.config:
        raise ConfigError("--measure needs training data: --data PATH (token shards or .txt/.jsonl), "
                          "or a training --config with data.train")


def _measure(args: argparse.Namespace, spec: PlanSpec, hw_name: str) -> dict[str, Any]:
    from seekforge.plan.measure import measure

    if hw_name != "cpu":
        print("note: --measure runs on this machine; compare its numbers with --hardware cpu",
              file=sys.stderr)
    batch = spec.global_batch_tokens or spec.micro_batch * spec.seq_len
    return measure(steps=args.measure_steps, preset=args.preset, config=args.config, seq_len=spec.seq_len,
                   batch_tokens=batch, micro_batch=spec.micro_batch, data=args.data, tokenizer=args.tokenizer,
                   checkpointing=spec.checkpointing, extra=args.train_set)


# ------------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------------
def _hours(h: float | None) -> str:
    if h is None:
        return "-"
    if h < 1 / 60:
        return f"{h * 3600:.1f} s"
    if h < 1:
        return f"{h * 60:.1f} min"
    if h < 48:
        return f"{h:.2f} h"
    return f"{h / 24:.1f} days"


def _num(x: float | None, fmt: str = "{:,.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_table(r: dict[str, Any]) -> str:
    if "compute_optimal" in r:
        return format_budget(r)
    lines = [f"seekforge plan: {r['method']} on {r['num_gpus']} x {r['hardware']} ({r['precision']})", ""]

    def row(name: str, value: str, note: str = "") -> None:
        lines.append(f"  {name:<26} {value:>16}  {note}".rstrip())

    row("params total", human_count(r["params_total"]), f"embedding {human_count(r['params_embedding'])}"
        + (f", MTP {human_count(r['params_mtp'])} (apart)" if r["params_mtp"] else ""))
    row("params active / token", human_count(r["params_active"]))
    row("FLOPs / token", f"{r['flops_per_token']:.3e}")
    if r.get("tokens"):
        row("tokens", human_count(r["tokens"]))
    if r.get("total_flops"):
        row("total FLOPs", f"{r['total_flops']:.3e}")
    lines.append("")
    lines.append("  memory per device")
    mem = r["memory_per_device_bytes"]
    for key in ("weights", "gradients", "optimizer_states", "activations", "buffers", "kv_cache"):
        if mem[key]:
            logits = key == "activations" and r["logits_bytes"]
            note = f"logits {human_bytes(r['logits_bytes'])}" if logits else ""
            row(f"  {key}", human_bytes(mem[key]), note)
    verdict = "fits" if r["fits"] else "DOES NOT FIT"
    row("  total", human_bytes(mem["total"]), f"of {human_bytes(r['device_memory_bytes'])}: {verdict}")
    if r.get("host_memory_bytes"):
        row("  offloaded to host", human_bytes(r["host_memory_bytes"]))
    if not r["fits"]:
        s = r.get("suggestion")
        if s:
            host = s["host_memory_bytes"]
            extra = f", {human_bytes(host)} host RAM per device" if host else ""
            lines.append(f"  -> cheapest change that fits: {s['change']} "
                         f"({human_bytes(s['memory_per_device_bytes'])}{extra})")
        else:
            lines.append("  -> nothing in the search fits (see docs/plan.md)")
    lines.append("")
    row("throughput", f"{human_count(r['tokens_per_s'])} tok/s", f"at MFU {r['mfu']:.0%}"
        if r["method"] != "inference" else "decode, all devices")
    row("wall time", _hours(r["hours"]))
    row("device-hours", _num(r["device_hours"]))
    row("cost", "-" if r["cost_usd"] is None else f"${r['cost_usd']:,.2f}",
        f"at ${r['price_per_device_hour']:.2f}/device-hour")
    row("energy", "-" if r["energy_kwh"] is None else f"{r['energy_kwh']:,.2f} kWh")
    if "measured" in r:
        m = r["measured"]
        lines += ["", "  measured (this machine)"]
        est = r["memory_per_device_bytes"]["total"]
        row("  peak memory (RSS)", human_bytes(m["peak_memory_bytes"]),
            f"estimate {human_bytes(est)} ({(est / m['peak_memory_bytes'] - 1):+.0%})")
        row("  tokens/s", _num(m["tokens_per_s"], "{:,.0f}"), f"estimate {r['tokens_per_s']:,.0f}")
        row("  MFU", _num(m["mfu"], "{:.1%}"), f"estimate {r['mfu']:.1%}")
    return "\n".join(lines)


def format_budget(r: dict[str, Any]) -> str:
    co = r["compute_optimal"]
    lines = [f"seekforge plan --budget: {_hours(r['budget_hours'])} on {r['num_gpus']} x {r['hardware']} "
             f"(${r['budget_usd']:,.2f}, MFU {r['mfu']:.0%}) = {r['total_flops']:.3e} FLOPs", "",
             f"  compute-optimal (Chinchilla, {co['tokens_per_param']:.0f} tokens/param): "
             f"{human_count(co['params'])} params on {human_count(co['tokens'])} tokens"]
    if r.get("preset"):
        p = r["preset"]
        lines.append(f"  largest preset: {p['name']} ({human_count(p['params_total'])} total, "
                     f"{human_count(p['params_active'])} active) on {human_count(p['tokens'])} tokens in "
                     f"{_hours(p['hours'])}; memory {'fits' if p['fits'] else 'does NOT fit'} one device")
    elif "preset" in r:
        lines.append("  no preset is small enough for this budget")
    if r.get("model"):
        mm = r["model"]
        lines.append(f"  your model ({human_count(mm['params_total'])}): {human_count(mm['tokens'])} tokens "
                     f"({mm['tokens_per_param']:.1f} per param)")
    return "\n".join(lines)


def format_hardware(hardware_file: str | None) -> str:
    table = dict(BUILTIN)
    if hardware_file:
        table.update(load_hardware_file(hardware_file))
    head = (f"{'name':<14}{'mem GiB':>8}{'bf16 TF':>9}{'fp8 TF':>8}{'fp32 TF':>9}{'GB/s':>7}{'W':>6}"
            f"{'MFU':>6}{'$/h':>7}")
    lines = [head]
    for h in table.values():
        lines.append(f"{h.name:<14}{h.memory_gib:>8.0f}{h.bf16_tflops:>9.0f}{h.fp8_tflops:>8.0f}"
                     f"{h.fp32_tflops:>9.1f}{h.mem_bw_gbs:>7.0f}{h.tdp_w:>6.0f}{h.mfu:>6.2f}{h.price_per_hour:>7.2f}"
                     f"  {h.notes}")
    lines.append(f"{'cpu':<14} this machine: memory from psutil, fp32 peak = a measured matmul")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.list_hardware:
        print(format_hardware(args.hardware_file))
        return 0
    if args.hardware_file:
        hardware_names(args.hardware_file)  # validate the file early, naming it in errors
    result = plan(args)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print(format_table(result))
    return 0
