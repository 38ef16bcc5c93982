"""The DeepSeek-V3 model: building (``load_model``), saving (``save_model``) and the module classes.

``load_model("tiny")`` gives a randomly initialised preset; ``load_model("runs/x/final")`` loads an
HF-format directory (ours or one written by transformers). Large presets (``LARGE_PRESETS``) stay
on the meta device unless a device is given: enough for ``model info`` without the memory.
"""

from __future__ import annotations

import importlib
from typing import Any

from seekforge.model.config import LARGE_PRESETS, PRESETS, ModelConfig, model_config_from, preset_config

# torch-heavy names are imported on first use, so `seekforge data ...` and `seekforge --help`
# do not pay for importing torch.
_LAZY = {
    "DeepseekV3ForCausalLM": "seekforge.model.model",
    "MLACache": "seekforge.model.cache",
    "ModelOutput": "seekforge.model.outputs",
    "build_model": "seekforge.model.loading",
    "load_model": "seekforge.model.loading",
    "save_model": "seekforge.model.loading",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'seekforge.model' has no attribute {name!r}")


__all__ = ["DeepseekV3ForCausalLM", "ModelOutput", "MLACache", "ModelConfig", "load_model", "save_model",
           "build_model", "preset_config", "model_config_from", "PRESETS", "LARGE_PRESETS"]
