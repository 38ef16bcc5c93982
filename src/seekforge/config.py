"""The one config system of seekforge: dataclasses, YAML files and ``key=value`` overrides.

Every command (``model init``, ``train``, ``sft``, ``plan`` ...) describes its settings as a
(possibly nested) dataclass. Values come, in order of precedence, from

1. the dataclass defaults,
2. a YAML file (``seekforge train my.yaml``),
3. ``--set key=value`` overrides on the command line (``--set model.q_lora_rank=null``).

Override values are parsed as YAML scalars, so ``null``, ``true``, ``3e-4`` and ``[1, 2]`` mean
what they look like. Unknown keys are errors that name the closest valid keys: a typo must never
be silently ignored (a misspelled learning-rate key that does nothing is a classic lost day). A key
that another tool spells differently (``learning_rate``, ``cutoff_len``, ``lora_r`` ...) is still an
error, but one that names seekforge's key for it (:data:`KEY_ALIASES`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid. The message names the key and what was expected."""


def closest(name: str, valid: typing.Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to ``name`` (for "did you mean" messages)."""
    valid = list(valid)
    hits = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if not hits:  # fall back to substring matches, e.g. "rank" -> "q_lora_rank", "kv_lora_rank"
        hits = [v for v in valid if name.lower() in v.lower() or v.lower() in name.lower()][:n]
    return hits


class Alias(NamedTuple):
    """seekforge's key for another tool's name: a dotted path from the top of the config."""

    key: str | tuple[str, ...]  # several: the first that exists in the config being loaded is named
    note: str = ""  # how the meaning differs, when it does


# Names that Hugging Face TrainingArguments, LLaMA-Factory, TRL/PEFT, litgpt, nanoGPT and torchtitan
# use for settings seekforge has under another name. Spelling-based "did you mean" cannot find these
# (``learning_rate`` is closer to ``early_stopping_patience`` than to ``lr``), so they are listed.
# They only word the error: an alias is never accepted, so each setting has exactly one spelling in
# configs and logs. An alias whose key is not in the config being loaded falls back to "did you mean".
KEY_ALIASES: dict[str, Alias] = {
    # Hugging Face TrainingArguments (LLaMA-Factory and TRL inherit these names)
    "learning_rate": Alias("lr"),
    "per_device_train_batch_size": Alias("micro_batch_size"),
    "per_device_eval_batch_size": Alias("eval_batch_size"),
    "gradient_accumulation_steps": Alias(
        "batch_tokens", "accumulation is derived: batch_tokens / (micro_batch_size x seq_len x GPUs)"),
    "max_grad_norm": Alias("grad_clip"),
    "adam_epsilon": Alias("adam_eps"),
    "lr_scheduler_type": Alias("schedule"),
    "optim": Alias("optimizer"),
    "output_dir": Alias("out_dir"),
    "logging_steps": Alias("log_every"),
    "eval_steps": Alias("eval_every"),
    "save_steps": Alias("save_every"),
    "save_total_limit": Alias("keep_last"),
    "bf16": Alias("dtype", "dtype=bfloat16"),
    "fp16": Alias("dtype", "dtype=float16"),
    "gradient_checkpointing": Alias("activation_checkpointing"),
    "torch_compile": Alias("compile"),
    "resume_from_checkpoint": Alias("resume"),
    "model_name_or_path": Alias("model"),
    # LLaMA-Factory
    "cutoff_len": Alias("seq_len"),
    "finetuning_type": Alias("method"),
    "dataset": Alias(("data.train", "data")),
    "lora_rank": Alias("lora.rank"),
    "lora_alpha": Alias("lora.alpha"),
    "lora_dropout": Alias("lora.dropout"),
    "lora_target": Alias("lora.target_modules"),
    "use_rslora": Alias("lora.use_rslora"),
    "freeze_trainable_layers": Alias("freeze.trainable_layers"),
    "freeze_trainable_modules": Alias("freeze.modules"),
    "freeze_extra_modules": Alias("freeze.extra_modules"),
    "train_on_prompt": Alias("train_on", "train_on=all"),
    "mask_history": Alias("train_on", "train_on=last"),
    # TRL / PEFT
    "max_seq_length": Alias("seq_len"),
    "max_length": Alias("seq_len"),
    "r": Alias("lora.rank"),
    "target_modules": Alias("lora.target_modules"),
    "num_virtual_tokens": Alias("prefix.num_virtual_tokens"),
    # litgpt
    "lora_r": Alias("lora.rank"),
    "global_batch_size": Alias("batch_tokens", "counted in tokens, not rows"),
    "lr_warmup_steps": Alias("warmup_steps"),
    # nanoGPT
    "block_size": Alias("seq_len"),
    "batch_size": Alias("micro_batch_size"),
    "max_iters": Alias("max_steps"),
    "warmup_iters": Alias("warmup_steps"),
    "min_lr": Alias("min_lr_ratio", "a fraction of lr, not an absolute LR"),
    "beta1": Alias("adam_beta1"),
    "beta2": Alias("adam_beta2"),
    "eval_interval": Alias("eval_every"),
    "log_interval": Alias("log_every"),
    "wandb_log": Alias("wandb"),
    "n_layer": Alias("num_hidden_layers"),
    "n_head": Alias("num_attention_heads"),
    "n_embd": Alias("hidden_size"),
    # torchtitan
    "steps": Alias("max_steps"),
    "max_norm": Alias("grad_clip"),
    "local_batch_size": Alias("micro_batch_size"),
    "mixed_precision_param": Alias("dtype"),
}


def has_key(cls: type, path: str) -> bool:
    """Whether the dotted ``path`` names a field of dataclass ``cls`` (through nested dataclasses)."""
    *parents, name = path.split(".")
    for part in parents:
        tp = field_types(cls).get(part)
        if not _is_dataclass_type(tp):
            return False
        cls = tp
    return name in field_types(cls)


def alias_of(key: str, cls: type) -> tuple[str, str] | None:
    """(seekforge key, note) when the unknown dotted ``key`` in ``cls`` is another tool's name for it.

    ``key`` is the full path from the top of the config and ``cls`` the dataclass at its parent, so
    ``lora.lora_alpha`` in LoraSettings and ``lora_alpha`` in SFTConfig both resolve to ``lora.alpha``.
    """
    prefix, _, name = key.rpartition(".")
    alias = KEY_ALIASES.get(name)
    if alias is None:
        return None
    prefix = prefix + "." if prefix else ""
    for target in (alias.key,) if isinstance(alias.key, str) else alias.key:
        if target.startswith(prefix) and has_key(cls, target[len(prefix):]):
            return target, alias.note
    return None


def unknown_key_error(
    key: str, valid: typing.Iterable[str], where: str = "", cls: type | None = None
) -> ConfigError:
    """The error for an unknown ``key``: seekforge's name for it if it is an alias, else the closest keys."""
    valid = sorted(valid)
    place = f" in {where}" if where else ""
    alias = alias_of(key, cls) if cls is not None else None
    if alias is not None:
        target, note = alias
        hint = f": seekforge calls it {target!r}" + (f" ({note})" if note else "") + "."
    else:
        near = closest(key.split(".")[-1], valid)
        hint = "." + (f" Did you mean {', '.join(repr(h) for h in near)}?" if near else "")
    return ConfigError(f"unknown config key {key!r}{place}{hint} Valid keys: {', '.join(valid)}")


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (``null`` -> None, ``1e-3`` -> float ...)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string (no dot); accept it as a float like a user expects.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            return value
    return value


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; raise ConfigError naming ``key``."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not fit {_type_name(tp)}")
    if origin is typing.Literal:
        choices = get_args(tp)
        if value not in choices:
            near = closest(str(value), [str(c) for c in choices])
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{hint}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, validating every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    types_ = field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise unknown_key_error(prefix + key, types_, where=cls.__name__, cls=cls)
        kwargs[key] = _coerce(value, types_[key], prefix + key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (YAML/JSON serialisable)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=null"]`` -> nested ``{"a": {"b": 1}, "c": None}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=3e-4)")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = parse_value(raw.strip())
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into a copy of ``base``; nested dicts merge, everything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_json(path: str | Path) -> Any:
    """A JSON file's content; invalid JSON is a ConfigError naming ``file:line``."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults <- ``base`` dict <- YAML file <- ``key=value`` overrides, validated into ``cls``."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    data = deep_merge(data, parse_overrides(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        # Say where the bad key came from: a --set override, else the YAML file.
        leaves = {o.split("=", 1)[0].strip().rsplit(".", 1)[-1] for o in overrides}
        if any(f"'{leaf}'" in str(e) for leaf in leaves):
            raise ConfigError(f"--set: {e}") from None
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def save_yaml(obj: Any, path: str | Path) -> None:
    from seekforge.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True))
