"""Building, loading and saving models (the implementation behind ``seekforge.model.load_model``).

Every model built here runs the fast kernels of :mod:`seekforge.model.kernels` unless asked not to
(``kernels=False`` keeps the plain reference code of :mod:`seekforge.model.model`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from seekforge.model.config import LARGE_PRESETS, PRESETS, ModelConfig, model_config_from
from seekforge.model.kernels import use_kernels
from seekforge.model.model import DeepseekV3ForCausalLM


@contextmanager
def _no_meta_normal_init() -> Iterator[None]:
    """Skip ``nn.init.normal_`` while building on the meta device (the weights are initialised or
    loaded after ``to_empty``). On meta tensors that op runs through torch's Python reference, whose
    first call imports ``torch._dynamo``: about 2 s of every command that loads a model."""
    normal = torch.nn.init.normal_
    torch.nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        torch.nn.init.normal_ = normal


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                init: bool = True, kernels: bool = True) -> DeepseekV3ForCausalLM:
    """Construct on the meta device (no wasted init), then materialise on ``device`` and initialise.

    ``device="meta"`` returns the shapes only (for parameter counts of 671B models). ``kernels``:
    grouped-matmul experts and the fused loss (:func:`seekforge.model.kernels.use_kernels`); False
    keeps the reference implementations (same parameters, same results up to rounding).
    """
    if getattr(cfg, "model_type", "") == "deepseek_v4":  # its own module, no fused kernels yet
        from seekforge.model.v4 import build_v4

        return build_v4(cfg, device, dtype, init=init)
    with torch.device("meta"), _no_meta_normal_init():
        model = DeepseekV3ForCausalLM(cfg)
    if kernels:
        use_kernels(model)
    return materialise(model, device, dtype, init)


def materialise(model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None,
                init: bool) -> Any:
    """A model built on the meta device -> real tensors on ``device`` (``"meta"``: left as shapes),
    initialised, or (``init=False``, weights to be loaded) with only the rope table rebuilt."""
    device = torch.device(device)
    if dtype is not None:
        model.to(dtype)
    if device.type != "meta":
        model.to_empty(device=device)
        if init:
            model.init_weights()
        else:  # weights will be loaded; only the non-persistent rope table must be rebuilt
            model.model.rotary_emb.reset_parameters()
    return model


def load_model(preset_or_dir: str | Path | ModelConfig, *, device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None, kernels: bool = True,
               **config_overrides: Any) -> DeepseekV3ForCausalLM:
    """A preset name (random init), a model directory (config.json + safetensors) or a ModelConfig.

    ``dtype`` defaults to float32 on CPU and bfloat16 on CUDA; ``kernels`` as in :func:`build_model`;
    ``config_overrides`` are ModelConfig fields (``load_model("tiny", q_lora_rank=None)``).
    """
    from seekforge.utils import parse_dtype, resolve_device

    spec = preset_or_dir
    v4 = _load_v4_if_v4(spec, device, dtype, config_overrides)
    if v4 is not None:
        return v4
    cfg = model_config_from(spec, config_overrides or None)
    is_dir = not isinstance(spec, ModelConfig) and str(spec) not in PRESETS and Path(spec).is_dir()
    if device is None and not is_dir and str(spec) in LARGE_PRESETS:
        return build_model(cfg, "meta", kernels=kernels)
    dev = resolve_device(None if device is None else str(device))
    dt = parse_dtype(dtype, dev)
    if not is_dir:
        return build_model(cfg, dev, dt, kernels=kernels)
    from seekforge.compress.quantize import load_quantized, read_quantization_config
    from seekforge.model.hf import load_checkpoint

    if read_quantization_config(spec):  # a `seekforge quantize` output: quantized modules swapped in
        return load_quantized(spec, cfg, dev, dt)
    cfg, state = load_checkpoint(spec, cfg)
    model = build_model(cfg, dev, dt, init=False, kernels=kernels)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if cfg.scoring_func != "sigmoid":  # V2 (softmax) checkpoints carry no router bias: it stays 0
        missing = [k for k in missing if not k.endswith("e_score_correction_bias")]
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.zero_()
    if any(".indexer." in k for k in missing):
        raise ValueError(f"{spec}: no DeepSeek Sparse Attention indexer weights (e.g. {missing[0]}) but "
                         "the config sets index_topk: this is a DeepSeek-V3 checkpoint; convert it into "
                         "V3.2 with `seekforge train` (model.init_from, see docs/model.md)")
    if missing or unexpected:
        raise ValueError(f"{spec}: weights do not match config.json: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    return model


def _load_v4_if_v4(spec: Any, device: torch.device | str | None, dtype: torch.dtype | str | None,
                   overrides: dict[str, Any]) -> Any:
    """A DeepSeek-V4 preset or directory (:mod:`seekforge.model.v4`), else None."""
    from seekforge.model.v4_config import V4_LARGE_PRESETS, V4_PRESETS, V4Config, v4_preset

    is_preset = isinstance(spec, str) and spec in V4_PRESETS
    if not (is_preset or isinstance(spec, V4Config)):
        from seekforge.model.hf_v4 import is_v4_dir

        if isinstance(spec, ModelConfig) or not is_v4_dir(spec):
            return None
    from seekforge.model.v4 import build_v4
    from seekforge.utils import parse_dtype, resolve_device

    if is_preset and device is None and spec in V4_LARGE_PRESETS:
        return build_v4(v4_preset(spec, **overrides), "meta")
    dev = resolve_device(None if device is None else str(device))
    dt = parse_dtype(dtype, dev)
    if is_preset or isinstance(spec, V4Config):
        cfg = v4_preset(spec, **overrides) if is_preset else spec
        return build_v4(cfg, dev, dt)
    if overrides:
        raise ValueError(f"{spec}: config overrides are not supported when loading a DeepSeek-V4 directory")
    from seekforge.model.hf_v4 import load_v4

    return load_v4(spec, dev, dt)


def save_model(model: DeepseekV3ForCausalLM, out_dir: str | Path, tokenizer: Any = None,
               **kwargs: Any) -> Path:
    """Write an HF model directory (see :func:`seekforge.model.hf.save_model`; DeepSeek-V4 models
    through :func:`seekforge.model.hf_v4.save_v4`)."""
    if getattr(model.config, "model_type", "") == "deepseek_v4":
        from seekforge.model.hf_v4 import save_v4

        return save_v4(model, out_dir, tokenizer=tokenizer, dtype=kwargs.get("dtype"))
    from seekforge.model.hf import save_model as _save

    return _save(model, out_dir, tokenizer=tokenizer, **kwargs)
