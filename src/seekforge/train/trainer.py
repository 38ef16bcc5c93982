"""The one training loop of seekforge (pretraining, SFT and distillation differ only in the Objective).

One optimizer step, in order (read :meth:`Trainer._train_step`):

1. the loader hands this rank its ``grad_accum`` micro-batches (data position = rows consumed);
2. each micro-batch's mean loss is weighted by its share of the step's loss-carrying tokens over
   *all* ranks (exact even when SFT masks make micro-batches unequal; 1/accum for pretraining)
   and backpropagated; DDP/FSDP synchronise gradients on the last micro-batch only;
3. gradients are clipped to ``grad_clip`` (global norm); a non-finite loss or norm skips the
   update (counted; ``max_bad_steps`` in a row stops the run with a message naming the checkpoint
   to resume from);
4. LR from the schedule, optimizer step, then DeepSeek-V3's aux-loss-free router-bias update with
   the expert loads summed over micro-batches and all-reduced over ranks.

Around it: evaluation (val loss, bits per byte, greedy samples), atomic checkpoints with exact
resume, SIGINT/SIGTERM -> checkpoint and exit, early stopping, metrics.jsonl / TensorBoard /
W&B, a loss-curve PNG and ``summary.json``.

Exactness of resume (tested bit-for-bit on CPU): the model is rebuilt and seeded as in the first
run, then weights, optimizer, data position and every RNG state are restored from the checkpoint;
the LR is a pure function of the step. Nothing else in the loop carries state (a data mixture's
per-source positions and weights are part of the loader's state).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from torch import nn

from seekforge.config import ConfigError, to_dict
from seekforge.train import checkpoint as ckpt
from seekforge.train import dist
from seekforge.train.config import TrainConfig
from seekforge.train.metrics import MetricsLogger, peak_flops, plot_loss_curve
from seekforge.train.objective import Objective, PretrainObjective, TrainEnv, autocast, unwrap
from seekforge.train.optim import OptimizerSpec, build_optimizer, set_lr
from seekforge.train.schedule import lr_multiplier
from seekforge.utils import atomic_dir, atomic_write_text, parse_dtype, resolve_device

log = logging.getLogger("seekforge.train")


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss keeps being NaN); the message says how to go on."""


@dataclass
class TrainState:
    """Loop counters saved in every checkpoint."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    tokens: int = 0  # training tokens consumed over all ranks
    skipped_steps: int = 0
    bad_streak: int = 0
    best_val_bpb: float = math.inf  # over all evaluations (early stopping, summary)
    best_step: int | None = None
    best_ckpt_bpb: float = math.inf  # over checkpoints saved at an evaluation step (OUT/best)
    best_ckpt_step: int | None = None
    evals_since_best: int = 0
    train_seconds: float = 0.0  # time inside optimizer steps, summed over resumes
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int | None = None


def compile_default(device: torch.device) -> bool:
    """``compile: auto``. CUDA: on. CPU: off — measured in docs/LOG.md (inductor's CPU code for
    this model was not faster than eager at small scale and costs ~1 min of compile per run)."""
    return device.type == "cuda"


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each decoder layer in the backward pass instead of storing its activations.

    Patches the *instance* ``forward`` of every block in ``model.model.layers`` so parameter names
    (and hence checkpoints) are unchanged, unlike ``checkpoint_wrapper`` which renames them.
    """
    from torch.utils.checkpoint import checkpoint

    layers = getattr(getattr(unwrap(model), "model", None), "layers", None)
    if layers is None:
        raise ConfigError("activation_checkpointing: the model has no .model.layers to checkpoint")
    for layer in layers:
        inner = layer.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
    return len(layers)


class StepLosses(NamedTuple):
    """The losses of one optimizer step, over all its micro-batches and all ranks."""

    means: list[float]  # [total loss, parts...], each a mean over the step's loss-carrying tokens
    part_names: list[str]  # names of the parts ("main" = the language-model loss, "mtp", ...)
    metrics: dict[str, float]  # the objective's other per-step means (e.g. preference rewards)
    expert_loads: torch.Tensor | None  # [n_moe_layers, E] tokens per expert, this rank's micro-batches


def update_router_bias(model: nn.Module, loads: torch.Tensor) -> None:
    """DeepSeek-V3's aux-loss-free balancing after an optimizer step (no-op for dense models)."""
    base = unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # peft
    if hasattr(base, "update_router_bias"):
        base.update_router_bias(loads)


class Trainer:
    """``Trainer(cfg, objective).run()``; the objective defaults to pretraining."""

    def __init__(self, cfg: TrainConfig, objective: Objective | None = None) -> None:
        self.cfg = cfg
        self.objective = objective or PretrainObjective()
        self.state = TrainState()
        self._signal: int | None = None

    # =========================================================================================
    # setup
    def _setup_runtime(self) -> None:
        cfg = self.cfg
        device = resolve_device(cfg.device)
        self.dist = dist.init_distributed(device.type)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (router, loss) on tensor cores
            torch.backends.cudnn.allow_tf32 = True
        self.amp_dtype = parse_dtype(cfg.dtype, device)
        if self.amp_dtype == torch.float16 and device.type != "cuda":
            raise ConfigError("dtype: float16 needs a CUDA device (use float32 or bfloat16 on CPU)")
        self.compile = compile_default(device) if cfg.compile == "auto" else bool(cfg.compile)
        self.grad_accum = cfg.grad_accum(self.dist.world_size)
        self.out_dir = Path(cfg.out_dir)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._file_log = logging.FileHandler(self.out_dir / "train.log", encoding="utf-8")
            self._file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root = logging.getLogger("seekforge")
            root.addHandler(self._file_log)
            # train.log gets INFO even when the caller (a notebook, pytest) left logging at WARNING.
            self._old_level = root.level
            if root.getEffectiveLevel() > logging.INFO:
                root.setLevel(logging.INFO)
        dist.barrier()

    def _resume_target(self) -> Path | None:
        cfg, out = self.cfg, self.out_dir
        if cfg.resume == "never":
            if ckpt.list_checkpoints(out):
                raise ConfigError(f"resume: never, but {out} already holds checkpoints; use another out_dir, "
                                  "delete it, or resume (the default)")
            return None
        if cfg.resume in ("auto", "must"):
            found = ckpt.find_latest(out)
            if found is None and cfg.resume == "must":
                raise ConfigError(f"--resume: no checkpoint in {out} to resume from")
            return found
        path = Path(cfg.resume)
        if not (path / ckpt.STATE_DIR / ckpt.STATE_FILE).is_file():
            raise ConfigError(f"resume: {path} is not a training checkpoint "
                              f"(no {ckpt.STATE_DIR}/{ckpt.STATE_FILE})")
        return path

    def _seed(self) -> None:
        import random

        import numpy as np

        # The same seed on every rank: identical initial weights without a broadcast.
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed % 2**32)
        torch.manual_seed(self.cfg.seed)

    def _build(self, resume_from: Path | None) -> None:
        cfg, obj = self.cfg, self.objective
        model = obj.build_model()
        if resume_from is not None:
            obj.load_model_weights(model, resume_from)
        model.train()
        self.raw_model = model
        self.flops_per_token = obj.flops_per_token(model)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        if self.compile:
            layers = getattr(getattr(model, "model", None), "layers", None)
            for layer in layers if layers is not None else [model]:
                layer.compile()  # per block: small graphs, MoE routing breaks stay local
        self.model = self._wrap(model)
        self.eval_model = self.model if cfg.distributed == "fsdp" and self.dist.enabled else model
        # Methods choose what trains by requires_grad (LoRA: adapters only; freeze: some layers).
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        spec = OptimizerSpec(kind=cfg.optimizer, lr=cfg.lr, muon_lr=cfg.muon_lr,
                             muon_momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        self.optimizer = build_optimizer(trainable, spec, self.device)
        self.params = [p for _, p in trainable if p.requires_grad]
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.loader = obj.train_loader(cfg.micro_batch_size, self.grad_accum)

    def _wrap(self, model: nn.Module) -> nn.Module:
        cfg = self.cfg
        if not self.dist.enabled:
            return model
        if cfg.distributed == "fsdp":
            if cfg.optimizer == "muon":
                raise ConfigError("optimizer: muon needs whole matrices, but FSDP shards them; use "
                                  "distributed: ddp with muon, or optimizer: adamw with fsdp")
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=self.amp_dtype, reduce_dtype=torch.float32)
            # One FSDP unit per main decoder layer (all-gathered just in time in its __call__). MTP
            # layers stay in the root unit: the model calls their `combine` method directly, which
            # FSDP's forward hooks would not see (their weights would still be shards there).
            for layer in getattr(model, "main_layers", []):
                fully_shard(layer, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        # broadcast_buffers=False: the router bias is updated identically on every rank (all-reduced
        # loads), so re-broadcasting it every forward would only cost time.
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids, broadcast_buffers=False)

    def _restore(self, path: Path) -> None:
        state = ckpt.read_trainer_state(path)
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except ValueError as e:  # torch: "... doesn't match the size of optimizer's group"
                saved = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
                now = [len(g["params"]) for g in self.optimizer.param_groups]
                raise ValueError(
                    f"{path}: cannot resume: the checkpoint's optimizer holds {saved} parameter tensors "
                    f"per group, this run trains {now}. The set of trained parameters changed (model, "
                    "method, freezing, dsa_stage, or a seekforge version that freezes differently); "
                    "resume with the settings that wrote it, or start fresh with resume=never "
                    f"(torch: {e})") from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        self.state = TrainState(**state["train_state"])
        rngs = state["rng"]
        if len(rngs) != self.dist.world_size:
            log.warning("checkpoint was written by %d ranks, this run has %d: RNG streams restart from "
                        "rank 0's (data order is unaffected)", len(rngs), self.dist.world_size)
        ckpt.set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        old = state.get("config", {})
        new = to_dict(self.cfg)
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k != "resume"]
        if not self.dist.is_main:
            return
        if changed:
            log.warning("resuming with changed settings: %s (exact continuation is only guaranteed without "
                        "changes)", ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed))
        log.info("resumed from %s (step %d, %s tokens)", path, self.state.step, f"{self.state.tokens:,}")

    @property
    def _fsdp(self) -> bool:
        return self.cfg.distributed == "fsdp" and self.dist.enabled

    # =========================================================================================
    # the step
    def _sync_context(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if not self.dist.enabled or last:
            if self._fsdp:
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self._fsdp:
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _train_step(self) -> dict[str, Any]:
        """One optimizer step (steps 1-4 of the module docstring); returns its metrics record."""
        batches = self.loader.next_step()
        lr_mult = self._set_lr()
        losses = self._forward_backward(batches)
        grad_norm = self._clip_gradients()
        finite = math.isfinite(losses.means[0]) and (math.isfinite(grad_norm) or self.scaler is not None)
        if finite:
            self._optimizer_step(losses.expert_loads)
        else:
            self.state.skipped_steps += 1
            self.state.bad_streak += 1
        self.optimizer.zero_grad(set_to_none=True)
        record = self._step_record(losses, lr_mult, grad_norm)
        if not finite:
            record["skipped"] = True
            self._on_bad_step(losses.means[0], grad_norm)
        return record

    def _set_lr(self) -> float:
        """The schedule's multiplier of the peak LR for this step, applied to every param group."""
        cfg = self.cfg
        mult = lr_multiplier(self.state.step, schedule=cfg.schedule, max_steps=cfg.max_steps,
                             warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
                             decay_fraction=cfg.decay_fraction)
        set_lr(self.optimizer, mult)
        return mult

    def _forward_backward(self, batches: list[dict[str, torch.Tensor]]) -> StepLosses:
        """Backpropagate every micro-batch, weighted by its share of the step's loss-carrying tokens."""
        counts = [self.objective.count_targets(b) for b in batches]
        n_global = int(dist.all_reduce_sum(torch.tensor([sum(counts)], dtype=torch.float64,
                                                        device=self.device))[0])
        world = self.dist.world_size
        part_names: list[str] = []
        metric_names: list[str] = []
        sums: torch.Tensor | None = None  # [total loss, parts..., metrics...] weighted by target counts
        loads = None
        for i, batch in enumerate(batches):
            with self._sync_context(i == len(batches) - 1):  # must cover forward *and* backward
                with autocast(self._env):  # forward only: backward runs in the forward's dtypes
                    out = self.objective.loss(self.model, batch)
                    # x world: DDP/FSDP *average* gradients over ranks; we want the mean over all targets.
                    scaled = out.loss * (counts[i] * world / max(n_global, 1))
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if sums is None:
                part_names, metric_names = list(out.parts), list(out.metrics)
                sums = torch.zeros(1 + len(part_names) + len(metric_names), dtype=torch.float64,
                                   device=self.device)
            vals = torch.stack([out.loss.detach().float()] + [out.parts[k].float() for k in part_names]
                               + [out.metrics[k].float() for k in metric_names])
            sums += vals.double() * counts[i]
            if out.expert_loads is not None:
                ld = out.expert_loads.detach().float()
                loads = ld if loads is None else loads + ld
        dist.all_reduce_sum(sums)
        means = (sums / max(n_global, 1)).tolist()
        n_loss = 1 + len(part_names)
        return StepLosses(means[:n_loss], part_names, dict(zip(metric_names, means[n_loss:])), loads)

    def _clip_gradients(self) -> float:
        """Global gradient norm (before clipping to ``grad_clip``); unscales fp16 gradients first."""
        if self.scaler is not None:
            for opt in getattr(self.optimizer, "optimizers", [self.optimizer]):
                self.scaler.unscale_(opt)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        return float(grad_norm)

    def _optimizer_step(self, expert_loads: torch.Tensor | None) -> None:
        """Update the weights, then the MoE router biases from the step's expert loads (all ranks)."""
        if self.scaler is not None:
            for opt in getattr(self.optimizer, "optimizers", [self.optimizer]):
                self.scaler.step(opt)
            self.scaler.update()
        else:
            self.optimizer.step()
        if expert_loads is not None:
            update_router_bias(self.model, dist.all_reduce_sum(expert_loads))
        self.state.bad_streak = 0

    def _step_record(self, losses: StepLosses, lr_mult: float, grad_norm: float) -> dict[str, Any]:
        cfg, means, names = self.cfg, losses.means, losses.part_names
        # train_loss is the language-model loss alone; "loss" also holds MTP / balance terms.
        record: dict[str, Any] = {"train_loss": means[1 + names.index("main")] if "main" in names
                                  else means[0], "loss": means[0]}
        for k, v in zip(names, means[1:]):
            if k != "main":
                record[f"{k}_loss"] = v
        record.update(losses.metrics)
        record.update(lr=cfg.lr * lr_mult, grad_norm=grad_norm)
        if cfg.optimizer == "muon":
            record["muon_lr"] = cfg.muon_lr * lr_mult
        if losses.expert_loads is not None:
            record.update(_imbalance(losses.expert_loads))
        return record

    def _on_bad_step(self, loss: float, grad_norm: float) -> None:
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        log.warning("step %d: non-finite %s; update skipped (%d in a row, %d in total)", self.state.step + 1,
                    what, self.state.bad_streak, self.state.skipped_steps)
        if self.state.bad_streak >= self.cfg.max_bad_steps:
            latest = ckpt.find_latest(self.out_dir)
            where = (f"resume from {latest} (re-run the same command)" if latest is not None
                     else "no checkpoint was written yet; restart")
            raise TrainingError(
                f"{self.state.bad_streak} consecutive steps (up to step {self.state.step + 1}) had a "
                f"non-finite {what.split(' ')[0]}; stopping. The model diverged or the data holds a bad "
                f"batch: {where} with a lower lr (now {self.cfg.lr}) or a lower grad_clip, or use dtype: "
                "bfloat16 instead of float16")

    # =========================================================================================
    # eval / checkpoints
    def _evaluate(self) -> dict[str, Any]:
        cfg, obj = self.cfg, self.objective
        t0 = time.perf_counter()
        res = obj.evaluate(self.eval_model)
        self.loader.observe_eval(res)  # a loss-driven mixture re-weights its sources here
        res.update(self.loader.eval_record())
        if cfg.eval_tasks and self.dist.is_main and not self._fsdp:  # benchmark subset (seekforge.eval)
            from seekforge.eval.during_training import benchmark_accuracy

            res.update(benchmark_accuracy(self.raw_model, getattr(obj, "tokenizer", None), cfg.eval_tasks,
                                          cfg.eval_limit, cfg.eval_shots, cfg.eval_data_dir))
        if "val_bpb" in res:
            st = self.state
            if res["val_bpb"] < st.best_val_bpb:
                st.best_val_bpb, st.best_step, st.evals_since_best = res["val_bpb"], st.step, 0
            else:
                st.evals_since_best += 1
        samples = []
        if cfg.sample_tokens and (self.dist.is_main or self._fsdp):
            samples = obj.samples(self.eval_model)
        if self._fsdp:
            # A forward without backward leaves FSDP2's root unit all-gathered (it reshards in the
            # backward). Reshard now: optimizer-state gathering maps the *sharded* parameters.
            self.model.reshard()
        if self.dist.is_main:
            parts = [f"{k} {v:.4f}" for k, v in res.items()
                     if isinstance(v, float) and not k.startswith(("mix_", "epoch/"))]
            weights = [f"{k.split('/', 1)[1]} {v:.3f}" for k, v in res.items() if k.startswith("mix_weight/")]
            if weights:
                parts.append("mixture weights " + " ".join(weights))
            took = time.perf_counter() - t0
            self._print(f"step {self.state.step}: " + ", ".join(parts) + f" ({took:.1f}s)")
            for prompt, text in samples:
                self._print(f"  sample: {prompt!r} -> {text!r}")
            if samples and self.metrics is not None:
                self.metrics.text("samples", "\n\n".join(f"**{p}** {t}" for p, t in samples), self.state.step)
        self.state.last_eval = {k: v for k, v in res.items()
                                if isinstance(v, (int, float)) and not k.startswith(("mix_", "epoch/"))}
        self.state.last_eval_step = self.state.step
        return res

    def _reference_eval(self) -> None:
        """Evaluate the untrained model for a loader that needs it (a loss-driven mixture's reference)."""
        res = self.objective.evaluate(self.eval_model)
        if self._fsdp:
            self.model.reshard()  # as in _evaluate
        self.loader.observe_eval(res)
        if self.metrics is not None:
            self.metrics.log({"step": 0, "tokens": 0, **res})
        if self.dist.is_main:
            parts = [f"{k} {v:.4f}" for k, v in res.items() if k.startswith("val_bpb/")]
            self._print("step 0 (reference for data.schedule): " + ", ".join(parts))

    def _trainer_state(self) -> dict[str, Any]:
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optim = get_optimizer_state_dict(self.model, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optim = self.optimizer.state_dict()
        return {"optimizer": optim, "loader": self.loader.state_dict(), "train_state": asdict(self.state),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": dist.all_gather_object(ckpt.rng_state()), "config": to_dict(self.cfg),
                "world_size": self.dist.world_size}

    def _model_for_save(self) -> nn.Module:
        if not self._fsdp:
            return self.raw_model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from seekforge.model import build_model

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.model, options=opts)
        if not self.dist.is_main:
            return self.raw_model
        copy = build_model(self.raw_model.config, "cpu", torch.float32, init=False)
        copy.load_state_dict(full)
        return copy

    def save_checkpoint(self) -> Path:
        """Write ``OUT/step-N`` atomically, point ``latest`` at it, prune old ones (collective)."""
        st = self.state
        path = self.out_dir / ckpt.step_dir_name(st.step)
        # "best" = lowest val bpb among checkpoints taken right after an evaluation; steps that were
        # evaluated but not saved cannot be kept (align save_every with eval_every).
        bpb = st.last_eval.get("val_bpb") if st.last_eval_step == st.step else None
        if bpb is not None and bpb < st.best_ckpt_bpb:
            st.best_ckpt_bpb, st.best_ckpt_step = bpb, st.step
        state = self._trainer_state()  # collective (RNG gather, FSDP optimizer gather)
        model = self._model_for_save()  # collective under FSDP
        if self.dist.is_main:
            t0 = time.perf_counter()
            meta = {"step": st.step, "tokens": st.tokens, "train_seconds": round(st.train_seconds, 2),
                    **st.last_eval, "best_val_bpb": None if math.isinf(st.best_val_bpb) else st.best_val_bpb,
                    "best_step": st.best_step}
            with atomic_dir(path) as tmp:
                self.objective.save_model(model, tmp)  # the "save model" hook (HF directory)
                ckpt.write_trainer_state(tmp, state, yaml.safe_dump(to_dict(self.cfg), sort_keys=False,
                                                                    allow_unicode=True), meta)
                ckpt.make_readable(tmp)
            ckpt.set_pointer(self.out_dir, "latest", path)
            best = self._best_checkpoint()
            if best is not None and best.is_dir():
                ckpt.set_pointer(self.out_dir, "best", best)
            ckpt.prune(self.out_dir, self.cfg.keep_last, [best, path])
            log.info("saved %s (%.1fs)", path, time.perf_counter() - t0)
        dist.barrier()
        self._last_saved = st.step
        return path

    def _best_checkpoint(self) -> Path | None:
        step = self.state.best_ckpt_step
        return None if step is None else self.out_dir / ckpt.step_dir_name(step)

    # =========================================================================================
    # logging helpers
    def _print(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg)
            for h in logging.getLogger("seekforge").handlers:
                if isinstance(h, logging.FileHandler):
                    h.emit(logging.LogRecord("seekforge.train", logging.INFO, "", 0, msg, None, None))
        else:
            log.info(msg)

    def _install_signals(self) -> dict:
        def handler(signum, frame):
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            self._signal = signum
            log.warning("received %s: finishing this step, saving a checkpoint, then exiting (Ctrl-C again "
                        "to abort without saving)", signal.Signals(signum).name)

        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def _stop_requested(self) -> bool:
        flag = torch.tensor([float(self._signal or 0)])
        if self.dist.enabled:
            flag = dist.all_reduce_max(flag.to(self.device)).cpu()
        if flag.item() and self._signal is None:
            self._signal = int(flag.item())
        return bool(flag.item())

    # =========================================================================================
    def run(self) -> dict[str, Any]:
        """Train to ``max_steps`` (or a stop condition); returns the summary also written to summary.json."""
        try:
            return self._run()
        finally:
            handler = getattr(self, "_file_log", None)
            if handler is not None:  # also after a config/data error during setup
                logging.getLogger("seekforge").removeHandler(handler)
                logging.getLogger("seekforge").setLevel(self._old_level)
                handler.close()
                self._file_log = None

    def _run(self) -> dict[str, Any]:
        t_start = time.perf_counter()
        self._prepare()
        previous = self._install_signals()
        try:
            stopped = self._loop(t_start)
            if self._signal is None and self._stop_requested():
                stopped = f"signal {signal.Signals(self._signal).name}"
            if self.state.step != self._last_saved:
                self.save_checkpoint()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self.metrics is not None:
                self.metrics.close()
        summary = self._finish(stopped, t_start)
        dist.cleanup()
        return summary

    def _prepare(self) -> None:
        """Runtime, objective, model, optimizer and loader; their state restored when resuming."""
        self._setup_runtime()
        cfg = self.cfg
        self._bar = None
        self.metrics = None
        resume_from = self._resume_target()
        self._seed()
        self._env = TrainEnv(cfg, self.device, self.amp_dtype, self.dist.rank, self.dist.world_size,
                             self.out_dir)
        self.objective.setup(self._env)
        self._build(resume_from)
        if resume_from is not None:
            self._restore(resume_from)
        self._last_saved = self.state.step if resume_from is not None else -1
        if self.dist.is_main:
            self.metrics = MetricsLogger(self.out_dir, resume_step=self.state.step if resume_from else None,
                                         tensorboard=cfg.tensorboard, wandb_mode=cfg.wandb,
                                         wandb_project=cfg.wandb_project, config=to_dict(cfg),
                                         run_name=self.out_dir.name)
        self._peak_flops = peak_flops(self.device) if self.dist.is_main else None
        self._log_plan(resume_from)

    def _loop(self, t_start: float) -> str:
        """Optimizer steps until ``max_steps`` or a stop condition; returns why it stopped."""
        cfg, st = self.cfg, self.state
        self._bar = self._progress_bar()
        if st.step == 0 and self.loader.needs_initial_eval:
            self._reference_eval()
        window_tokens, window_time = 0, 0.0  # throughput since the last logged step
        while st.step < cfg.max_steps:
            if self._stop_requested():
                return f"signal {signal.Signals(self._signal).name}"
            record, seconds = self._timed_step()
            window_tokens += cfg.batch_tokens
            window_time += seconds
            last = st.step == cfg.max_steps
            do_eval = last or (cfg.eval_every and st.step % cfg.eval_every == 0)
            if st.step % cfg.log_every == 0 or st.step == 1 or last or do_eval or record.get("skipped"):
                self._log_step(record, window_tokens / max(window_time, 1e-9), t_start, do_eval)
                window_tokens, window_time = 0, 0.0
            if cfg.early_stopping_patience and st.evals_since_best >= cfg.early_stopping_patience:
                stopped = f"early stopping: no better val bpb in {st.evals_since_best} evals"
                self._print(stopped)
                return stopped
            # No scheduled save inside a streak of non-finite steps: the checkpoint to point the user
            # at is the last one from before the trouble.
            if cfg.save_every and st.step % cfg.save_every == 0 and not last and st.bad_streak == 0:
                self.save_checkpoint()
        return "max_steps"

    def _progress_bar(self):
        from tqdm.auto import tqdm

        # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI).
        bar = tqdm(total=self.cfg.max_steps, initial=self.state.step, desc="train", unit="step",
                   dynamic_ncols=True, mininterval=1.0,
                   disable=None if (self.dist.is_main and self.cfg.progress) else True)
        return None if bar.disable else bar

    def _timed_step(self) -> tuple[dict[str, Any], float]:
        """One optimizer step and the loop counters it advances; returns (record, seconds)."""
        cfg, st = self.cfg, self.state
        t0 = time.perf_counter()
        record = self._train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        st.step += 1
        st.tokens += cfg.batch_tokens
        st.train_seconds += seconds
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                                  tok_s=f"{cfg.batch_tokens / seconds:,.0f}", refresh=False)
        return record, seconds

    def _log_step(self, record: dict[str, Any], tokens_per_s: float, t_start: float, do_eval: bool) -> None:
        st = self.state
        record = {"step": st.step, "tokens": st.tokens, **record, "tokens_per_s": tokens_per_s,
                  "epoch": round(self.loader.epoch, 4), "elapsed_s": round(time.perf_counter() - t_start, 2)}
        if self._peak_flops and self.flops_per_token:
            record["mfu"] = self.flops_per_token * tokens_per_s / (self._peak_flops * self.dist.world_size)
        if do_eval:
            record.update(self._evaluate())
        self._log_record(record)

    def _log_record(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(record)
        if self.dist.is_main and (self._bar is None or record["step"] % self.cfg.log_every == 0):
            msg = (f"step {record['step']}/{self.cfg.max_steps} loss {record['train_loss']:.4f} "
                   f"lr {record['lr']:.2e} gnorm {record['grad_norm']:.3f} "
                   f"{record['tokens_per_s']:,.0f} tok/s")
            if "mfu" in record:
                msg += f" mfu {100 * record['mfu']:.1f}%"
            if "expert_imbalance" in record:
                msg += f" moe max/mean {record['expert_imbalance']:.2f}"
            if self._bar is None:
                log.info(msg)
            else:
                for h in logging.getLogger("seekforge").handlers:
                    if isinstance(h, logging.FileHandler):
                        h.emit(logging.LogRecord("seekforge.train", logging.INFO, "", 0, msg, None, None))

    def _log_plan(self, resume_from: Path | None) -> None:
        if not self.dist.is_main:
            return
        cfg = self.cfg
        lines = self.objective.describe(self.raw_model)
        lines.append(f"batch: {cfg.batch_tokens:,} tokens/step = micro_batch_size {cfg.micro_batch_size} x "
                     f"seq_len {cfg.seq_len} x world_size {self.dist.world_size} x grad_accum "
                     f"{self.grad_accum}; "
                     f"{cfg.max_steps} steps = {cfg.max_steps * cfg.batch_tokens:,} tokens")
        lines.append(f"device {self.device}, autocast {str(self.amp_dtype).replace('torch.', '')}, "
                     f"compile {self.compile}, activation_checkpointing {cfg.activation_checkpointing}, "
                     f"optimizer {cfg.optimizer}, schedule {cfg.schedule}"
                     + (f", {cfg.distributed} x {self.dist.world_size}" if self.dist.enabled else ""))
        resuming = f" (resuming from {resume_from.name})" if resume_from else ""
        lines.append(f"out_dir {self.out_dir}{resuming}")
        for line in lines:
            log.info(line)

    def _finish(self, stopped: str, t_start: float) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        latest = self.out_dir / ckpt.step_dir_name(st.step)
        summary = {
            "step": st.step, "tokens": st.tokens, "stopped": stopped, **st.last_eval,
            "best_val_bpb": None if math.isinf(st.best_val_bpb) else st.best_val_bpb,
            "best_step": st.best_step, "best_checkpoint": str(self._best_checkpoint() or "") or None,
            "skipped_steps": st.skipped_steps, "train_seconds": round(st.train_seconds, 3),
            "wall_seconds": round(time.perf_counter() - t_start, 3),
            "tokens_per_s": st.tokens / st.train_seconds if st.train_seconds else None,
            "checkpoint": str(latest), "world_size": self.dist.world_size,
        }
        if self.dist.is_main:
            from seekforge.train.metrics import read_metrics

            records = read_metrics(self.out_dir / "metrics.jsonl")
            mfus = [r["mfu"] for r in records if isinstance(r.get("mfu"), float)]
            if mfus:
                summary["mfu"] = sorted(mfus)[len(mfus) // 2]  # median: robust to the warm-up step
            import json

            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            if cfg.plot:
                try:
                    plot_loss_curve(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png",
                                    title=self.out_dir.name)
                except Exception as e:  # a plot must never fail a finished run
                    log.warning("could not draw loss.png: %s", e)
            evals = ", ".join(f"{k} {v:.4f}" for k, v in st.last_eval.items() if isinstance(v, float))
            log.info("done (%s): step %d, %s tokens, %s; checkpoint %s", stopped, st.step, f"{st.tokens:,}",
                     evals or "no eval", latest)
        if self._signal is not None:
            summary["signal"] = self._signal
        return summary


def _imbalance(loads: torch.Tensor) -> dict[str, float]:
    """MoE expert-load imbalance: max/mean tokens per expert, worst layer and mean over layers."""
    rows = loads[loads.sum(dim=1) > 0]
    if rows.numel() == 0:
        return {}
    ratio = rows.max(dim=1).values / rows.mean(dim=1)
    return {"expert_imbalance": float(ratio.max()), "expert_imbalance_mean": float(ratio.mean())}


def train(cfg: TrainConfig, objective: Objective | None = None) -> dict[str, Any]:
    """Convenience wrapper: ``Trainer(cfg, objective).run()``."""
    return Trainer(cfg, objective).run()


__all__ = ["Trainer", "TrainState", "TrainingError", "train", "enable_activation_checkpointing"]
