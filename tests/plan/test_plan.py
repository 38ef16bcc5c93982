"""seekforge plan: formulas, the "make it fit" search, inverse mode, hardware table, errors, CLI output."""

from __future__ import annotations

import json
import math

import pytest

from seekforge.config import ConfigError
from seekforge.model.accounting import arch_from_model_config, param_counts
from seekforge.model.config import preset_config
from seekforge.plan.estimate import (
    CHINCHILLA_TOKENS_PER_PARAM,
    PlanSpec,
    estimate,
    parse_count,
    parse_duration_hours,
    parse_global_batch,
    training_flops_per_token,
)
from seekforge.plan.hardware import BUILTIN, get_hardware, load_hardware_file

LLAMA2_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32)
JSON_KEYS = {"params_total", "params_active", "flops_per_token", "total_flops", "memory_per_device_bytes",
             "fits", "hours", "device_hours", "cost_usd", "energy_kwh"}
MEMORY_KEYS = {"weights", "gradients", "optimizer_states", "activations", "buffers", "kv_cache", "total"}


def test_parsers():
    assert parse_count("2B", "--tokens") == 2e9
    assert parse_count("1.5T", "--tokens") == 1.5e12
    assert parse_count("300m", "--tokens") == 3e8
    assert parse_count("1e9", "--tokens") == 1e9
    assert parse_duration_hours("90m") == 1.5
    assert parse_duration_hours("2d") == 48
    assert parse_global_batch("1M", 2048) == 1_000_000
    assert parse_global_batch("512seq", 4096) == 512 * 4096
    with pytest.raises(ConfigError, match="--tokens: '2 bananas' is not a count"):
        parse_count("2 bananas", "--tokens")
    with pytest.raises(ConfigError, match="--budget: 'soon' is not a duration"):
        parse_duration_hours("soon")


def test_time_cost_energy_formulas(run_plan):
    r = run_plan(["--preset", "1b-moe", "--tokens", "20B", "--hardware", "h100-sxm", "--num-gpus", "8",
                  "--seq-len", "4096", "--micro-batch", "4", "--global-batch", "1M"])
    assert set(r) >= JSON_KEYS and set(r["memory_per_device_bytes"]) == MEMORY_KEYS
    hw = BUILTIN["h100-sxm"]
    # hours = D · F / (n · peak · MFU); device-hours · price; device-hours · TDP · PUE.
    hours = 20e9 * r["flops_per_token"] / (8 * hw.bf16_tflops * 1e12 * hw.mfu) / 3600
    assert r["hours"] == pytest.approx(hours)
    assert r["device_hours"] == pytest.approx(8 * hours)
    assert r["cost_usd"] == pytest.approx(8 * hours * hw.price_per_hour)
    assert r["energy_kwh"] == pytest.approx(8 * hours * 0.7 * 1.2)
    assert r["total_flops"] == pytest.approx(20e9 * r["flops_per_token"])
    assert r["steps"] == math.ceil(20e9 / 1_000_000)
    mem = r["memory_per_device_bytes"]
    parts = sum(v for k, v in mem.items() if k != "total")
    assert mem["total"] == pytest.approx(parts, abs=8)  # parts are rounded to whole bytes
    # Mixed precision with DDP: 2 + 4 + 12 bytes per trained parameter (main model + MTP).
    pc = param_counts(preset_config("1b-moe"))
    states = mem["weights"] + mem["gradients"] + mem["optimizer_states"]
    assert states == pytest.approx(18 * (pc["total"] + pc["mtp"]), rel=1e-6)
    # More devices or a higher MFU make it proportionally faster; electricity adds to the cost.
    r2 = run_plan(["--preset", "1b-moe", "--tokens", "20B", "--num-gpus", "16", "--mfu", "0.2",
                   "--electricity-price", "0.1", "--seq-len", "4096"])
    assert r2["hours"] == pytest.approx(r["hours"] * 8 / 16 * 0.4 / 0.2)
    assert r2["cost_usd"] == pytest.approx(r2["device_hours"] * 3.0 + r2["energy_kwh"] * 0.1)


def test_zero_stages_shard_states():
    arch = arch_from_model_config(preset_config("1b-moe"))
    hw = BUILTIN["a100-80gb"]
    mem = {z: estimate(arch, hw, PlanSpec(num_gpus=8, zero=z, tokens=1e9))["memory_per_device_bytes"]
           for z in range(4)}
    n = sum(param_counts(arch)[k] for k in ("total", "mtp"))
    assert mem[1]["optimizer_states"] == pytest.approx(12 * n / 8, rel=1e-6)
    assert mem[2]["gradients"] == pytest.approx(4 * n / 8, rel=1e-6)
    assert mem[3]["weights"] == pytest.approx(2 * n / 8, rel=1e-6)
    assert mem[0]["total"] > mem[1]["total"] > mem[2]["total"] > mem[3]["total"]
    # Expert parallelism splits the routed experts before ZeRO shards the rest.
    ep = estimate(arch, hw, PlanSpec(num_gpus=8, ep=8, tokens=1e9))["memory_per_device_bytes"]
    assert ep["weights"] < mem[0]["weights"] / 2


def test_checkpointing_and_micro_batch_scale_activations():
    arch = arch_from_model_config(preset_config("1b-moe"))
    hw = BUILTIN["h100-sxm"]

    def act(**kw):
        return estimate(arch, hw, PlanSpec(tokens=1e9, **kw))["memory_per_device_bytes"]["activations"]

    assert act(checkpointing="none") > act(checkpointing="selective") > act(checkpointing="full")
    assert act(micro_batch=4) == pytest.approx(4 * act(micro_batch=1))
    # Full checkpointing re-runs the forward: 8/6 of the time.
    base = estimate(arch, hw, PlanSpec(tokens=1e9))["hours"]
    full = estimate(arch, hw, PlanSpec(tokens=1e9, checkpointing="full"))["hours"]
    assert full == pytest.approx(base * 4 / 3)


def test_lora_flops_and_fp8():
    arch = arch_from_model_config(preset_config("1b-moe"))
    full = training_flops_per_token(arch, PlanSpec(method="full"))
    lora = training_flops_per_token(arch, PlanSpec(method="lora"))
    assert 0.6 < lora / full < 0.8  # frozen weights skip their weight gradients (4N instead of 6N)
    h100 = BUILTIN["h100-sxm"]
    bf16 = estimate(arch, h100, PlanSpec(tokens=1e9))
    fp8 = estimate(arch, h100, PlanSpec(tokens=1e9, precision="fp8"))
    assert fp8["hours"] < bf16["hours"]
    assert fp8["memory_per_device_bytes"]["weights"] < bf16["memory_per_device_bytes"]["weights"]
    with pytest.raises(ConfigError, match="a100-80gb has no fp8"):
        estimate(arch, BUILTIN["a100-80gb"], PlanSpec(tokens=1e9, precision="fp8"))


def test_suggestions_follow_the_search_order(run_plan, model_dir):
    d = model_dir(LLAMA2_7B)
    # Activations overflow: a smaller micro-batch is the first thing tried.
    r = run_plan(["--model", d, "--hardware", "h100-sxm", "--num-gpus", "8", "--sharding", "fsdp",
                  "--micro-batch", "16", "--seq-len", "4096", "--tokens", "1B"])
    assert not r["fits"] and r["suggestion"]["change"].startswith("--micro-batch ")
    # States overflow on 8 GPUs with DDP at micro-batch 1: checkpointing cannot help, ZeRO can.
    r = run_plan(["--model", d, "--hardware", "a100-80gb", "--num-gpus", "8", "--tokens", "1B",
                  "--checkpointing", "full"])
    assert not r["fits"] and r["suggestion"]["change"] == "--sharding zero1"
    # One device, everything else exhausted: offload.
    r = run_plan(["--model", d, "--method", "full", "--hardware", "a100-80gb", "--checkpointing", "full"])
    assert r["suggestion"]["change"] == "--offload optimizer"
    assert r["suggestion"]["memory_per_device_bytes"] <= 80 * 2**30
    # Serving V3 on one H100: more devices (tensor parallel), as few as fit.
    r = run_plan(["--preset", "v3", "--method", "inference", "--hardware", "h100-sxm", "--precision", "fp8"])
    n = int(r["suggestion"]["change"].split()[1])
    assert "--tp" in r["suggestion"]["change"] and n * 80 * 2**30 >= 671e9
    # Training V3 on consumer cards needs expert parallelism on top of FSDP to shrink the MoE units.
    r = run_plan(["--preset", "v3", "--hardware", "rtx-4090", "--tokens", "1T"])
    assert "--ep" in r["suggestion"]["change"]


def test_serving_kv_cache_mla_vs_gqa(run_plan, model_dir):
    r = run_plan(["--preset", "v2-lite", "--method", "inference", "--context", "32768", "--concurrency", "8"])
    assert r["memory_per_device_bytes"]["kv_cache"] == 8 * 32768 * 27 * 576 * 2
    assert r["memory_per_device_bytes"]["gradients"] == 0 and r["tokens_per_s"] > 0
    # GQA heads split over tensor-parallel ranks; the MLA latent does not.
    g1 = run_plan(["--model", model_dir(LLAMA2_7B), "--method", "inference", "--context", "4096"])
    g2 = run_plan(["--model", model_dir(LLAMA2_7B), "--method", "inference", "--context", "4096",
                   "--num-gpus", "2", "--tp", "2"])
    assert g2["memory_per_device_bytes"]["kv_cache"] == g1["memory_per_device_bytes"]["kv_cache"] / 2
    m2 = run_plan(["--preset", "v2-lite", "--method", "inference", "--num-gpus", "2", "--tp", "2"])
    m1 = run_plan(["--preset", "v2-lite", "--method", "inference"])
    assert m2["memory_per_device_bytes"]["kv_cache"] == m1["memory_per_device_bytes"]["kv_cache"]
    t = run_plan(["--preset", "v2-lite", "--method", "inference", "--tokens", "1M"])
    assert t["hours"] == pytest.approx(1e6 / t["tokens_per_s"] / 3600)


def test_budget_inverse_mode(run_plan):
    r = run_plan(["--budget", "3h", "--hardware", "h100-sxm", "--num-gpus", "8"])
    hw = BUILTIN["h100-sxm"]
    compute = 3 * 3600 * 8 * hw.bf16_tflops * 1e12 * hw.mfu
    assert r["total_flops"] == pytest.approx(compute)
    n = r["compute_optimal"]["params"]
    assert 6 * n * (CHINCHILLA_TOKENS_PER_PARAM * n) == pytest.approx(compute)  # C = 6·N·D, D = 20·N
    best = r["preset"]
    assert best["hours"] <= 3
    # The next larger preset would not be compute-optimal within the budget.
    bigger = [p for p in ("tiny", "small-moe", "100m-moe", "1b-moe", "v2-lite", "v3")
              if param_counts(preset_config(p))["total"] > best["params_total"]][0]
    arch = arch_from_model_config(preset_config(bigger))
    tokens = CHINCHILLA_TOKENS_PER_PARAM * param_counts(arch)["total"]
    assert training_flops_per_token(arch, PlanSpec()) * tokens > compute
    usd = run_plan(["--budget-usd", "100", "--hardware", "h100-sxm", "--num-gpus", "8", "--preset", "1b-moe"])
    assert usd["budget_hours"] == pytest.approx(100 / (8 * hw.price_per_hour))
    assert usd["model"]["tokens"] > 0
    with pytest.raises(ConfigError, match="--budget-usd needs a price"):
        run_plan(["--budget-usd", "10", "--hardware", "rtx-3090", "--price", "0"])


def test_hardware_table_and_file(tmp_path):
    for name in ("h100-sxm", "h100-pcie", "h800", "h200", "a100-40gb", "a100-80gb", "a800", "l40s",
                 "rtx-4090", "rtx-3090", "mi300x", "ascend-910b"):
        hw = get_hardware(name)
        assert hw.memory_gib > 0 and hw.bf16_tflops > 0 and hw.tdp_w > 0 and 0 < hw.mfu < 1
    assert get_hardware("H100_SXM").name == "h100-sxm"
    with pytest.raises(ConfigError) as e:
        get_hardware("h100")
    assert "Did you mean 'h100-sxm', 'h100-pcie'" in str(e.value) and "rtx-4090" in str(e.value)
    yaml_file = tmp_path / "hw.yaml"
    yaml_file.write_text("my-gpu:\n  base: rtx-4090\n  memory_gib: 48\n  price_per_hour: 0.7\n"
                         "h100-sxm:\n  mfu: 0.5\n")
    table = load_hardware_file(yaml_file)
    assert table["my-gpu"].memory_gib == 48 and table["my-gpu"].bf16_tflops == BUILTIN["rtx-4090"].bf16_tflops
    assert get_hardware("h100-sxm", yaml_file).mfu == 0.5 and get_hardware("h100-sxm").mfu == 0.4
    json_file = tmp_path / "hw.json"
    json_file.write_text(json.dumps({"npu": {"memory_gib": 32, "bf16_tflops": 100, "fp8_tflops": 0,
                                             "fp32_tflops": 10, "mem_bw_gbs": 800, "tdp_w": 300, "mfu": 0.3,
                                             "price_per_hour": 1.0}}))
    assert get_hardware("npu", json_file).memory_gib == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text("x:\n  memory_gib: 8\n  bf16_tflops: 10\n  mfu: 0.3\n  speed: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'speed'"):
        load_hardware_file(bad)
    bad.write_text("x:\n  base: h100\n")
    with pytest.raises(ConfigError, match="unknown hardware 'h100'"):
        load_hardware_file(bad)


def test_cpu_hardware_is_measured():
    import psutil

    cpu = get_hardware("cpu")
    assert cpu.memory_gib == pytest.approx(psutil.virtual_memory().total / 2**30)
    assert cpu.fp32_tflops > 0 and 0.05 < cpu.runtime_gib < 2


@pytest.mark.parametrize("argv, message", [
    (["--preset", "tiny", "--num-gpus", "0"], "--num-gpus must be >= 1"),
    (["--preset", "tiny", "--tokens", "1000", "--seq-len", "512", "--micro-batch", "4"],
     "--tokens 1000 is fewer than one global batch"),
    (["--preset", "tiny", "--hardware", "h100"], "unknown hardware 'h100'"),
    (["--preset", "tiny", "--num-gpus", "6", "--tp", "4"], "multiple of --tp x --pp"),
    (["--preset", "tiny", "--num-gpus", "8", "--ep", "3"], "--ep 3 must divide"),
    (["--preset", "tiny", "--offload", "params"], "--offload params needs --sharding"),
    (["--preset", "tiny", "--mfu", "1.5"], "--mfu must be in"),
    (["--preset", "tiny", "--tokens", "1B", "--tokens-per-param", "20"],
     "either --tokens or --tokens-per-param"),
    (["--preset", "tiny", "--global-batch", "100", "--seq-len", "512"],
     "--global-batch 100 tokens is smaller"),
    (["--tokens", "1B"], "exactly one of --preset"),
    (["--preset", "tiny", "--hardware", "cpu", "--num-gpus", "2"], "must be 1 with --hardware cpu"),
])
def test_bad_input_errors(run_plan, argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run_plan(argv)


def test_cli_json_and_table(capsys):
    from seekforge.cli import main

    argv = ["plan", "--preset", "small-moe", "--tokens", "100M", "--hardware", "rtx-4090", "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) >= JSON_KEYS and r["fits"] is True and r["params_embedding"] == 2 * 8192 * 256
    assert main(["plan", "--preset", "v3", "--hardware", "rtx-4090", "--tokens", "1T"]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "cheapest change that fits" in out and "671.03B" in out
    assert main(["plan", "--list-hardware"]) == 0
    assert "ascend-910b" in capsys.readouterr().out
    assert main(["plan", "--preset", "tiny", "--hardware", "b300"]) == 2
    assert "unknown hardware 'b300'" in capsys.readouterr().err
