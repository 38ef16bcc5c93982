"""Settings of ``seekforge train`` (YAML keys and ``--set`` names), validated on load.

Loaded with the project's one config system (:mod:`seekforge.config`). The only special rule is
for ``model``, which is either a string (a preset name or a model directory to continue from) or
a block of :class:`~seekforge.model.config.ModelConfig` fields with an optional ``preset`` key.
A YAML ``model: tiny`` plus ``--set model.hidden_size=128`` therefore means "the tiny preset with
hidden_size 128" instead of dropping the preset (a plain deep merge would replace the string).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seekforge.config import ConfigError, deep_merge, load_config, parse_overrides, read_yaml

DEFAULT_PROMPTS = ["The meaning of life is", "Once upon a time", "人工智能是"]

# ``--set`` overrides for a run that only trains: no periodic eval or checkpoints (the final ones
# still happen), no sample generation, plots, TensorBoard, W&B or progress bar, and no resuming of an
# earlier run in the same out_dir. For short programmatic runs (``plan --measure``, tests), where
# those side outputs would cost more than the steps themselves or disturb what is measured.
QUIET_RUN = ("eval_every=0", "save_every=0", "sample_tokens=0", "plot=false", "tensorboard=false",
             "wandb=false", "progress=false", "resume=never")


@dataclass
class MixtureSchedule:
    """``data.schedule``: how the mixture weights of ``data.train`` change (see seekforge.train.mixture)."""

    # fixed: the data.train weights throughout; piecewise: `points` by training progress; loss:
    # online DoReMi-style, re-weighted at every eval towards the sources whose val bpb improved least.
    kind: Literal["fixed", "piecewise", "loss"] = "fixed"
    # piecewise: [{at: 0, weights: uniform}, {at: 0.3, weights: target}]; `at` is the fraction of
    # max_steps, `weights` a mapping name -> weight (missing names: 0), 'uniform' or 'target'.
    points: list[dict[str, Any]] = field(default_factory=list)
    interpolate: bool = False  # piecewise: linear between points instead of steps
    # loss: exponentiated-gradient step size per evaluation; the signal (fraction of the start
    # loss left) differs by ~0.01-0.1 between sources, so steps of ~10 move the weights visibly.
    step_size: float = 10.0
    floor: float = 0.1  # loss: every source keeps at least floor / k of the rows (k sources)


@dataclass
class DataConfig:
    # A token-shard folder (`seekforge data tokenize`), or raw text: .txt/.md/.jsonl/.json/.parquet
    # files, folders or globs, tokenized once with `tokenizer` into OUT_DIR/data (cached). Or a
    # mixture: {name: {path: SHARD_DIR, weight: W, val: SHARD_DIR (optional)}, ...}.
    train: str | list[str] | dict[str, Any] | None = None
    # Validation: a shard folder (its `val` split, else `train`) or raw files. Unset: the `val`
    # split of the train shards, or `val_fraction` of the raw text (whole documents by hash; the
    # last fraction of the tokens when the corpus is a single document, nanoGPT's 90/10 cut).
    val: str | list[str] | None = None
    val_fraction: float = 0.1
    text_fields: list[str] = field(default_factory=lambda: ["text"])  # jsonl/parquet columns
    txt_mode: Literal["file", "paragraphs"] = "file"  # a .txt file is one document, or one per paragraph
    shuffle: bool = True
    schedule: MixtureSchedule = field(default_factory=MixtureSchedule)


@dataclass
class TrainConfig:
    # --- what --------------------------------------------------------------------------------
    model: str | dict[str, Any] = "tiny"
    tokenizer: str | None = None  # defaults to the tokenizer copied next to the token shards
    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "runs/train"
    # --- batch -------------------------------------------------------------------------------
    seq_len: int = 256
    batch_tokens: int = 16384  # tokens per optimizer step over all ranks; accumulation is derived
    micro_batch_size: int = 8  # rows per forward pass per rank
    max_steps: int = 1000
    # --- optimizer ---------------------------------------------------------------------------
    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = 1e-3  # AdamW peak LR (with muon: for embeddings, head, router, norms)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping (the norm is still logged)
    # --- schedule ----------------------------------------------------------------------------
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # final LR / peak LR (cosine, wsd)
    decay_fraction: float = 0.2  # wsd: share of max_steps spent decaying
    # --- DeepSeek-V3 losses (null = keep the model's config value) ---------------------------
    mtp_loss_weight: float | None = None
    aux_loss_alpha: float | None = None
    bias_update_speed: float | None = None
    # --- lightning-indexer stages (V3.2 models with index_topk, V4 CSA layers; docs/model.md) --
    # dense_warmup: only the indexers train, towards the dense attention distribution (KL);
    # sparse: top-k attention, the indexers trained by KL on the selected tokens; null: no indexer loss
    dsa_stage: Literal["dense_warmup", "sparse"] | None = None
    # --- evaluation, checkpoints, logging ----------------------------------------------------
    eval_every: int = 200  # 0 = only at the end
    eval_tokens: int | None = None  # cap on validation tokens per eval (whole documents); null = all
    eval_batch_size: int | None = None  # rows per eval forward; null = micro_batch_size
    save_every: int = 500  # 0 = only at the end (and on SIGINT/SIGTERM)
    keep_last: int = 2  # checkpoints kept besides the best one (by val bpb)
    log_every: int = 10
    early_stopping_patience: int = 0  # stop after this many evals without a better val bpb; 0 = off
    max_bad_steps: int = 5  # consecutive non-finite steps before giving up
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    sample_tokens: int = 40  # greedy tokens per prompt at each eval; 0 = no samples
    # benchmark subset scored at each eval like `seekforge eval` (e.g. "ceval,mmlu:anatomy"); "" = off
    eval_tasks: str = ""
    eval_limit: int | None = 20  # first N questions of each subject
    eval_shots: int = 5
    eval_data_dir: str | None = None  # default: $SEEKFORGE_EVAL_DATA or ~/.cache/seekforge/eval
    tensorboard: bool = True
    # Weights & Biases. auto: on when wandb is installed and WANDB_MODE or WANDB_API_KEY is set.
    wandb: bool | Literal["auto"] = "auto"
    wandb_project: str = "seekforge"
    plot: bool = True  # loss-curve PNG at the end
    progress: bool = True  # tqdm bar
    # --- runtime -----------------------------------------------------------------------------
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast dtype; weights stay fp32
    compile: bool | Literal["auto"] = "auto"
    activation_checkpointing: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"  # under torchrun
    num_threads: int | None = None  # CPU intra-op threads; null = torch's default
    resume: str = "auto"  # auto | must | never | a checkpoint directory

    def validate(self) -> None:
        positive = ["seq_len", "batch_tokens", "micro_batch_size", "max_steps", "log_every", "max_bad_steps"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0 (got {getattr(self, name)})")
        non_negative = ["warmup_steps", "eval_every", "save_every", "grad_clip", "weight_decay",
                        "sample_tokens", "early_stopping_patience", "lr", "muon_lr"]
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0 (got {getattr(self, name)})")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last: must be >= 1 (got {self.keep_last})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1] (got {self.min_lr_ratio})")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"decay_fraction: must be in (0, 1] (got {self.decay_fraction})")
        for name in ("adam_beta1", "adam_beta2", "muon_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1) (got {getattr(self, name)})")
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: must be in [0, 1) (got {self.data.val_fraction})")
        if self.eval_tokens is not None and self.eval_tokens < self.seq_len:
            raise ConfigError(f"eval_tokens: must be >= seq_len ({self.seq_len}) or null "
                              f"(got {self.eval_tokens})")
        if self.eval_tasks:
            from seekforge.eval.during_training import check_settings

            check_settings(self.eval_tasks, self.eval_data_dir)
        if self.batch_tokens % self.seq_len:
            raise ConfigError(f"batch_tokens ({self.batch_tokens}) must be a multiple of seq_len "
                              f"({self.seq_len})")
        if self.data.train is None:
            raise ConfigError("data.train: required (a token-shard folder from `seekforge data tokenize`, or "
                              "raw .txt/.jsonl files with `tokenizer` set), e.g. --set data.train=shards/")
        self._validate_mixture()
        if self.resume not in ("auto", "must", "never") and not Path(self.resume).exists():
            raise ConfigError(f"resume: {self.resume!r} is neither auto/must/never nor an existing "
                              "checkpoint")

    def _validate_mixture(self) -> None:
        from seekforge.train.mixture import is_mixture, parse_schedule, parse_sources

        sources = parse_sources(self.data.train) if is_mixture(self.data.train) else None
        parse_schedule(self.data.schedule, sources)
        if sources is not None and self.data.val is not None:
            raise ConfigError("data.val: not used with a mixture in data.train; each source is validated on "
                              "its own `val` split, or on data.train.NAME.val")
        if self.data.schedule.kind == "loss" and self.eval_every == 0:
            raise ConfigError("data.schedule.kind: 'loss' re-weights at every evaluation, but eval_every is "
                              "0; set eval_every > 0")

    def grad_accum(self, world_size: int) -> int:
        """batch_tokens / (micro_batch_size · seq_len · world_size), which must be a whole number."""
        per_pass = self.micro_batch_size * self.seq_len * world_size
        if self.batch_tokens % per_pass:
            rows = self.batch_tokens // self.seq_len
            fits = [b for b in range(1, self.micro_batch_size + 1) if rows % (b * world_size) == 0]
            hint = f"; micro_batch_size {fits[-1]} would fit" if fits else ""
            raise ConfigError(
                f"batch_tokens ({self.batch_tokens}) is not divisible by micro_batch_size x seq_len x "
                f"world_size ({self.micro_batch_size} x {self.seq_len} x {world_size} = {per_pass}){hint}")
        return self.batch_tokens // per_pass


def _merge_model(base: Any, extra: Any) -> Any:
    """``model`` merging: a string followed by a block of fields keeps the string as ``preset``."""
    if isinstance(base, str) and isinstance(extra, dict):
        return {"preset": base, **extra}
    if isinstance(base, dict) and isinstance(extra, dict):
        return deep_merge(base, extra)
    return extra


def load_train_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                      base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- ``base`` <- YAML file <- ``key=value`` overrides, validated (ConfigError names the key)."""
    layers = [dict(base or {})]
    if path is not None:
        layers.append(read_yaml(path))
    layers.append(parse_overrides(overrides))
    data: dict[str, Any] = {}
    for layer in layers:
        model = _merge_model(data["model"], layer["model"]) if "model" in data and "model" in layer else None
        data = deep_merge(data, layer)
        if model is not None:
            data["model"] = model
    try:
        return load_config(TrainConfig, base=data)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise
