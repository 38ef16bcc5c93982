"""seekforge: build your own DeepSeek-style language model end to end.

Public API (stable names):

- :func:`load_model` -- a model from a preset name or a model directory.
- :class:`ModelConfig` -- the model hyper-parameters (HF ``DeepseekV3Config`` field names).
"""

from __future__ import annotations

__version__ = "0.1.0"

from seekforge.model.config import ModelConfig


def load_model(path_or_preset, **overrides):
    """Build a model from a preset (random init) or load one from a seekforge/HF directory."""
    from seekforge.model import load_model as _load

    return _load(path_or_preset, **overrides)


__all__ = ["ModelConfig", "load_model", "__version__"]
