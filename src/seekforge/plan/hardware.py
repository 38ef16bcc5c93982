"""The accelerators ``seekforge plan`` knows: memory, dense peak FLOP/s, power, typical MFU and price.

Numbers are *dense* (no 2:4 sparsity) peaks per device from vendor datasheets; the sources and the
reasoning behind every default MFU and price are in ``docs/plan.md`` ("Hardware table"). Users
add or override entries with ``--hardware-file my.yaml`` (YAML or JSON), for example::

    h100-96gb:                     # a new name, or an existing one to override
      base: h100-sxm               # optional: start from a built-in entry
      memory_gib: 94
      tdp_w: 500

The special entry ``cpu`` is this machine: its memory comes from psutil and its fp32 peak is the
throughput of a large fp32 matmul measured for ~0.3 s (a practical peak, not a datasheet number).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seekforge.config import ConfigError, closest, from_dict, read_yaml

GIB = 2**30
TERA = 1e12


@dataclass
class Hardware:
    """One device. FLOP/s are dense peaks; 0 means the precision is not supported."""

    name: str
    memory_gib: float  # device memory as the driver reports it
    bf16_tflops: float  # dense bf16/fp16 tensor-core peak (fp32 accumulate)
    fp8_tflops: float
    fp32_tflops: float  # plain fp32 (PyTorch leaves TF32 matmuls off by default)
    mem_bw_gbs: float  # memory bandwidth, GB/s (decode speed when serving)
    tdp_w: float  # board power; energy = device-hours x TDP x PUE
    mfu: float  # default model-FLOPs utilisation for training on this device
    price_per_hour: float  # USD per device-hour (rental; includes power)
    runtime_gib: float = 1.0  # framework baseline per device (CUDA context, cuBLAS/NCCL workspaces)
    mbu: float = 0.6  # memory-bandwidth utilisation reached by decode kernels
    notes: str = ""

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    def peak_flops(self, precision: str) -> float:
        """Dense peak FLOP/s for ``fp32`` / ``bf16`` / ``fp8``; raises if the device lacks it."""
        value = {"fp32": self.fp32_tflops, "bf16": self.bf16_tflops, "fp8": self.fp8_tflops}[precision]
        if value <= 0:
            raise ConfigError(f"--precision {precision}: {self.name} has no {precision} tensor cores; "
                              "use bf16 (or fp32)")
        return value * TERA

    def validate(self) -> None:
        for name in ("memory_gib", "bf16_tflops", "mfu"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"hardware {self.name!r}: {name} must be > 0 (got {getattr(self, name)})")
        if not 0 < self.mfu <= 1 or not 0 < self.mbu <= 1:
            raise ConfigError(f"hardware {self.name!r}: mfu and mbu must be in (0, 1]")
        for name in ("fp8_tflops", "fp32_tflops", "mem_bw_gbs", "tdp_w", "price_per_hour", "runtime_gib"):
            if getattr(self, name) < 0:
                raise ConfigError(f"hardware {self.name!r}: {name} must be >= 0 (got {getattr(self, name)})")


def _hw(name: str, mem: float, bf16: float, fp8: float, fp32: float, bw: float, tdp: float, mfu: float,
        price: float, notes: str = "") -> Hardware:
    return Hardware(name, mem, bf16, fp8, fp32, bw, tdp, mfu, price, notes=notes)


# name: memory GiB, bf16, fp8, fp32 TFLOP/s, bandwidth GB/s, TDP W, default MFU, $/device-hour.
# MFU defaults: 0.40 for Hopper (torchtitan 33-39%, Megatron 41-48%, nanochat 41-46%), 0.45 for Ampere
# (torchtitan's A100 runs reach 52-58%; smaller jobs less), 0.35 for Ada/consumer and non-NVIDIA parts
# (less mature kernels or PCIe-only links). Prices: typical 2025-26 on-demand cloud rates; the H800
# $2/h is DeepSeek-V3's own assumption. See docs/plan.md for sources.
BUILTIN: dict[str, Hardware] = {h.name: h for h in [
    _hw("h100-sxm", 80, 989.4, 1978.9, 66.9, 3350, 700, 0.40, 3.00, "H100 SXM5 80GB HBM3"),
    _hw("h100-pcie", 80, 756.0, 1513.0, 51.2, 2000, 350, 0.40, 2.50, "H100 PCIe 80GB HBM2e"),
    _hw("h800", 80, 989.4, 1978.9, 66.9, 3350, 700, 0.40, 2.00, "H800 SXM (export H100: 400 GB/s NVLink)"),
    _hw("h200", 141, 989.4, 1978.9, 66.9, 4800, 700, 0.40, 3.50, "H200 SXM 141GB HBM3e"),
    _hw("a100-40gb", 40, 312.0, 0.0, 19.5, 1555, 400, 0.45, 1.30, "A100 SXM4 40GB"),
    _hw("a100-80gb", 80, 312.0, 0.0, 19.5, 2039, 400, 0.45, 1.80, "A100 SXM4 80GB"),
    _hw("a800", 80, 312.0, 0.0, 19.5, 2039, 400, 0.45, 1.50, "A800 80GB (export A100: 400 GB/s NVLink)"),
    _hw("l40s", 48, 362.1, 733.0, 91.6, 864, 350, 0.35, 1.00, "L40S 48GB GDDR6, PCIe"),
    _hw("rtx-4090", 24, 165.2, 330.3, 82.6, 1008, 450, 0.35, 0.40,
        "GeForce: bf16 with fp32 accumulate runs at half the fp16-accumulate 330 TFLOP/s"),
    _hw("rtx-3090", 24, 71.0, 0.0, 35.6, 936, 350, 0.35, 0.25,
        "GeForce: bf16 with fp32 accumulate runs at half the fp16-accumulate 142 TFLOP/s"),
    _hw("mi300x", 192, 1307.4, 2614.9, 163.4, 5300, 750, 0.35, 2.50, "AMD MI300X 192GB HBM3"),
    _hw("ascend-910b", 64, 313.0, 0.0, 75.0, 1600, 400, 0.35, 1.50,
        "Huawei Ascend 910B 64GB; fp16/bf16 peak from press reports, fp32 approximate"),
]}

CPU_NAME = "cpu"
_cpu_cache: Hardware | None = None


def measure_cpu_matmul_tflops(seconds: float = 0.3, n: int = 1024) -> float:
    """fp32 FLOP/s of repeated n x n matmuls over about ``seconds`` (all intra-op threads)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up (thread pool, caches)
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * n**3 * reps / elapsed / TERA


# Run in a fresh child: import torch and the model, then two AdamW steps of the 0.26M-parameter
# `tiny` preset, so that the kernels' one-time state (oneDNN/MKL scratch, OpenMP and autograd
# threads) is in the number too. Measured here: import torch 220 MiB, + seekforge 225, + two tiny
# steps 324 MiB. The tiny model's own tensors are ~4 MB of that.
_RUNTIME_PROBE = """
import psutil, torch
from seekforge.model import load_model
torch.manual_seed(0)
m = load_model("tiny")
x = torch.randint(0, m.config.vocab_size, (2, 64))
opt = torch.optim.AdamW(m.parameters(), foreach=True)
for _ in range(2):
    m(x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
print(psutil.Process().memory_info().rss)
"""


def measure_idle_rss_gib() -> float:
    """Resident memory of a fresh Python that imported torch and seekforge and ran two tiny steps.

    This is the floor under every CPU run (libtorch, MKL/oneDNN, thread pools, the Python heap), so
    the CPU memory estimate adds it as ``buffers``. Measured in a child so this process's own state
    does not leak in.
    """
    import subprocess
    import sys

    code = _RUNTIME_PROBE
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             check=True)
        return int(out.stdout.strip().splitlines()[-1]) / GIB
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return 0.32  # what this measured at on the reference machine (torch 2.13 CPU wheel)


def _cache_path() -> Path:
    import os

    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "seekforge" / "plan_cpu.json"


def _cpu_probe() -> tuple[float, float]:
    """(fp32 TFLOP/s, runtime GiB) of this machine, measured once and cached on disk.

    The probe takes seconds (a child process imports torch), so its result is kept in
    ``~/.cache/seekforge/plan_cpu.json`` per CPU model, thread count, torch and seekforge version;
    delete the file to measure again.
    """
    import platform

    import torch

    import seekforge

    key = f"{platform.processor() or platform.machine()}|{torch.get_num_threads()} threads|" \
          f"torch {torch.__version__}|seekforge {seekforge.__version__}"
    path = _cache_path()
    try:
        cached = json.loads(path.read_text(encoding="utf-8")).get(key)
        if cached:
            return float(cached["fp32_tflops"]), float(cached["runtime_gib"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    fp32, runtime = measure_cpu_matmul_tflops(), measure_idle_rss_gib()
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        data = data if isinstance(data, dict) else {}
        data[key] = {"fp32_tflops": fp32, "runtime_gib": runtime}
        from seekforge.utils import atomic_write_text

        atomic_write_text(path, json.dumps(data, indent=1))
    except (OSError, ValueError):
        pass  # a read-only home only costs a re-measurement next time
    return fp32, runtime


def cpu_hardware() -> Hardware:
    """This machine as a device (probed once per machine, see :func:`_cpu_probe`)."""
    global _cpu_cache
    if _cpu_cache is None:
        import psutil

        fp32, runtime = _cpu_probe()
        _cpu_cache = Hardware(
            name=CPU_NAME, memory_gib=psutil.virtual_memory().total / GIB,
            # seekforge trains in fp32 on CPUs; bf16 matmuls are not faster on most of them.
            bf16_tflops=fp32, fp8_tflops=0.0, fp32_tflops=fp32, mem_bw_gbs=20.0, tdp_w=65.0,
            # MFU against the measured matmul rate; small models are dominated by non-matmul work.
            mfu=0.3, price_per_hour=0.0, runtime_gib=runtime, mbu=0.5,
            notes=f"this machine: {psutil.cpu_count(logical=True)} threads, fp32 peak = measured matmul",
        )
    return dataclasses.replace(_cpu_cache)


def load_hardware_file(path: str | Path) -> dict[str, Hardware]:
    """Entries of a YAML/JSON hardware file, each a mapping of :class:`Hardware` fields (+ ``base``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--hardware-file {path} does not exist")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"--hardware-file {path}:{e.lineno}: invalid JSON: {e.msg}") from None
    else:
        data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"--hardware-file {path}: expected a mapping of name -> fields")
    out: dict[str, Hardware] = {}
    for name, fields in data.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"--hardware-file {path}: entry {name!r} must be a mapping of fields")
        fields = dict(fields)
        base_name = fields.pop("base", None)
        base: dict[str, Any] = {}
        if base_name is not None:
            known = {**BUILTIN, **out}
            if base_name not in known:
                raise unknown_hardware(str(base_name), list(known), flag=f"{path}: {name}.base")
            base = dataclasses.asdict(known[base_name])
        elif name in BUILTIN:
            base = dataclasses.asdict(BUILTIN[name])  # overriding a built-in entry field by field
        try:
            out[name] = from_dict(Hardware, {**base, **fields, "name": name})
        except ConfigError as e:
            raise ConfigError(f"--hardware-file {path}: {name}: {e}") from None
    return out


def unknown_hardware(name: str, valid: list[str], flag: str = "--hardware") -> ConfigError:
    # Names that extend what was typed ("h100" -> h100-sxm, h100-pcie) first, then spelling neighbours.
    key = name.lower().replace("_", "-")
    near = [v for v in valid if v.startswith(key)][:3] or closest(name, valid)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return ConfigError(f"{flag}: unknown hardware {name!r}.{hint} Valid names: {', '.join(valid)}")


def get_hardware(name: str, hardware_file: str | Path | None = None) -> Hardware:
    """A built-in, file-defined or ``cpu`` device by name (case-insensitive, '_' = '-')."""
    table = dict(BUILTIN)
    if hardware_file:
        table.update(load_hardware_file(hardware_file))
    key = name.strip()
    if key not in table:
        key = key.lower().replace("_", "-").replace(" ", "-")
    if key == CPU_NAME and CPU_NAME not in table:
        return cpu_hardware()
    if key not in table:
        raise unknown_hardware(name, [*table, CPU_NAME])
    return dataclasses.replace(table[key])


def hardware_names(hardware_file: str | Path | None = None) -> list[str]:
    names = list(BUILTIN)
    if hardware_file:
        names += [n for n in load_hardware_file(hardware_file) if n not in BUILTIN]
    return [*names, CPU_NAME]
