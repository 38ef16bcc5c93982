"""Export a trained seekforge model to other runtimes' formats.

- :mod:`seekforge.export.gguf`: one GGUF file for llama.cpp (``deepseek2`` architecture, tokenizer
  embedded, f32 / f16 / q8_0 / q4_0 weights): :func:`export_gguf`.
- :mod:`seekforge.export.cli`: ``seekforge export MODEL_DIR --format gguf [--outtype T] --out FILE``.

The Hugging Face format needs no exporter: every seekforge model directory already is one
(``seekforge.model.save_model``).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Imported on first use: the gguf package and torch are only needed when exporting.
    if name == "export_gguf":
        from seekforge.export.gguf import export_gguf

        return export_gguf
    raise AttributeError(f"module 'seekforge.export' has no attribute {name!r}")


__all__ = ["export_gguf"]
