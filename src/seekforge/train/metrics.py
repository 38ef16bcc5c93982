"""Where training numbers go: ``metrics.jsonl``, TensorBoard, Weights & Biases, a loss-curve PNG,
and the hardware peak that turns tokens/s into MFU.

``metrics.jsonl`` is the source of truth (one JSON object per logged step; plots and reports are
derived from it). On resume it is cut back to the checkpoint's step, so a run that was killed and
resumed has the same file as one that never stopped.

MFU = achieved model FLOP/s over the hardware peak (PaLM App. B). Model FLOPs per token come from
:func:`seekforge.model.accounting.flops_per_token` (6·N_active + attention). The peak:

* CUDA: the dense bf16/fp16 tensor-core peak from the table below (vendor datasheets, no sparsity).
* CPU: there is no datasheet number worth trusting (turbo, AVX-512 licences, SMT), so we *measure*
  the fp32 matmul throughput (0.2 s of 1024² matmuls, current thread count) at every start and keep
  the best value ever seen in ``~/.cache/seekforge/peak_flops.json``. CPU MFU is then "fraction
  of what this machine's BLAS reaches on a large square matmul" — a practical ceiling.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from seekforge.utils import atomic_write_text

log = logging.getLogger("seekforge.train")

# Dense (non-sparse) bf16 tensor-core peaks in FLOP/s, matched against torch.cuda.get_device_name().
# Order matters: more specific names first.
CUDA_PEAK_BF16 = [
    ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("A10G", 70e12), ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def cuda_peak_flops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    for key, peak in CUDA_PEAK_BF16:
        if key in name:
            return peak
    log.info("no peak FLOP/s known for %r; MFU will not be reported", name)
    return None


def _cpu_key() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def measure_cpu_peak_flops(n: int = 1024, seconds: float = 0.5) -> float:
    """fp32 matmul FLOP/s of this CPU with the current torch thread count (best of a few runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):  # warm up BLAS threads and caches
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        dt = time.perf_counter() - t0
        best = max(best, 4 * 2 * n**3 / dt)
    return best


def cpu_peak_flops(cache: Path | None = None, seconds: float = 0.2) -> float:
    """fp32 matmul peak per (CPU model, thread count, torch version): the best ever measured.

    Every call measures briefly and keeps the maximum of that and the cache: a measurement taken
    while other jobs were running is too low (MFU would read > 100%), and the maximum heals it.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cache = cache or base / "seekforge" / "peak_flops.json"
    key = _cpu_key()
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        table = {}
    measured = measure_cpu_peak_flops(seconds=seconds)
    peak = max(measured, float(table.get(key, 0.0)))
    if peak > float(table.get(key, 0.0)):
        table[key] = peak
        with contextlib.suppress(OSError):  # read-only home: no cache, no harm
            atomic_write_text(cache, json.dumps(table, indent=2))
        log.info("CPU fp32 matmul peak: %.1f GFLOP/s (%s)", peak / 1e9, key)
    return peak


def peak_flops(device: torch.device) -> float | None:
    if device.type == "cuda":
        return cuda_peak_flops(device)
    if device.type == "cpu":
        return cpu_peak_flops()
    return None


def _finite(v: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so that a diverged run still logs valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Rank-0 sink for metrics: jsonl always; TensorBoard and W&B when enabled."""

    def __init__(self, out_dir: Path, *, resume_step: int | None, tensorboard: bool, wandb_mode: bool | str,
                 wandb_project: str, config: dict[str, Any], run_name: str) -> None:
        self.path = out_dir / "metrics.jsonl"
        if resume_step is not None:
            self._truncate(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events past the checkpoint that a killed run had already written.
            purge = (resume_step + 1) if resume_step else None
            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge)
        self.wandb = self._init_wandb(wandb_mode, wandb_project, config, run_name, out_dir)

    @staticmethod
    def _init_wandb(mode: bool | str, project: str, config: dict[str, Any], name: str, out_dir: Path):
        if mode is False:
            return None
        try:
            import wandb
        except ImportError:
            if mode is True:
                raise ValueError("wandb: true, but the wandb package is not installed (pip install wandb, "
                                 "or set wandb: false)") from None
            return None
        if mode == "auto" and not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")):
            return None  # installed but not configured: do not prompt for a login in the middle of a run
        return wandb.init(project=project, name=name, config=config, dir=str(out_dir), resume="allow")

    def _truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:  # a line cut by a kill: drop it
                continue
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _finite(v) for k, v in record.items()}, ensure_ascii=False) + "\n")
        self._file.flush()
        step = record["step"]
        for k, v in record.items():
            scalar = isinstance(v, (int, float)) and not isinstance(v, bool)
            if self.tb is not None and k != "step" and scalar:
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def plot_loss_curve(metrics_path: Path, out_png: Path, title: str = "") -> Path | None:
    """Train loss (raw and smoothed) and val loss vs tokens, val bits/byte on a second panel."""
    records = read_metrics(metrics_path)
    train = [(r["tokens"], r["train_loss"]) for r in records if isinstance(r.get("train_loss"), float)]
    val = [(r["tokens"], r["val_loss"], r.get("val_bpb")) for r in records
           if isinstance(r.get("val_loss"), float)]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot import
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        x, y = zip(*train)
        ax1.plot(x, y, alpha=0.35, color="C0", label="train (logged steps)")
        # EMA over ~5% of the logged points: a fixed factor would lag far behind on sparse logs.
        alpha = 2 / (max(1, len(y) // 20) + 1)
        ema, smooth = y[0], []
        for v in y:
            ema = (1 - alpha) * ema + alpha * v
            smooth.append(ema)
        ax1.plot(x, smooth, color="C0", label="train (smoothed)")
    if val:
        ax1.plot([v[0] for v in val], [v[1] for v in val], "o-", color="C1", label="val")
        bpb = [(v[0], v[2]) for v in val if isinstance(v[2], float)]
        if bpb:
            ax2.plot(*zip(*bpb), "o-", color="C2")
    ax1.set_xlabel("tokens")
    ax1.set_ylabel("loss (nats/token)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("tokens")
    ax2.set_ylabel("val bits per byte")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
