"""``seekforge grpo``: reinforcement learning with verifiable rewards (GRPO) on the one trainer.

DeepSeek-R1's recipe (DeepSeek-AI 2025, arXiv:2501.12948; GRPO from DeepSeekMath, Shao et al.
2024, arXiv:2402.03300), one optimizer step at a time:

1. **rollout** — ``prompts_per_step`` prompts of the task or the ``data`` files (:mod:`.rl_tasks`),
   each answered ``num_generations`` times by sampling, through seekforge's inference engine
   (:class:`seekforge.infer.Engine`: continuous batching over a latent KV cache). The engine runs
   on the very module being trained, so every rollout samples from the current weights with no
   reload or copy; it keeps no state derived from the weights between requests (LoRA layers are
   called like any other module; the decode step is not compiled here);
2. **reward** — each reward function (:mod:`.rewards`) scores every completion; the weighted sum
   is each completion's reward;
3. **advantage** — rewards normalised within each prompt's group: ``(r − mean_group) /
   (std_group + 1e-4)`` (``scale_rewards: group``; ``batch`` uses the whole step's std, ``none``
   does not divide, as in Dr. GRPO, Liu et al. 2025, arXiv:2503.20783);
4. **update** — the clipped policy-ratio loss of :func:`seekforge.finetune.policy_loss.policy_loss`
   on the completion tokens, with an optional KL to the reference (``beta``), and DAPO's options:
   token-level loss (``aggregation: dapo``) and clip-higher (``epsilon_high > epsilon_low``).
   ``num_iterations`` > 1 reuses a rollout for that many optimizer steps against the log-probs
   it was sampled with (then the ratio and its clipping matter).

The reference (``beta > 0``) is the starting model: for LoRA the same module with the adapter
switched off (no second copy), otherwise a frozen copy — as in :mod:`.dpo`.

Bad input: ``num_generations: 1`` is refused (a group of one has advantage 0: nothing is
learned); a reward function that raises, returns the wrong count or a NaN makes that step a
skipped step (counted in ``reward_failures``), and ``max_reward_failures`` failures in a row stop
the run with an error naming the function; a prompt that leaves no room for an answer within
``seq_len`` is an error naming both lengths.

    seekforge grpo configs/grpo_demo.yaml --set model=runs/sft/final
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn

from seekforge.config import ConfigError
from seekforge.finetune.encode import IGNORE
from seekforge.finetune.policy_loss import AGGREGATIONS, PolicyLossSettings, policy_loss
from seekforge.finetune.rewards import NamedReward, RewardError, call_reward
from seekforge.finetune.rl_tasks import TaskItem
from seekforge.finetune.sft import SFTConfig, SFTObjective, load_chat_tokenizer
from seekforge.train.config import DataConfig, TrainConfig
from seekforge.train.loader import EvalHooks
from seekforge.train.objective import LossOutput, Objective, TrainEnv, autocast, unwrap

log = logging.getLogger("seekforge.finetune")

SCALES = ("group", "batch", "none")


@dataclass
class GRPOConfig(SFTConfig):
    # --- task and rewards ----------------------------------------------------------------------
    task: str | None = None  # built-in: arithmetic | countdown; unset: arithmetic, or `data` when given
    task_options: dict[str, Any] = field(default_factory=dict)  # fields of the task (digits, ops ...)
    prompt_field: str = "prompt"  # data rows: the user message; the other fields go to the rewards
    system_prompt: str | None = None  # a system message before every prompt
    rewards: list[str] = field(default_factory=lambda: ["answer_match", "think_format"])
    reward_weights: list[float] = field(default_factory=list)  # empty: 1 each
    length_penalty_window: int | None = None  # length_penalty: tokens before the limit where it ramps
    max_reward_failures: int = 3  # consecutive failed reward calls before the run stops
    # --- rollouts ------------------------------------------------------------------------------
    prompts_per_step: int = 4
    num_generations: int = 8  # completions per prompt (the group)
    max_completion_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    rollout_batch: int = 64  # engine cache slots: completions decoded together
    # --- objective -----------------------------------------------------------------------------
    scale_rewards: Literal["group", "batch", "none"] = "group"
    aggregation: Literal["grpo", "bnpo", "dapo"] = "grpo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2  # DAPO's clip-higher: e.g. 0.28
    beta: float = 0.0  # KL(policy || reference) coefficient; 0 = no reference model
    kl_times_ratio: bool = False
    num_iterations: int = 1  # optimizer steps per rollout (mu in the GRPO paper)
    # --- trainer keys, GRPO-sized --------------------------------------------------------------
    data: str | list[str] = ""  # prompt files (.jsonl/.json/.parquet/.csv ...) instead of a task
    seq_len: int = 256  # context: prompt + completion
    batch_tokens: int = 0  # derived: prompts_per_step x num_generations x seq_len
    micro_batch_size: int = 8  # completions per forward/backward
    max_steps: int = 100
    lr: float = 1e-5
    warmup_steps: int = 0
    schedule: Literal["cosine", "wsd", "constant"] = "constant"
    eval_every: int = 0
    save_every: int = 50
    sample_tokens: int = 0
    out_dir: str = "runs/grpo"

    @property
    def prompt_source(self) -> str:
        """The task's name, or ``data`` for prompt files."""
        return self.task or ("data" if self.data else "arithmetic")

    @property
    def rows_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: required (a seekforge model dir, ideally SFT'd on the answer format), "
                              "e.g. --set model=runs/sft/final")
        if self.data and self.task:
            raise ConfigError(f"task: {self.task!r} and data: {self.data!r} are both set; the prompts come "
                              "from one of them (unset task to read the data files)")
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations: must be >= 2 (got {self.num_generations}). GRPO's advantage is a "
                "completion's reward minus the mean of its group; with one completion per prompt it is "
                "always 0 and nothing is learned")
        for name in ("prompts_per_step", "max_completion_tokens", "rollout_batch", "num_iterations",
                     "max_reward_failures"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1 (got {getattr(self, name)})")
        if self.max_reward_failures > self.max_bad_steps:
            raise ConfigError(f"max_reward_failures ({self.max_reward_failures}) must be <= max_bad_steps "
                              f"({self.max_bad_steps}): a failed reward call is a skipped step")
        if self.scale_rewards not in SCALES:
            raise ConfigError(f"scale_rewards: {self.scale_rewards!r} is not one of {', '.join(SCALES)}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation: {self.aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        if not 0.0 <= self.epsilon_low < 1.0 or self.epsilon_high < 0.0:
            raise ConfigError(f"epsilon_low must be in [0, 1) and epsilon_high >= 0 (got {self.epsilon_low}, "
                              f"{self.epsilon_high})")
        if self.beta < 0:
            raise ConfigError(f"beta: must be >= 0 (got {self.beta})")
        if self.method in ("prefix",):
            raise ConfigError("method: prefix is not available for grpo (the inference engine does not run "
                              "prefix adapters); use lora, qlora, freeze or full")
        if self.qat:
            raise ConfigError("qat: not available for grpo")
        if self.max_completion_tokens >= self.seq_len:
            raise ConfigError(f"max_completion_tokens ({self.max_completion_tokens}) must be < seq_len "
                              f"({self.seq_len}), the context that holds prompt + completion")
        if self.rows_per_step % self.micro_batch_size:
            raise ConfigError(f"micro_batch_size ({self.micro_batch_size}) must divide prompts_per_step x "
                              f"num_generations ({self.rows_per_step})")
        expected = self.rows_per_step * self.seq_len
        if self.batch_tokens not in (0, expected):
            raise ConfigError(f"batch_tokens: derived from prompts_per_step x num_generations x seq_len "
                              f"({expected}); leave it unset (got {self.batch_tokens})")
        self.batch_tokens = expected
        if self.lora.rank < 1:
            raise ConfigError(f"lora.rank: must be >= 1 (got {self.lora.rank})")
        if not 0.0 <= self.lora.dropout < 1.0:
            raise ConfigError(f"lora.dropout: must be in [0, 1) (got {self.lora.dropout})")
        shared = {f.name: getattr(self, f.name) for f in fields(TrainConfig) if f.name != "data"}
        TrainConfig(**shared, data=DataConfig(train="<grpo task>")).validate()

    def loss_settings(self) -> PolicyLossSettings:
        return PolicyLossSettings(self.aggregation, self.epsilon_low, self.epsilon_high, self.beta,
                                  self.kl_times_ratio)


# ---------------------------------------------------------------------------------------------
# Advantages and per-token log-probs


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """[N] rewards of N/group_size consecutive groups -> [N] advantages (see the module docstring).

    The std is the unbiased one, and 1e-4 keeps a group whose rewards are all equal at advantage 0
    (TRL's GRPOTrainer uses the same constants).
    """
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        raise ValueError(f"scale_rewards: {scale!r} is not one of {', '.join(SCALES)}")
    return centred / (std + 1e-4)


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] log-prob of each next token under ``logits`` [B, T, V] (0 where the label is IGNORE)."""
    targets = labels[:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != IGNORE)


def metric_name(reward_name: str) -> str:
    """``reward_<name>`` with every run of non-word characters as one underscore (TensorBoard tags)."""
    return "reward_" + re.sub(r"\W+", "_", reward_name).strip("_")


# ---------------------------------------------------------------------------------------------
# Rollouts


@dataclass
class Rollout:
    """One rollout round: ``prompts_per_step`` groups of ``num_generations`` completions."""

    items: list[TaskItem]
    prompt_ids: list[list[int]]  # per completion (each prompt repeated num_generations times)
    completion_ids: list[list[int]]
    completions: list[str]
    truncated: list[bool]  # stopped at max tokens (no EOS)


def collate_rows(prompt_ids: list[list[int]], completion_ids: list[list[int]],
                 pad_id: int) -> dict[str, torch.Tensor]:
    """prompt + completion per row, right-padded; labels on the completion tokens only."""
    T = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    ids = torch.full((len(prompt_ids), T), pad_id, dtype=torch.long)
    labels = torch.full((len(prompt_ids), T), IGNORE, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
    return {"input_ids": ids, "labels": labels}


class RolloutLoader(EvalHooks):
    """The trainer's loader for GRPO: each optimizer step's micro-batches come from a rollout.

    State = rollout rounds done (prompts are a function of the seed and the round) plus the
    reward-failure counters. A rollout is reused ``num_iterations`` times; a run resumed in the
    middle of those starts a fresh round (the cached completions are not checkpointed).
    """

    def __init__(self, objective: GRPOObjective) -> None:
        self.objective = objective
        self.rounds = 0
        self.failures = 0  # failed reward calls, over the run
        self.streak = 0  # in a row
        self._replay: list[dict[str, torch.Tensor]] | None = None
        self._replays_left = 0

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        if self._replay is not None and self._replays_left > 0:
            self._replays_left -= 1
            return self._replay
        cfg = self.objective.cfg
        index = self.rounds
        self.rounds += 1
        try:
            batches = self.objective.rollout_batches(index)
        except RewardError as e:
            return self._failed(e)
        self.streak = 0
        device = self.objective.env.device  # every tensor of a batch on the run's device (CUDA too)
        for b in batches:
            b["reward_failures"] = torch.tensor(float(self.failures), device=device)
        self._replay, self._replays_left = batches, cfg.num_iterations - 1
        return batches

    def _failed(self, error: RewardError) -> list[dict[str, torch.Tensor]]:
        from seekforge.train.trainer import TrainingError

        self.failures += 1
        self.streak += 1
        self._replay = None
        limit = self.objective.cfg.max_reward_failures
        log.warning("rollout %d: %s; step skipped (%d in a row, %d in total)", self.rounds, error,
                    self.streak, self.failures)
        if self.streak >= limit:
            raise TrainingError(f"{error}. It failed on {self.streak} rollouts in a row (max_reward_failures "
                                f"{limit}); fix the function {error.name!r} and re-run the command to resume")
        device = self.objective.env.device
        skip = {"skip": torch.tensor(1.0, device=device),
                "reward_failures": torch.tensor(float(self.failures), device=device)}
        return [dict(skip) for _ in range(self.objective.grad_accum)]

    @property
    def epoch(self) -> float:
        """Passes over the data files' prompts; 0 for a built-in task (endless: no epochs)."""
        rows = getattr(self.objective.task, "rows", None)
        return self.rounds * self.objective.cfg.prompts_per_step / len(rows) if rows else 0.0

    def state_dict(self) -> dict:
        return {"rounds": self.rounds, "failures": self.failures, "streak": self.streak,
                **self.identity()}

    def identity(self) -> dict[str, Any]:
        cfg = self.objective.cfg
        return {"seed": cfg.seed, "task": cfg.prompt_source, "prompts_per_step": cfg.prompts_per_step}

    def load_state_dict(self, state: dict) -> None:
        mine = self.identity()
        saved = {k: state.get(k) for k in mine}
        if saved != mine:
            raise ValueError(f"the checkpoint's rollouts were made with {saved}; this run has {mine}: "
                             "resuming would not continue the same prompts. Keep them equal, or start a new "
                             "out_dir")
        self.rounds, self.failures = int(state["rounds"]), int(state["failures"])
        self.streak = int(state["streak"])


# ---------------------------------------------------------------------------------------------
# The objective


class GRPOObjective(SFTObjective):
    """Task prompts -> engine rollouts -> rewards -> clipped policy-ratio loss."""

    name = "grpo"
    engine = None  # the rollout engine, started in train_loader

    def setup(self, env: TrainEnv) -> None:
        from seekforge.finetune.methods import base_kind
        from seekforge.finetune.rewards import resolve_rewards
        from seekforge.finetune.rl_tasks import load_prompt_rows, make_task

        Objective.setup(self, env)  # not SFTObjective.setup: that reads SFT examples
        cfg: GRPOConfig = env.cfg  # type: ignore[assignment]
        self.cfg, self.settings = cfg, cfg.loss_settings()
        if env.world_size > 1:
            raise ConfigError("grpo runs in one process (rollouts are not split over ranks yet); "
                              "run it without torchrun")
        self.kind = base_kind(cfg.model)
        if self.kind != "seekforge":
            raise ConfigError(f"model: {cfg.model} is a transformers model; grpo's rollouts run on "
                              "seekforge's engine, which serves seekforge (DeepSeek-V4/V3) models")
        try:
            if cfg.prompt_source == "data":
                self.task = load_prompt_rows(cfg.data, cfg.prompt_field)
            else:
                self.task = make_task(cfg.prompt_source, cfg.task_options)
            self.rewards: list[NamedReward] = resolve_rewards(cfg.rewards, cfg.reward_weights)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.tokenizer = load_chat_tokenizer(cfg)
        if cfg.prompt_source == "data":
            self._drop_long_prompts()
        else:
            self._check_prompt_lengths()
        # SFTObjective.build_model reads one encoded example (the LoRA target check's sample input).
        from seekforge.finetune.encode import Encoded

        first = self.prompt_ids(self.task.item(cfg.seed, 0))
        self.train_encoded = [Encoded(first, [IGNORE] * len(first), "task")]
        self.val_encoded = []
        self.packed = False
        self.ref_model: nn.Module | None = None
        self.grad_accum = cfg.rows_per_step // cfg.micro_batch_size

    def prompt_ids(self, item: TaskItem) -> list[int]:
        messages = [{"role": "user", "content": item.prompt}]
        if self.cfg.system_prompt:
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _drop_long_prompts(self) -> None:
        """Data rows whose prompt leaves no room for an answer within seq_len: counted and skipped."""
        cfg = self.cfg
        rows = self.task.rows
        keep = [r for r in rows if len(self.prompt_ids(r)) < cfg.seq_len]
        if not keep:
            raise ConfigError(f"data: none of the {len(rows)} prompts leaves room for an answer within "
                              f"seq_len {cfg.seq_len}; raise seq_len")
        if len(keep) < len(rows):
            log.warning("%d of %d prompts skipped: they leave no room for an answer within seq_len %d",
                        len(rows) - len(keep), len(rows), cfg.seq_len)
        self.task.rows = keep
        self.skipped_prompts = len(rows) - len(keep)

    def _check_prompt_lengths(self) -> None:
        cfg = self.cfg
        longest = max(len(self.prompt_ids(self.task.item(cfg.seed, i))) for i in range(32))
        if longest + 1 > cfg.seq_len:
            raise ConfigError(f"seq_len: the {cfg.prompt_source} prompts take up to {longest} tokens, which "
                              f"leaves no room for an answer within seq_len {cfg.seq_len}; raise seq_len")
        if longest + cfg.max_completion_tokens > cfg.seq_len:
            log.warning("completions will be cut at seq_len %d - prompt (up to %d tokens) instead of "
                        "max_completion_tokens %d", cfg.seq_len, longest, cfg.max_completion_tokens)

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = super().build_model()
        self.policy = model
        if self.cfg.beta > 0:
            self.load_reference(model)
        return model

    def start_engine(self, model: nn.Module):
        """The inference engine over ``model`` itself (its LoRA layers included): no copy of the weights."""
        from seekforge.finetune.methods import unwrap as unwrap_methods
        from seekforge.infer import Engine, EngineConfig

        module = unwrap_methods(unwrap(model))  # the seekforge model, adapters inside its linears
        was_training = module.training
        config = EngineConfig(max_batch=min(self.cfg.rollout_batch, self.cfg.rows_per_step),
                              max_len=self.cfg.seq_len, queue_size=self.cfg.rows_per_step, compile=False,
                              device=str(self.env.device))
        engine = Engine(module, self.tokenizer, config, name="grpo")  # Engine() puts the module in eval mode
        module.train(was_training)
        return engine

    def close(self) -> None:
        """Stop the engine's thread (the trainer has no teardown hook; the CLI and tests call this)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def train_loader(self, micro_batch_size: int, grad_accum: int):
        if grad_accum != self.grad_accum:
            raise ConfigError(f"grad_accum {grad_accum} != {self.grad_accum}")
        self.engine = self.start_engine(self.policy)
        cfg = self.cfg
        log.info("grpo: %d prompts x %d completions per step, %d micro-batches of %d; task %s; rewards %s",
                 cfg.prompts_per_step, cfg.num_generations, grad_accum, micro_batch_size, cfg.prompt_source,
                 ", ".join(f"{r.name} (x{r.weight:g})" for r in self.rewards))
        return RolloutLoader(self)

    # -- rollouts -------------------------------------------------------------------------------
    def sample(self, index: int) -> Rollout:
        """Round ``index``: its prompts, and ``num_generations`` sampled completions of each."""
        from seekforge.infer import SamplingParams

        cfg = self.cfg
        P = cfg.prompts_per_step
        items = [self.task.item(cfg.seed, index * P + j) for j in range(P)]
        prompts, params = [], []
        for j, item in enumerate(items):
            ids = self.prompt_ids(item)
            room = cfg.seq_len - len(ids)
            if room < 1:
                raise ConfigError(f"seq_len: a {cfg.prompt_source} prompt of {len(ids)} tokens leaves no "
                                  f"room for an answer within seq_len {cfg.seq_len}; raise seq_len")
            for g in range(cfg.num_generations):
                seed = (cfg.seed * 1_000_003 + index) * 4096 + j * cfg.num_generations + g
                prompts.append(ids)
                params.append(SamplingParams(max_tokens=min(cfg.max_completion_tokens, room),
                                             temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                             seed=seed % 2**63))
        module = self.engine.model
        was_training = module.training
        module.eval()  # no dropout while sampling
        try:
            done = self.engine.generate(prompts, params)
        finally:
            module.train(was_training)
        return Rollout(items, prompts, [c.token_ids for c in done], [c.text for c in done],
                       [c.finish_reason == "length" for c in done])

    def score(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total reward [N] and the round's reward metrics; raises RewardError."""
        cfg = self.cfg
        n = cfg.num_generations
        kwargs: dict[str, Any] = {
            "prompts": [it.prompt for it in rollout.items for _ in range(n)],
            "completions": rollout.completions,
            "completion_ids": rollout.completion_ids,
            "max_completion_tokens": cfg.max_completion_tokens,
            "length_penalty_window": cfg.length_penalty_window,
        }
        for key in rollout.items[0].columns:
            kwargs[key] = [it.columns.get(key) for it in rollout.items for _ in range(n)]
        N = len(rollout.completions)
        total = torch.zeros(N)
        metrics: dict[str, torch.Tensor] = {}
        for r in self.rewards:
            values = torch.tensor(call_reward(r, kwargs, N))
            total += r.weight * values
            metrics[metric_name(r.name)] = values.mean()
            metrics[metric_name(r.name) + "_std"] = values.std()
        grouped_std = total.view(-1, n).std(dim=1)
        lengths = torch.tensor([float(len(c)) for c in rollout.completion_ids])
        metrics.update(reward=total.mean(), reward_std=total.std(),
                       frac_reward_zero_std=(grouped_std < 1e-6).float().mean(),
                       completion_length=lengths.mean(), completion_length_max=lengths.max(),
                       frac_truncated=torch.tensor(rollout.truncated).float().mean())
        return total, metrics

    @torch.no_grad()
    def rollout_batches(self, index: int) -> list[dict[str, torch.Tensor]]:
        """Round ``index`` as the step's micro-batches (with old/reference log-probs when needed)."""
        cfg = self.cfg
        rollout = self.sample(index)
        rewards, metrics = self.score(rollout)
        advantages = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        mb = cfg.micro_batch_size
        batches = []
        for start in range(0, len(rewards), mb):
            rows = slice(start, start + mb)
            batch = collate_rows(rollout.prompt_ids[rows], rollout.completion_ids[rows],
                                 self.tokenizer.pad_token_id)
            batch["advantages"] = advantages[rows]
            batch = {k: v.to(self.env.device) for k, v in batch.items()}
            if cfg.num_iterations > 1:  # the log-probs the completions were sampled with
                batch["old_logps"] = self._logps(self.policy, batch)
            if cfg.beta > 0:
                module, ctx = self._reference_context(self.policy)
                with ctx:
                    batch["ref_logps"] = self._logps(module, batch)
            batch.update({k: v.to(self.env.device) for k, v in metrics.items()})
            batches.append(batch)
        return batches

    def _logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            with autocast(self.env):
                logits = model(batch["input_ids"]).logits
        finally:
            model.train(was_training)
        return token_logps(logits, batch["labels"])

    # -- loss -----------------------------------------------------------------------------------
    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        if "skip" in batch:
            return 1
        if self.settings.aggregation == "dapo":  # token-level: a micro-batch weighs by its tokens
            return int((batch["labels"][:, 1:] != IGNORE).sum())
        return batch["input_ids"].shape[0]  # a mean over sequences (grpo) or per micro-batch (bnpo)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        if "skip" in batch:  # a failed reward call: a non-finite loss makes the trainer skip the step
            nan = torch.full((), math.nan, device=self.env.device, requires_grad=True)
            return LossOutput(nan, metrics={"reward_failures": batch["reward_failures"]})
        out = model(batch["input_ids"])
        logps = token_logps(out.logits, batch["labels"])
        mask = batch["labels"][:, 1:] != IGNORE
        res = policy_loss(self.settings, logps, batch["advantages"], mask, batch.get("old_logps"),
                          batch.get("ref_logps"))
        skip = {"input_ids", "labels", "advantages", "old_logps", "ref_logps"}
        metrics = {k: v for k, v in batch.items() if k not in skip}
        metrics["clip_fraction"] = res.clipped
        if res.kl is not None:
            metrics["kl"] = res.kl
        return LossOutput(res.loss, expert_loads=getattr(out, "expert_loads", None), metrics=metrics)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}

    def describe(self, model: nn.Module) -> list[str]:
        cfg = self.cfg
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if cfg.beta == 0:
            ref = "none (beta 0)"
        else:
            ref = "frozen copy" if self.ref_model is not None else "base with the adapter disabled"
        return [f"grpo: base {cfg.model}, method {cfg.method}, {n_train:,} trainable parameters; task "
                f"{cfg.prompt_source}; {cfg.num_generations} completions per prompt "
                f"(<= {cfg.max_completion_tokens} tokens, temperature {cfg.temperature}); loss "
                f"{cfg.aggregation}, clip [{1 - cfg.epsilon_low:g}, {1 + cfg.epsilon_high:g}], beta "
                f"{cfg.beta}, reference: {ref}"]


__all__ = ["GRPOConfig", "GRPOObjective", "RolloutLoader", "group_advantages", "token_logps", "collate_rows"]
