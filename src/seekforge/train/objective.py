"""Objectives: everything task-specific that the one training loop needs to ask about.

The loop (:class:`seekforge.train.trainer.Trainer`) owns the mechanics that are the same for
pretraining, SFT and distillation: devices, precision, DDP/FSDP, gradient accumulation, clipping,
the optimizer and schedule, non-finite steps, signals, checkpoints, logging. An :class:`Objective`
owns the rest, through small overridable methods:

====================================  =====================================================
``setup(env)``                        prepare data/tokenizer (rank 0 first, others wait)
``build_model()``                     construct the model (fp32 master weights on env.device);
                                      parameters with ``requires_grad`` are the ones trained
``train_loader(micro_bs, accum)``     a :class:`seekforge.train.loader.StepLoader`
``loss(model, batch)``                batch -> :class:`LossOutput`
``count_targets(batch)``              what a micro-batch's mean loss is over (tokens; pairs
                                      for preference losses): its weight in the step
``evaluate(model)``                   -> ``{"val_loss": ..., "val_bpb": ...}``
``samples(model)``                    greedy generations from fixed prompts
``save_model(model, path)``           the "save model" hook (LoRA: adapters or merged weights)
``load_model_weights(model, path)``   its inverse, for resuming
``describe(model)``                   lines for the run's opening log
``flops_per_token(model)``            for MFU (None: not reported)
====================================  =====================================================

:class:`PretrainObjective` is next-token prediction (+ DeepSeek-V3's MTP and balance losses)
over packed token shards. SFT/distillation subclass it (or :class:`Objective`) and swap the data
and the loss; wrapping the model (LoRA via peft) goes in ``build_model``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seekforge.config import ConfigError
from seekforge.train import dist
from seekforge.train.config import TrainConfig

log = logging.getLogger("seekforge.train")


@dataclass
class TrainEnv:
    """What the loop tells the objective about the run."""

    cfg: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype  # autocast dtype (float32 = no autocast)
    rank: int
    world_size: int
    out_dir: Path


@dataclass
class LossOutput:
    loss: torch.Tensor  # what is backpropagated: a mean over this micro-batch's targets
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, logged as <name>_loss
    expert_loads: torch.Tensor | None = None  # [n_moe_layers, E] tokens per expert
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, logged as <name>


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP / torch.compile wrappers (FSDP2 shards in place: no wrapper)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile(model)
            model = model._orig_mod
        else:
            return model


class Objective:
    """Base class; see the module docstring. Subclasses implement at least the data and loss."""

    name = "objective"
    env: TrainEnv

    def setup(self, env: TrainEnv) -> None:
        self.env = env

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def train_loader(self, micro_batch_size: int, grad_accum: int):
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        raise NotImplementedError

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Positions with a (shifted) label; micro-batches are weighted by it (exact with SFT masks)."""
        return int((batch["labels"][:, 1:] != -100).sum())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}

    def samples(self, model: nn.Module) -> list[tuple[str, str]]:
        return []

    def flops_per_token(self, model: nn.Module) -> float | None:
        return None

    def save_model(self, model: nn.Module, path: Path) -> None:
        raise NotImplementedError

    def load_model_weights(self, model: nn.Module, path: Path) -> None:
        raise NotImplementedError

    def describe(self, model: nn.Module) -> list[str]:
        return []


# ---------------------------------------------------------------------------------------------
# Pretraining


def freeze_untrained_indexers(model: nn.Module, dsa_stage: str | None) -> int:
    """Freeze the lightning indexers (DeepSeek-V3.2's, DeepSeek-V4's CSA layers') when no ``dsa_stage``
    trains them: their top-k choice is discrete, so the language-model loss gives them no gradient;
    only the indexer KL of a V3.2 training stage does. Frozen, they cost no optimizer state and DDP
    does not wait for gradients that never come. Returns how many tensors were frozen."""
    from seekforge.model.dsa import dsa_attentions

    if dsa_stage is not None:
        return 0
    params = [p for layer in dsa_attentions(unwrap(model)) for p in layer.trainable_indexer().parameters()
              if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    return len(params)


def _is_v4(source: Any) -> bool:
    """A DeepSeek-V4 preset name or model directory (the V4 model is built by its own module)."""
    from seekforge.model.hf_v4 import is_v4_dir
    from seekforge.model.v4_config import V4_PRESETS

    return isinstance(source, str) and (source in V4_PRESETS or is_v4_dir(source))


def _is_v4_config(cfg: Any) -> bool:
    return getattr(cfg, "model_type", "") == "deepseek_v4"


def _is_shard_dir(spec: Any) -> bool:
    return isinstance(spec, str) and Path(spec).is_dir() and (Path(spec) / "manifest.json").is_file()


def _cache_key(inputs: list[str], val: list[str] | None, tokenizer: Path, cfg: TrainConfig) -> str:
    """Identity of a raw-text tokenization: paths, sizes, mtimes, tokenizer and split settings."""
    from seekforge.data.readers import expand_inputs

    h = hashlib.sha256()
    for group in (inputs, val or []):
        for _, p in expand_inputs(group):
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        h.update(b"--\n")
    tj = tokenizer / "tokenizer.json"
    h.update(tj.read_bytes() if tj.is_file() else str(tokenizer.resolve()).encode())
    h.update(json.dumps([cfg.data.val_fraction, cfg.data.text_fields, cfg.data.txt_mode]).encode())
    return h.hexdigest()[:16]


class PretrainObjective(Objective):
    """Next-token prediction over packed token shards, with DeepSeek-V3's MTP and balance losses."""

    name = "pretrain"

    # -- data -----------------------------------------------------------------------------------
    def setup(self, env: TrainEnv) -> None:
        from seekforge.data.shards import TokenShards
        from seekforge.train.mixture import is_mixture

        super().setup(env)
        cfg = env.cfg
        self.sources = None  # a data.train mixture: list[Source], parallel to source_shards
        if is_mixture(cfg.data.train):
            self._setup_mixture(cfg)
            train_dir = Path(self.sources[0].path)
        else:
            train_dir, val_dir = self._resolve_data(cfg, env)
            self.train_shards = TokenShards(train_dir, "train")
            self.source_shards = [self.train_shards]
            self.val_by_source = {None: self._val_shards(self.train_shards, val_dir)}
        tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else train_dir / "tokenizer"
        self.tokenizer_dir = tok_dir if tok_dir.is_dir() else None
        self.tokenizer = None
        if self.tokenizer_dir is not None:
            from seekforge.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(self.tokenizer_dir)
            if len(self.tokenizer) != self.train_shards.vocab_size:
                raise ConfigError(f"tokenizer {self.tokenizer_dir} has {len(self.tokenizer)} tokens but the "
                                  f"shards in {train_dir} were made with vocab_size "
                                  f"{self.train_shards.vocab_size}: "
                                  "use the tokenizer the data was tokenized with")
        elif cfg.sample_tokens:
            log.info("no tokenizer found (set `tokenizer`): no text samples")
        from seekforge.train.loader import make_eval_set

        specials = list(self.tokenizer.all_special_ids) if self.tokenizer is not None else []
        # name (None for a single source) -> what is scored at each evaluation
        self.eval_sets = {name: make_eval_set(shards, cfg.eval_tokens, self.tokenizer, specials)
                          for name, shards in self.val_by_source.items() if shards is not None}

    def _setup_mixture(self, cfg: TrainConfig) -> None:
        """Open every source of a data.train mixture; they must share one vocabulary."""
        from seekforge.data.shards import TokenShards
        from seekforge.train.mixture import parse_sources

        self.sources = parse_sources(cfg.data.train)
        self.source_shards, self.val_by_source = [], {}
        for src in self.sources:
            key = f"data.train.{src.name}"
            for what, path in (("path", src.path), ("val", src.val)):
                if path is not None and not _is_shard_dir(path):
                    raise ConfigError(f"{key}.{what}: {path} is not a token-shard folder (no manifest.json); "
                                      "a mixture takes folders written by `seekforge data tokenize`")
            try:
                shards = TokenShards(src.path, "train")
            except ValueError as e:
                raise ConfigError(f"{key}.path: {e}") from None
            first = self.source_shards[0] if self.source_shards else shards
            ids = (shards.vocab_size, shards.bos_token_id, shards.eos_token_id)
            if ids != (first.vocab_size, first.bos_token_id, first.eos_token_id):
                raise ConfigError(f"{key}.path: {src.path} was tokenized with vocab_size/bos/eos {ids}, but "
                                  f"{self.sources[0].name} ({first.path}) with "
                                  f"{(first.vocab_size, first.bos_token_id, first.eos_token_id)}: every "
                                  "source must use the same tokenizer")
            self.source_shards.append(shards)
            val_dir = Path(src.val) if src.val else None
            if val_dir is None and shards.manifest["splits"].get("val", {}).get("tokens", 0) <= 1:
                if cfg.data.schedule.kind == "loss":
                    raise ConfigError(f"{key}: {src.path} has no val split, but data.schedule.kind 'loss' "
                                      f"needs every source's validation loss; set {key}.val to a shard "
                                      "folder")
                log.warning("%s (%s) has no validation split: no val_bpb/%s", src.name, src.path, src.name)
                self.val_by_source[src.name] = None
                continue
            self.val_by_source[src.name] = self._val_shards(shards, val_dir)
        self.train_shards = self.source_shards[0]  # vocabulary and special ids for the model

    def _resolve_data(self, cfg: TrainConfig, env: TrainEnv) -> tuple[Path, Path | None]:
        """Shard folders for train (and val): given, or tokenized from raw text into OUT/data."""
        data = cfg.data
        if _is_shard_dir(data.train):
            val = data.val
            if val is not None and not _is_shard_dir(val):
                raise ConfigError(f"data.val: {val!r} must be a token-shard folder when data.train is one "
                                  "(tokenize both with `seekforge data tokenize --val ...`)")
            return Path(data.train), Path(val) if val else None
        inputs = [data.train] if isinstance(data.train, str) else list(data.train)
        val_inputs = ([data.val] if isinstance(data.val, str) else list(data.val)) if data.val else None
        for p in inputs + (val_inputs or []):
            if not any(c in p for c in "*?[") and not Path(p).exists():
                raise ConfigError(f"data: {p} does not exist (data.train / data.val take token-shard folders "
                                  "or raw .txt/.jsonl/.parquet files)")
        if not cfg.tokenizer:
            raise ConfigError(f"data.train {data.train!r} is raw text: set `tokenizer` (a tokenizer "
                              "directory from `seekforge tokenizer train`) so the trainer can tokenize it")
        out = env.out_dir / "data"
        if env.rank == 0:
            key = _cache_key(inputs, val_inputs, Path(cfg.tokenizer), cfg)
            stamp = out / "cache_key.txt"
            cached = stamp.is_file() and stamp.read_text().strip() == key
            if not (cached and (out / "manifest.json").is_file()):
                from seekforge.data.tokenize import tokenize_to_shards

                log.info("tokenizing %s into %s", ", ".join(inputs), out)
                tokenize_to_shards(inputs, cfg.tokenizer, out, val_fraction=data.val_fraction,
                                   val_inputs=val_inputs, text_fields=data.text_fields,
                                   txt_mode=data.txt_mode, workers=0)
                stamp.write_text(key + "\n")
        dist.barrier()
        return out, None

    def _val_shards(self, train, val_dir: Path | None):
        """The validation split: from ``val_dir``, else the `val` split next to ``train`` (TokenShards)."""
        from seekforge.data.shards import TokenShards

        if val_dir is not None:
            splits = TokenShards(val_dir, "train").manifest["splits"]
            split = "val" if splits.get("val", {}).get("tokens", 0) > 0 else "train"
            return TokenShards(val_dir, split)
        splits = train.manifest["splits"]
        if splits.get("val", {}).get("tokens", 0) > 1:
            return TokenShards(train.path, "val")
        log.warning("%s has no validation split: no val loss / bpb (set data.val or data.val_fraction)",
                    train.path)
        return None

    def train_loader(self, micro_batch_size: int, grad_accum: int):
        from seekforge.train.loader import MixtureLoader, PackedRows, PretrainLoader

        env, cfg = self.env, self.env.cfg
        rows = [PackedRows(s, cfg.seq_len, cfg.seed, shuffle=cfg.data.shuffle) for s in self.source_shards]
        if self.sources is None:
            return PretrainLoader(rows[0], micro_batch_size, grad_accum, env.rank, env.world_size, env.device)
        from seekforge.train.mixture import build_schedule, parse_schedule

        schedule = build_schedule(parse_schedule(cfg.data.schedule, self.sources), self.sources)
        return MixtureLoader(rows, [s.name for s in self.sources], schedule, cfg.max_steps, micro_batch_size,
                             grad_accum, env.rank, env.world_size, env.device)

    # -- model ----------------------------------------------------------------------------------
    def model_config(self):
        """The ModelConfig to build: preset / field block / directory, fitted to the data's vocab."""
        from seekforge.model.config import PRESETS, ModelConfig, model_config_from

        cfg = self.env.cfg
        spec = cfg.model
        source, fields = (spec, {}) if isinstance(spec, str) else (spec.get("preset"), dict(spec))
        fields.pop("preset", None)
        if _is_v4(source):
            return self._v4_model_config(str(source), fields)
        fresh = not (source is not None and source not in PRESETS and Path(str(source)).is_dir())
        for key in ("mtp_loss_weight", "aux_loss_alpha", "bias_update_speed"):
            if getattr(cfg, key) is not None:
                fields[key] = getattr(cfg, key)
        vocab = self.train_shards.vocab_size
        if fresh:
            if "vocab_size" not in fields:
                fields["vocab_size"] = vocab  # the data decides the embedding size of a new model
            bos = self.train_shards.bos_token_id
            eos = self.train_shards.eos_token_id
            fields.setdefault("bos_token_id", bos if bos is not None else 0)
            fields.setdefault("eos_token_id", eos if eos is not None else 1)
            if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
                fields.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        if source is None:
            mcfg = model_config_from(ModelConfig(), fields)
        else:
            mcfg = model_config_from(str(source), fields)
        if mcfg.vocab_size < vocab:
            raise ConfigError(f"model.vocab_size ({mcfg.vocab_size}) is smaller than the data's vocabulary "
                              f"({vocab}, {self.train_shards.path}): token ids would be out of range")
        if mcfg.max_position_embeddings < cfg.seq_len:
            raise ConfigError(f"seq_len ({cfg.seq_len}) exceeds model.max_position_embeddings "
                              f"({mcfg.max_position_embeddings}); raise it or shorten seq_len")
        return mcfg, (None if fresh else Path(str(source)))

    def _v4_model_config(self, source: str, fields: dict[str, Any]):
        """DeepSeek-V4: a preset (fitted to the data's vocabulary) or a V4 model directory."""
        from seekforge.model.hf_v4 import read_config
        from seekforge.model.v4_config import V4_PRESETS, v4_preset

        cfg = self.env.cfg
        for key in ("mtp_loss_weight", "aux_loss_alpha"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"{key}: not used by DeepSeek-V4 models here (no MTP module, "
                                  f"aux-loss-free balancing only); remove it")
        if cfg.bias_update_speed is not None:
            fields["bias_update_speed"] = cfg.bias_update_speed
        vocab = self.train_shards.vocab_size
        if source in V4_PRESETS:
            fields.setdefault("vocab_size", vocab)
            bos, eos = self.train_shards.bos_token_id, self.train_shards.eos_token_id
            fields.setdefault("bos_token_id", bos if bos is not None else 0)
            fields.setdefault("eos_token_id", eos if eos is not None else 1)
            mcfg, source_dir = v4_preset(source, **fields), None
        else:
            if fields:
                raise ConfigError(f"model: fields {sorted(fields)} cannot override a DeepSeek-V4 directory")
            mcfg, source_dir = read_config(source), Path(source)
        if mcfg.vocab_size < vocab:
            raise ConfigError(f"model.vocab_size ({mcfg.vocab_size}) is smaller than the data's vocabulary "
                              f"({vocab}, {self.train_shards.path}): token ids would be out of range")
        return mcfg, source_dir

    def build_model(self) -> nn.Module:
        from seekforge.model import build_model

        mcfg, source_dir = self.model_config()
        # fp32 master weights; autocast (bf16 on CUDA) does the low-precision compute.
        model = build_model(mcfg, self.env.device, torch.float32)
        if source_dir is not None:
            self.load_model_weights(model, source_dir)
            log.info("continuing from the weights in %s", source_dir)
        if self.env.cfg.dsa_stage is not None:
            from seekforge.model.dsa import set_dsa_stage

            try:
                set_dsa_stage(model, self.env.cfg.dsa_stage)
            except ValueError as e:
                raise ConfigError(f"dsa_stage: {e}; set model.index_topk (or start from a V3.2 "
                                  "model) to add the indexer") from None
        frozen = freeze_untrained_indexers(model, self.env.cfg.dsa_stage)
        if frozen:
            log.info("%d lightning-indexer tensors frozen: no loss of this run reaches them", frozen)
        return model

    def load_model_weights(self, model: nn.Module, path: Path) -> None:
        from seekforge.model.dsa import load_dense_into_sparse
        from seekforge.model.hf import load_checkpoint

        base = unwrap(model)
        if _is_v4_config(base.config):
            from seekforge.model.hf_v4 import check_hash_tables, from_disk, read_tensors

            state = from_disk(read_tensors(path))
            check_hash_tables(base.config, state, str(path))
        else:
            cfg, state = load_checkpoint(path, base.config)
            if base.config.is_dsa and not any(".indexer." in k for k in state):
                added = load_dense_into_sparse(base, state, path)  # V3 -> V3.2: the indexers start fresh
                log.info("%s is a DeepSeek-V3 checkpoint: converted to V3.2, %d indexer tensors initialised",
                         path, len(added))
                return
        missing, unexpected = base.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match the model: missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]}")

    def save_model(self, model: nn.Module, path: Path) -> None:
        from seekforge.model import save_model

        save_model(unwrap(model), path, tokenizer=self.tokenizer_dir)

    def describe(self, model: nn.Module) -> list[str]:
        from seekforge.model.accounting import param_counts
        from seekforge.utils import human_count

        mc = unwrap(model).config
        if _is_v4_config(mc):
            from seekforge.model.v4_accounting import parameter_counts

            counts = parameter_counts(mc)
            pc = {"total": counts.total, "active": counts.active}
        else:
            pc = param_counts(mc)
        vocab = unwrap(model).config.vocab_size
        lines = [f"model: {human_count(pc['total'])} parameters ({human_count(pc['active'])} active per "
                 f"token), {sum(s.num_tokens for s in self.source_shards):,} train tokens, vocab {vocab}"]
        if self.sources is not None:
            total = sum(s.weight for s in self.sources)
            lines.append("mixture (" + self.env.cfg.data.schedule.kind + "): " + ", ".join(
                f"{s.name} {s.weight / total:.3f} of {sh.num_tokens:,} tokens"
                for s, sh in zip(self.sources, self.source_shards)))
        return lines

    def flops_per_token(self, model: nn.Module) -> float | None:
        from seekforge.model.accounting import flops_per_token

        mc = unwrap(model).config
        if _is_v4_config(mc):
            from seekforge.model.v4_accounting import flops_per_token as v4_forward_flops

            # forward + backward = 3 x forward, attention at the mean context of a training row
            return 3 * v4_forward_flops(mc, self.env.cfg.seq_len // 2)
        include_mtp = mc.num_nextn_predict_layers > 0 and mc.mtp_loss_weight > 0
        return flops_per_token(mc, self.env.cfg.seq_len, include_mtp=include_mtp)

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        out = model(batch["input_ids"], labels=batch["labels"])
        # DSA dense warm-up: the main model is frozen, its router biases included (no loads, no update).
        loads = None if self.env.cfg.dsa_stage == "dense_warmup" else out.expert_loads
        metrics = {}
        if self.env.cfg.dsa_stage == "dense_warmup":
            from seekforge.model.dsa import mean_indexer_recall

            recall = mean_indexer_recall(unwrap(model))
            if recall is not None:  # share of the attention's top-k entries the indexer's top k holds
                metrics["indexer_recall"] = recall
        return LossOutput(out.loss, dict(out.losses), loads, metrics)

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation loss (nats per scored token) and bits per byte over the evaluated tokens.

        With a mixture, also ``val_loss/NAME`` and ``val_bpb/NAME`` per source; ``val_loss`` /
        ``val_bpb`` are then over all sources' validation tokens together.
        """
        if not self.eval_sets:
            return {}
        out: dict[str, float] = {}
        total = [0.0, 0, 0]  # nats, scored tokens, bytes
        for name, es in self.eval_sets.items():
            nats, n = self._score(model, es)
            total = [total[0] + nats, total[1] + n, total[2] + es.num_bytes]
            if name is not None:
                out[f"val_loss/{name}"] = nats / max(n, 1)
                out[f"val_bpb/{name}"] = nats / (math.log(2) * es.num_bytes) if es.num_bytes else float("nan")
        nats, n, nbytes = total
        bpb = nats / (math.log(2) * nbytes) if nbytes else float("nan")
        return {"val_loss": nats / max(n, 1), "val_bpb": bpb, "val_tokens": n, **out}

    def _score(self, model: nn.Module, eval_set) -> tuple[float, int]:
        """(summed nats, scored tokens) of one validation set over all ranks.

        Rows are split round-robin over ranks and the sums all-reduced. Every rank runs the same
        number of forwards (an empty batch pads the count) because FSDP all-gathers inside forward.
        """
        from seekforge.train.loader import eval_batches

        env = self.env
        cfg = env.cfg
        bs = cfg.eval_batch_size or cfg.micro_batch_size
        batches = list(eval_batches(eval_set, cfg.seq_len, bs))
        mine = batches[env.rank::env.world_size]
        rounds = math.ceil(len(batches) / env.world_size)
        sums = torch.zeros(2, dtype=torch.float64, device=env.device)  # nats, scored tokens
        was_training = model.training
        model.eval()
        for i in range(rounds):
            if i < len(mine):
                ids, labels = mine[i]
            else:  # nothing left for this rank: a fully ignored row keeps the forwards in lockstep
                ids, labels = batches[0][0][:1], torch.full_like(batches[0][1][:1], -100)
            ids, labels = ids.to(env.device), labels.to(env.device)
            with autocast(env):
                logits = model(ids).logits
            targets = labels[:, 1:]
            nats = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=-100, reduction="sum")
            sums[0] += nats.double()
            sums[1] += (targets != -100).sum()
        model.train(was_training)
        dist.all_reduce_sum(sums)
        return float(sums[0]), int(sums[1])

    @torch.no_grad()
    def samples(self, model: nn.Module) -> list[tuple[str, str]]:
        """Greedy continuations of ``sample_prompts`` (a plain loop; the fast engine is seekforge.infer)."""
        cfg = self.env.cfg
        if self.tokenizer is None or not cfg.sample_tokens:
            return []
        base = unwrap(model)
        max_pos = base.config.max_position_embeddings
        eos = self.tokenizer.eos_token_id
        was_training = model.training
        model.eval()
        out = []
        for prompt in cfg.sample_prompts:
            ids = self.tokenizer(prompt)["input_ids"]
            if not ids or ids[0] != self.tokenizer.bos_token_id:
                ids = [self.tokenizer.bos_token_id] + list(ids)
            x = torch.tensor([ids], device=self.env.device)
            new: list[int] = []
            for _ in range(cfg.sample_tokens):
                with autocast(self.env):
                    logits = model(x[:, -max_pos:]).logits[0, -1]
                nxt = int(logits.argmax())
                if nxt == eos:
                    break
                new.append(nxt)
                x = torch.cat([x, x.new_tensor([[nxt]])], dim=1)
            out.append((prompt, self.tokenizer.decode(new, skip_special_tokens=True)))
        model.train(was_training)
        return out


def autocast(env: TrainEnv):
    """bf16/fp16 autocast on the run's device, or nothing for float32."""
    import contextlib

    if env.amp_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(env.device.type, dtype=env.amp_dtype)


__all__ = ["Objective", "PretrainObjective", "LossOutput", "TrainEnv", "unwrap", "autocast"]
