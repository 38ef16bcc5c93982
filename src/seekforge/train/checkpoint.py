"""Checkpoints: ``OUT/step-000020/`` = an HF model directory + ``trainer_state/``.

Layout::

    OUT/step-000020/config.json, model.safetensors, tokenizer files   <- usable as-is by every
                                                                          seekforge command and HF
    OUT/step-000020/trainer_state/state.pt     optimizer, data position, RNG states of every rank,
                                               step, tokens seen, best val bpb, counters
    OUT/step-000020/trainer_state/config.yaml  the resolved training config
    OUT/step-000020/trainer_state/meta.json    step/tokens/val numbers for humans and scripts
    OUT/latest -> step-000020                   (symlink; a plain file holding the name on
    OUT/best   -> step-000010                    filesystems without symlinks)

Crash safety: a checkpoint is built under a temporary name and renamed into place only when
complete (:func:`seekforge.utils.atomic_dir`), and ``latest`` is switched after that, so a
SIGKILL at any moment leaves the previous checkpoint (and the pointer to it) intact. Old
checkpoints are deleted only after the new one exists.

``state.pt`` is written with ``torch.save`` and read with ``weights_only=False`` (it holds
NumPy/Python RNG states): only resume from checkpoints you created.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("seekforge.train")

STATE_DIR = "trainer_state"
STATE_FILE = "state.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``out_dir`` sorted by step (temporary/partial directories are ignored)."""
    found = []
    if not out_dir.is_dir():
        return found
    for p in out_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and (p / STATE_DIR / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_pointer(out_dir: Path, name: str = "latest") -> Path | None:
    """Where ``OUT/latest`` (or ``best``) points, if it exists and is a complete checkpoint."""
    link = out_dir / name
    target: Path | None = None
    if link.is_symlink():
        target = out_dir / os.readlink(link)
    elif link.is_file():
        target = out_dir / link.read_text(encoding="utf-8").strip()
    if target is not None and (target / STATE_DIR / STATE_FILE).is_file():
        return target
    return None


def find_latest(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: the ``latest`` pointer, or the highest step if it is stale."""
    ckpts = list_checkpoints(out_dir)
    pointed = read_pointer(out_dir)
    if ckpts and (pointed is None or ckpts[-1][1].resolve() != pointed.resolve()):
        return ckpts[-1][1]  # pointer missing or behind (killed between rename and pointer switch)
    return pointed


def set_pointer(out_dir: Path, name: str, target: Path) -> None:
    """Atomically point ``OUT/name`` at ``target`` (a sibling directory)."""
    link = out_dir / name
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(target.name, tmp)
    except (OSError, NotImplementedError):  # e.g. Windows without symlink rights
        tmp.write_text(target.name + "\n", encoding="utf-8")
    if link.is_dir() and not link.is_symlink():
        raise FileExistsError(f"{link} is a directory; cannot replace it by a pointer")
    os.replace(tmp, link)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_trainer_state(ckpt_dir: Path, state: dict[str, Any], config_yaml: str,
                        meta: dict[str, Any]) -> None:
    d = ckpt_dir / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    torch.save(state, d / STATE_FILE)
    (d / "config.yaml").write_text(config_yaml, encoding="utf-8")
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / STATE_DIR / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir} is not a training checkpoint: {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any unpickling failure means a corrupt file
        raise ValueError(f"{path}: cannot read the trainer state ({type(e).__name__}: {e})") from None


def make_readable(root: Path) -> None:
    """Give a checkpoint the usual umask permissions. Temporary files and directories are created
    private (0600/0700, ``tempfile``), which would leave checkpoints unreadable to a team's other
    users or to a serving process running under another account."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def prune(out_dir: Path, keep_last: int, protect: list[Path | None]) -> list[Path]:
    """Delete complete checkpoints except the last ``keep_last`` and the protected ones."""
    ckpts = list_checkpoints(out_dir)
    keep = {p.resolve() for _, p in ckpts[-keep_last:]} | {p.resolve() for p in protect if p is not None}
    removed = []
    for _, p in ckpts:
        if p.resolve() not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    # Leftovers of saves killed mid-write (atomic_dir temporaries) are garbage by construction.
    for p in out_dir.glob(".step-*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    return removed
