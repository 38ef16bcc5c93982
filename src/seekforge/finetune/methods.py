"""Base models and fine-tuning methods: full, freeze, LoRA, QLoRA, prefix.

A *base* is either a seekforge model directory (DeepSeek-V4/V3.2/V3/V2 ``config.json``: loaded by
:func:`seekforge.model.load_model`, so MLA/MoE/MTP and, for V3/V2, packing with ``segment_ids`` work)
or any other local Hugging Face causal-LM directory (Llama, Qwen2, ...: loaded by ``transformers``).
:class:`HFCausalLM` gives the latter the seekforge calling convention
``model(input_ids, labels, position_ids=, segment_ids=) -> ModelOutput`` so the one trainer loop
and the objectives never need to know which it is.

Methods (``method`` in the config):

* ``full``    every weight trains.
* ``freeze``  only the last N layers (``freeze.trainable_layers``; negative = first N), optionally
              only some of their modules (``freeze.modules``) plus ``freeze.extra_modules``.
* ``lora``    PEFT LoRA. seekforge's module names equal HF DeepSeek-V3's / V4's, so the adapter is a plain
              PEFT adapter for the HF model too (saved form: :mod:`.adapters`). ``all-linear`` = MLA
              projections + dense MLPs + shared experts of the main layers (not the MTP modules, not
              lm_head); routed experts are opt-in (``experts``), trained as PEFT
              ``target_parameters`` on the stacked weights (rank r per expert, no dropout).
              DeepSeek-V4 (:data:`V4_ATTN_PATHS`): ``attn`` = the attention and KV-compressor
              projections except the grouped ``o_a_proj`` (read as g weight blocks, not called as a
              linear, so a LoRA wrapper would be ignored) and the lightning indexer (frozen: its
              top-k choice gets no gradient); ``mlp`` = the shared experts.
* ``qlora``   LoRA over a 4-bit NF4 base (bitsandbytes, CUDA only).
* ``prefix``  seekforge V3/V2: learned MLA latent prefixes (:mod:`.prefix`); HF models: PEFT prefix
              tuning; DeepSeek-V4: refused (no MLA latent to prefix).

For adapter methods the MoE router bias is frozen (``bias_update_speed = 0``): the bias is a base
buffer, so updating it would make base + adapter differ from the model that was trained.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seekforge.config import ConfigError, closest
from seekforge.model.model import ModelOutput

log = logging.getLogger("seekforge.finetune")

METHODS = ("full", "freeze", "lora", "qlora", "prefix")
ADAPTER_METHODS = ("lora", "qlora", "prefix")

# seekforge / HF DeepSeek-V3/V2 linear layers by group (leaf module names).
ATTN_NAMES = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")  # dense MLPs and shared experts
EXPERT_PARAMS = ("gate_up_proj", "down_proj")  # stacked routed experts (nn.Parameter, not Linear)
TARGET_ALIASES = ("all-linear", "attn", "mlp", "experts")
# DeepSeek-V4 linear layers by group, as paths inside a decoder layer (leaf names repeat across
# groups there: ``gate_proj`` is both a KV-compressor gate and a shared-expert projection).
V4_ATTN_PATHS = ("self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_proj", "self_attn.o_b_proj",
                 "self_attn.compressor.kv_proj", "self_attn.compressor.gate_proj")
V4_MLP_PATHS = tuple(f"mlp.shared_experts.{n}" for n in MLP_NAMES)


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # leaf module names, or aliases: all-linear | attn | mlp | experts (routed experts, seekforge)
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False


@dataclass
class FreezeSettings:
    trainable_layers: int = 2  # last N decoder layers train; negative: the first N
    modules: list[str] = field(
        default_factory=lambda: ["all"]
    )  # within those layers: all | self_attn | mlp ...
    extra_modules: list[str] = field(default_factory=list)  # also train e.g. embed_tokens, lm_head, norm


@dataclass
class PrefixSettings:
    num_virtual_tokens: int = 16


# ---------------------------------------------------------------------------------------------
# Base models


SEEKFORGE_MODEL_TYPES = ("deepseek_v4", "deepseek_v32", "deepseek_v3", "deepseek_v2")


def base_kind(path: str | Path) -> str:
    """``seekforge`` for DeepSeek-V4/V3.2/V3/V2 dirs and presets, ``hf`` for any other HF causal LM."""
    from seekforge.model.config import PRESETS
    from seekforge.model.v4_config import V4_PRESETS

    p = Path(path)
    if (str(path) in PRESETS or str(path) in V4_PRESETS) and not p.is_dir():
        return "seekforge"
    cfg = p / "config.json"
    if not cfg.exists():
        raise FileNotFoundError(
            f"base model {path}: no config.json (expected a model directory or a preset: "
            f"{', '.join([*PRESETS, *V4_PRESETS])})"
        )
    model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    return "seekforge" if model_type in SEEKFORGE_MODEL_TYPES else "hf"


def is_v4(model: nn.Module) -> bool:
    """Is this (unwrapped) model seekforge's or transformers' DeepSeek-V4?"""
    return getattr(getattr(model, "config", None), "model_type", "") == "deepseek_v4"


class HFCausalLM(nn.Module):
    """A transformers causal LM behind seekforge's forward signature.

    Packing: ``segment_ids`` become restarting ``position_ids``, which transformers >= 4.53 turns
    into a block-diagonal mask when no attention mask is passed. Not every architecture builds its
    mask that way, so :func:`honours_packing` checks it numerically before packing is enabled.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        kwargs: dict[str, Any] = {}
        if segment_ids is not None:
            if position_ids is None:
                from seekforge.model.model import segment_positions

                position_ids = segment_positions(segment_ids)
            kwargs["position_ids"] = position_ids
        # use_cache=False: training needs no KV cache, and with one transformers skips packed masks.
        out = self.inner(input_ids=input_ids, labels=labels, use_cache=False, **kwargs)
        loss = out.loss
        return ModelOutput(
            logits=out.logits, loss=loss, losses={"main": loss.detach()} if loss is not None else {}
        )


@torch.no_grad()
def honours_packing(model: nn.Module) -> bool:
    """Does this model keep packed examples apart when given restarting position ids?"""
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(3, vocab, (1, 6), generator=g), torch.randint(3, vocab, (1, 5), generator=g)
    dev = next(model.parameters()).device
    a, b = a.to(dev), b.to(dev)
    seg = torch.tensor([[0] * 6 + [1] * 5], device=dev)
    was_training = model.training
    model.eval()
    try:
        packed = model(torch.cat([a, b], dim=1), segment_ids=seg).logits[:, 6:]
        alone = model(b).logits
    finally:
        model.train(was_training)
    return torch.allclose(packed.float(), alone.float(), atol=1e-3, rtol=1e-3)


def load_base(
    path: str | Path, *, device: torch.device, dtype: torch.dtype, quantize_4bit: bool = False
) -> tuple[nn.Module, str]:
    """(model in seekforge calling convention, kind)."""
    kind = base_kind(path)
    if quantize_4bit:
        require_qlora(device)
    if kind == "seekforge":
        from seekforge.model import load_model

        model = load_model(str(path), device=device, dtype=dtype)
        if quantize_4bit:
            quantize_linears_4bit(model, dtype)
        return model, kind
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    try:
        inner = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: transformers could not load it as a causal LM: {e}") from e
    if not quantize_4bit:
        inner.to(device)
    return HFCausalLM(inner), kind


def require_qlora(device: torch.device) -> None:
    """QLoRA needs bitsandbytes' 4-bit kernels on CUDA; say so before loading anything."""
    if device.type != "cuda":
        raise ConfigError(
            "method=qlora needs a CUDA GPU: the 4-bit NF4 base weights use bitsandbytes' CUDA "
            "kernels. On this machine use method=lora (same adapter format, full-precision base)."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("method=qlora needs bitsandbytes: pip install bitsandbytes") from None


def quantize_linears_4bit(model: nn.Module, compute_dtype: torch.dtype) -> None:
    """Replace the decoder layers' nn.Linear weights by bitsandbytes 4-bit NF4 ones (seekforge models).

    Embeddings, lm_head, norms, the router and the stacked routed experts stay in ``compute_dtype``,
    and so does DeepSeek-V4's ``o_a_proj``, whose weight is read as blocks instead of called.
    """
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for name, mod in list(layer.named_modules()):
            if type(mod) is not nn.Linear or name.endswith("o_a_proj"):
                continue
            q = bnb.nn.Linear4bit(
                mod.in_features,
                mod.out_features,
                bias=mod.bias is not None,
                compute_dtype=compute_dtype,
                quant_type="nf4",
                device=mod.weight.device,
            )
            q.weight = bnb.nn.Params4bit(mod.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
            q.to(mod.weight.device)
            parent_name, _, leaf = name.rpartition(".")
            setattr(layer.get_submodule(parent_name) if parent_name else layer, leaf, q)


# ---------------------------------------------------------------------------------------------
# Methods


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers / seekforge module (through HFCausalLM and PEFT wrappers)."""
    while True:
        if isinstance(model, HFCausalLM):
            model = model.inner
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or a `seekforge quantize` int8/int4 linear (LoRA over it is QLoRA on any device)."""
    from seekforge.compress.qlinear import QuantLinear

    return isinstance(module, (nn.Linear, QuantLinear))


def _linear_leaf_names(model: nn.Module) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m) and n}


def resolve_lora_targets(model: nn.Module, kind: str, targets: str | list[str]) -> dict[str, Any]:
    """LoRA settings -> PEFT ``target_modules`` / ``target_parameters``.

    seekforge bases get explicit full names of the main layers' modules (``model.layers.0.self_attn
    .q_a_proj`` ...), so the MTP modules (absent from transformers' model) are left out without an
    ``exclude_modules`` pattern, and the routed experts' stacked parameters when ``experts`` is asked
    for. :func:`seekforge.finetune.adapters.portable_lora_config` turns this into the saved form.
    """
    names = [targets] if isinstance(targets, str) else list(targets)
    if kind == "hf":
        # Linear subclasses with their own forward (DeepSeek-V4's grouped output projection reads
        # its weight as g separate blocks) cannot take PEFT's LoRA wrapper, which assumes x @ W^T.
        custom = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) and type(m).forward is not nn.Linear.forward}
        if names == ["all-linear"]:
            if not custom:
                return {"target_modules": "all-linear"}
            names = sorted(_linear_leaf_names(model) - {"lm_head"} - custom)
        valid = _linear_leaf_names(model) - {"lm_head"} - custom
        for n in names:
            if n not in valid:
                near = closest(n, valid)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(
                    f"lora.target_modules: {n!r} is not a linear layer of this model{hint}; "
                    f"valid: all-linear, {', '.join(sorted(valid))}"
                )
        return {"target_modules": names}
    if is_v4(model):
        return _resolve_v4_targets(model, names)
    cfg = model.config
    present = _linear_leaf_names(model)
    chosen: set[str] = set()
    experts = False
    for n in names:
        if n == "all-linear":
            chosen.update(ATTN_NAMES + MLP_NAMES)
        elif n == "attn":
            chosen.update(ATTN_NAMES)
        elif n == "mlp":
            chosen.update(MLP_NAMES)
        elif n == "experts":
            experts = True
        elif n in present and n not in ("lm_head", "eh_proj"):
            chosen.add(n)
        else:
            valid = sorted((present - {"lm_head", "eh_proj"}) | set(TARGET_ALIASES))
            near = closest(n, valid)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"lora.target_modules: unknown name {n!r}{hint}; valid: {', '.join(valid)}")
    L = cfg.num_hidden_layers
    # MTP modules (layers L..L+D-1) are training aids, absent from HF's model: never adapted.
    modules = sorted(
        name
        for name, mod in model.named_modules()
        if _is_linear(mod)
        and name.rsplit(".", 1)[-1] in chosen
        and name.startswith("model.layers.")
        and int(name.split(".")[2]) < L
    )
    return _with_experts(model, modules, experts)


def _resolve_v4_targets(model: nn.Module, names: list[str]) -> dict[str, Any]:
    """DeepSeek-V4: aliases pick the groups of :data:`V4_ATTN_PATHS` / :data:`V4_MLP_PATHS`; a leaf
    name picks every adaptable linear of that name. ``o_a_proj`` and the indexer are refused (module doc)."""
    layers = range(model.config.num_hidden_layers)
    present = {n for n, m in model.named_modules() if _is_linear(m)}
    by_group = {
        "attn": {f"model.layers.{i}.{p}" for i in layers for p in V4_ATTN_PATHS} & present,
        "mlp": {f"model.layers.{i}.{p}" for i in layers for p in V4_MLP_PATHS} & present,
    }
    adaptable = by_group["attn"] | by_group["mlp"]
    leaves = {n.rsplit(".", 1)[-1] for n in adaptable}
    chosen: set[str] = set()
    experts = False
    for n in names:
        if n == "all-linear":
            chosen |= adaptable
        elif n in by_group:
            chosen |= by_group[n]
        elif n == "experts":
            experts = True
        elif n in leaves:
            chosen |= {m for m in adaptable if m.rsplit(".", 1)[-1] == n}
        elif n == "o_a_proj":
            raise ConfigError(
                "lora.target_modules: 'o_a_proj' cannot take LoRA on DeepSeek-V4: the grouped output "
                "projection reads its weight as o_groups separate blocks instead of calling it as a "
                "linear layer (in seekforge and in transformers), so an adapter there would be ignored"
            )
        elif n in ("weights_proj",) or n in {m.rsplit(".", 1)[-1] for m in present if ".indexer." in m}:
            raise ConfigError(
                f"lora.target_modules: {n!r} of DeepSeek-V4's lightning indexer cannot take LoRA: the "
                "indexer's top-k choice gives it no gradient, so the adapter would never train"
            )
        else:
            valid = sorted(leaves | set(TARGET_ALIASES))
            near = closest(n, valid)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"lora.target_modules: unknown name {n!r}{hint}; valid: {', '.join(valid)}")
    return _with_experts(model, sorted(chosen), experts)


def _with_experts(model: nn.Module, modules: list[str], experts: bool) -> dict[str, Any]:
    """``target_modules`` plus, when asked, the stacked routed experts of every main layer that has them."""
    out: dict[str, Any] = {"target_modules": modules}  # [] (not None: PEFT would pick defaults)
    if experts:
        from seekforge.compress.qlinear import QuantRoutedExperts

        if any(isinstance(m, QuantRoutedExperts) for m in model.modules()):
            raise ConfigError(
                "lora.target_modules: 'experts' cannot adapt quantized routed experts (a `seekforge "
                "quantize` base); use attn / mlp / all-linear"
            )
        L = model.config.num_hidden_layers
        moe_layers = [i for i in range(L) if hasattr(model.model.layers[i].mlp, "experts")]
        if not moe_layers:
            raise ConfigError(
                "lora.target_modules: 'experts' given but no main layer of this model has routed experts"
            )
        out["target_parameters"] = [
            f"model.layers.{i}.mlp.experts.{p}" for i in moe_layers for p in EXPERT_PARAMS
        ]
    if not modules and not experts:
        raise ConfigError("lora.target_modules selects nothing")
    return out


def apply_lora(model: nn.Module, kind: str, s: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = resolve_lora_targets(unwrap(model), kind, s.target_modules)
    if targets.get("target_parameters") and s.dropout:
        raise ConfigError(
            "lora.dropout must be 0 when lora.target_modules includes 'experts': PEFT adapts the "
            f"stacked routed-expert weights directly, where dropout has no place (got {s.dropout})"
        )
    config = LoraConfig(
        r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, use_rslora=s.use_rslora, **targets
    )
    if kind == "seekforge":
        from seekforge.compress.qlora import register_quant_lora

        register_quant_lora(config, unwrap(model))
    if kind == "hf":
        model.inner = get_peft_model(model.inner, config)
        return model
    return get_peft_model(model, config)


def apply_freeze(model: nn.Module, kind: str, s: FreezeSettings) -> None:
    base = unwrap(model)
    layers = base.model.layers
    n_main = base.config.num_hidden_layers
    main = list(layers[:n_main])
    n = s.trainable_layers
    if n == 0 or abs(n) > n_main:
        raise ConfigError(f"freeze.trainable_layers must be in 1..{n_main} or -{n_main}..-1 (got {n})")
    chosen = main[-n:] if n > 0 else main[:-n]
    for p in base.parameters():
        p.requires_grad_(False)
    for layer in chosen:
        subs = dict(layer.named_children())
        wanted = list(subs) if s.modules == ["all"] else s.modules
        for name in wanted:
            if name not in subs:
                raise ConfigError(
                    f"freeze.modules: {name!r} is not a part of a decoder layer; valid: all, "
                    f"{', '.join(subs)}"
                )
            for p in subs[name].parameters():
                p.requires_grad_(True)
    for name in s.extra_modules:
        try:
            mod = base.get_submodule(name) if "." in name or name == "lm_head" else _top_module(base, name)
        except AttributeError:
            raise ConfigError(
                f"freeze.extra_modules: no module {name!r}; e.g. embed_tokens, norm, lm_head"
            ) from None
        for p in mod.parameters():
            p.requires_grad_(True)


def _top_module(base: nn.Module, name: str) -> nn.Module:
    inner = getattr(base, "model", None)
    if inner is not None and hasattr(inner, name):
        return getattr(inner, name)
    return base.get_submodule(name)


def apply_prefix(
    model: nn.Module, kind: str, s: PrefixSettings, sample_ids: torch.Tensor | None
) -> nn.Module:
    if kind == "seekforge" and is_v4(unwrap(model)):
        raise ConfigError(
            "method=prefix: seekforge's prefix tuning learns MLA latent prefixes, and DeepSeek-V4 has no "
            "MLA latent (one shared key/value head over sliding-window and compressed caches); use "
            "method=lora"
        )
    if kind == "seekforge":
        from seekforge.finetune.prefix import attach_prefix

        for p in model.parameters():
            p.requires_grad_(False)
        attach_prefix(model, s.num_virtual_tokens, sample_ids)
        return model
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=s.num_virtual_tokens)
    model.inner = get_peft_model(model.inner, config)
    return model


def prepare(
    model: nn.Module,
    kind: str,
    method: str,
    *,
    lora: LoraSettings,
    freeze: FreezeSettings,
    prefix: PrefixSettings,
    sample_ids: torch.Tensor | None = None,
) -> nn.Module:
    """Apply ``method``; afterwards exactly the parameters to train have ``requires_grad``."""
    if method not in METHODS:
        near = closest(method, METHODS)
        raise ConfigError(
            f"method: {method!r} is not one of {', '.join(METHODS)}"
            + (f" (did you mean {near[0]!r}?)" if near else "")
        )
    if kind == "seekforge" and method != "full":
        base = unwrap(model)
        base.config.bias_update_speed = 0.0
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "freeze":
        apply_freeze(model, kind, freeze)
    elif method in ("lora", "qlora"):
        model = apply_lora(model, kind, lora)
    else:
        model = apply_prefix(model, kind, prefix, sample_ids)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    if n_train == 0:
        raise ConfigError(f"method={method}: no parameter is trainable")
    log.info(
        "method %s: %s of %s parameters train (%.3f%%)",
        method,
        f"{n_train:,}",
        f"{n_all:,}",
        100 * n_train / n_all,
    )
    return model
