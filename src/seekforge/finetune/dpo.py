"""``seekforge dpo``: preference tuning (DPO, IPO, SimPO, ORPO) as an objective of the one trainer.

:class:`DPOConfig` is :class:`~seekforge.finetune.sft.SFTConfig` (base model, method, LoRA, data
registry, every trainer key) plus the preference keys (``loss``, ``beta``, ``label_smoothing``,
``simpo_gamma``, ``precompute_ref_logps``). :class:`DPOObjective` reads preference pairs
(:mod:`.pairs`), renders each answer after its prompt with the chat template (loss on the answer's
tokens only), and scores a micro-batch of B pairs as one forward of 2B rows (chosen, then
rejected); the pair loss is :func:`seekforge.finetune.preference.preference_loss`.

The reference model of DPO/IPO is the starting model, frozen: for LoRA/QLoRA/peft-prefix it is
the same module with the adapter switched off (peft's ``disable_adapter()``: no second copy in
memory), otherwise a frozen copy. With ``precompute_ref_logps`` its log-probs are computed once
for every pair before training and the copy is released. SimPO and ORPO need no reference.

    seekforge dpo configs/dpo_demo.yaml --set model=runs/sft/final --set loss=simpo
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from seekforge.config import ConfigError
from seekforge.finetune.datasets import Example
from seekforge.finetune.encode import IGNORE, ChatEncoder, Encoded, collate, single_rows
from seekforge.finetune.pairs import PreferencePair
from seekforge.finetune.preference import (
    LOSSES,
    REFERENCE_FREE,
    PreferenceSettings,
    preference_loss,
    reward_metrics,
    sequence_logps,
)
from seekforge.finetune.sft import (
    SFTConfig,
    SFTLoader,
    SFTObjective,
    load_chat_tokenizer,
    split_val,
)
from seekforge.train.objective import LossOutput, Objective, TrainEnv, autocast

log = logging.getLogger("seekforge.finetune")

METRIC_KEYS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy")


@dataclass
class DPOConfig(SFTConfig):
    loss: Literal["dpo", "ipo", "simpo", "orpo"] = "dpo"
    beta: float = 0.1  # DPO/IPO/SimPO temperature; ORPO: weight of the odds-ratio term
    label_smoothing: float = 0.0  # dpo/simpo: probability that a pair's preference is flipped
    simpo_gamma: float = 0.5  # simpo: target margin
    precompute_ref_logps: bool = False  # dpo/ipo: reference log-probs once before training
    packing: bool | Literal["auto"] = False  # pairs are never packed
    out_dir: str = "runs/dpo"
    lr: float = 5e-6
    max_steps: int = 200
    sample_prompts: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.beta <= 0:
            raise ConfigError(f"beta: must be > 0 (got {self.beta})")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing: must be in [0, 0.5) (got {self.label_smoothing})")
        if self.label_smoothing and self.loss not in ("dpo", "simpo"):
            raise ConfigError(f"label_smoothing: only dpo and simpo use it (loss is {self.loss})")
        if self.packing not in (False, "auto"):
            raise ConfigError("packing: preference pairs are never packed (set packing: false)")
        if self.train_on != "assistant":
            raise ConfigError("train_on: dpo scores the final answer only; leave train_on unset")
        if self.format == "text":
            raise ConfigError("format: 'text' has no preference pairs; use alpaca, sharegpt or openai")
        super().validate()

    def settings(self) -> PreferenceSettings:
        return PreferenceSettings(self.loss, self.beta, self.label_smoothing, self.simpo_gamma)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    ref_logps: tuple[float, float] | None = None  # precomputed reference (chosen, rejected)


@dataclass
class PairEncodeStats:
    pairs: int = 0
    prompt_too_long: int = 0  # skipped: no answer token fits in seq_len after the prompt
    truncated: int = 0  # kept with an answer cut at seq_len


def encode_pairs(
    encoder: ChatEncoder, pairs: list[PreferencePair]
) -> tuple[list[EncodedPair], PairEncodeStats]:
    """Chat-template both answers of every pair (labels on the answer only); skip or cut long ones."""
    stats = PairEncodeStats(pairs=len(pairs))
    out = []
    for p in pairs:
        before = encoder.stats.truncated
        chosen = encoder.encode(Example(p.chat(p.chosen), p.source))
        rejected = encoder.encode(Example(p.chat(p.rejected), p.source))
        if chosen is None or rejected is None:
            stats.prompt_too_long += 1
            continue
        stats.truncated += encoder.stats.truncated > before
        out.append(EncodedPair(chosen, rejected))
    if stats.prompt_too_long or stats.truncated:
        log.warning(
            "%d of %d pairs skipped: the prompt leaves no answer token within seq_len=%d; %d pairs had an "
            "answer truncated at seq_len (raise seq_len to keep them whole)",
            stats.prompt_too_long,
            stats.pairs,
            encoder.max_len,
            stats.truncated,
        )
    return out, stats


def pair_batch(pairs: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs -> 2B right-padded rows, chosen first, with each row's length (+ ``ref_logps`` [2B]
    when precomputed)."""
    rows = single_rows([p.chosen for p in pairs] + [p.rejected for p in pairs])
    batch = collate(rows, pad_id)
    lengths = torch.tensor([len(r) for r in rows])
    out = {"input_ids": batch["input_ids"], "labels": batch["labels"], "lengths": lengths}
    if all(p.ref_logps is not None for p in pairs):
        out["ref_logps"] = torch.tensor([p.ref_logps[0] for p in pairs] + [p.ref_logps[1] for p in pairs])
    return out


class PairLoader(SFTLoader):
    """SFTLoader's seeded, resumable order over pairs; a batch is :func:`pair_batch`."""

    identity_hint = " (data or seq_len changed)"

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return pair_batch([self.rows[self.row_id(i)] for i in indices], self.pad_id)


# ---------------------------------------------------------------------------------------------
# The objective


class DPOObjective(SFTObjective):
    """Preference pairs -> DPO/IPO/SimPO/ORPO on the chosen base and method."""

    name = "dpo"

    def setup(self, env: TrainEnv) -> None:
        from seekforge.finetune.datasets import resolve_datasets
        from seekforge.finetune.methods import base_kind
        from seekforge.finetune.pairs import load_pairs

        Objective.setup(self, env)  # not SFTObjective.setup: that reads SFT examples
        cfg: DPOConfig = env.cfg  # type: ignore[assignment]
        self.cfg, self.settings = cfg, cfg.settings()
        self.kind = base_kind(cfg.model)
        self.tokenizer = load_chat_tokenizer(cfg)
        specs = resolve_datasets(cfg.data, cfg.dataset_dir, cfg.format, cfg.columns, cfg.tags, ranking=True)
        pairs, self.report = load_pairs(specs, cfg.max_samples)
        train_pairs, val_pairs = split_val(pairs, cfg.val_size, cfg.seed)
        self.encoder = ChatEncoder(self.tokenizer, cfg.seq_len, "last")
        self.train_pairs, self.encode_stats = encode_pairs(self.encoder, train_pairs)
        self.val_pairs, _ = encode_pairs(ChatEncoder(self.tokenizer, cfg.seq_len, "last"), val_pairs)
        if not self.train_pairs:
            raise ConfigError(f"no preference pair fits seq_len={cfg.seq_len}: raise seq_len")
        self.train_encoded = [p.chosen for p in self.train_pairs]  # SFTObjective.build_model's sample
        self.val_encoded = []
        self.packed = False
        self.ref_model: nn.Module | None = None
        self.policy: nn.Module | None = None
        if env.rank == 0:
            log.info(
                "first chosen answer (scored tokens in [[...]]):\n%s",
                self.encoder.preview(self.train_encoded[0]),
            )

    @property
    def needs_reference(self) -> bool:
        return self.settings.loss not in REFERENCE_FREE

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = super().build_model()
        self.packed = False
        self.policy = model
        if self.needs_reference:
            self.load_reference(model)
        return model

    @torch.no_grad()
    def reference_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference model's summed log-probs of the batch's rows, [2B]."""
        if "ref_logps" in batch:
            return batch["ref_logps"].float()
        module, ctx = self._reference_context(model)
        with ctx:
            logits = module(batch["input_ids"]).logits
        return sequence_logps(logits, batch["labels"]).total

    def _precompute(self, pairs: list[EncodedPair]) -> None:
        """Reference log-probs of every pair, once (each rank does all pairs: equal forwards)."""
        bs = self.cfg.eval_batch_size or self.cfg.micro_batch_size
        for i in range(0, len(pairs), bs):
            chunk = pairs[i : i + bs]
            batch = {
                k: v.to(self.env.device) for k, v in pair_batch(chunk, self.tokenizer.pad_token_id).items()
            }
            with autocast(self.env):
                ref = self.reference_logps(self.policy, batch).tolist()
            for j, p in enumerate(chunk):
                p.ref_logps = (ref[j], ref[len(chunk) + j])

    def train_loader(self, micro_batch_size: int, grad_accum: int):
        cfg = self.cfg
        if self.needs_reference and cfg.precompute_ref_logps:
            self._precompute(self.train_pairs + self.val_pairs)
            self.ref_model = None  # the copy (if any) is no longer needed
            log.info(
                "precomputed reference log-probs of %d pairs", len(self.train_pairs) + len(self.val_pairs)
            )
        per_step = micro_batch_size * grad_accum * self.env.world_size
        log.info(
            "dpo data: %d train / %d val pairs (%d skipped: prompt too long, %d answers cut); "
            "one epoch = %.1f steps",
            len(self.train_pairs),
            len(self.val_pairs),
            self.encode_stats.prompt_too_long,
            self.encode_stats.truncated,
            len(self.train_pairs) / per_step,
        )
        return PairLoader(
            self.train_pairs,
            micro_batch_size,
            grad_accum,
            self.tokenizer.pad_token_id,
            cfg.seed,
            self.env.rank,
            self.env.world_size,
            self.env.device,
        )

    # -- loss -----------------------------------------------------------------------------------
    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2  # the loss is a mean over pairs

    def pair_output(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        out = model(batch["input_ids"])
        logps = sequence_logps(out.logits, batch["labels"])
        B = batch["input_ids"].shape[0] // 2
        chosen = type(logps)(logps.total[:B], logps.tokens[:B])
        rejected = type(logps)(logps.total[B:], logps.tokens[B:])
        ref_c = ref_r = chosen_rows = None
        if self.needs_reference:
            ref = self.reference_logps(model, batch)
            ref_c, ref_r = ref[:B], ref[B:]
        if self.settings.loss == "orpo":  # its NLL term scores every token of the chosen rows
            ids = batch["input_ids"][:B]
            positions = torch.arange(ids.shape[1], device=ids.device)
            every = ids.masked_fill(positions >= batch["lengths"][:B, None], IGNORE)
            chosen_rows = sequence_logps(out.logits[:B], every)
        return preference_loss(self.settings, chosen, rejected, ref_c, ref_r, chosen_rows), out

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        pref, out = self.pair_output(model, batch)
        parts = {"nll": pref.nll} if pref.nll is not None else {}
        return LossOutput(
            pref.loss, parts, expert_loads=getattr(out, "expert_loads", None), metrics=reward_metrics(pref)
        )

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean pair loss and reward metrics over the held-out pairs (``val_size``)."""
        from seekforge.train import dist

        if not self.val_pairs:
            return {}
        env = self.env
        bs = self.cfg.eval_batch_size or self.cfg.micro_batch_size
        mine = self.val_pairs[env.rank :: env.world_size]
        sums = torch.zeros(1 + len(METRIC_KEYS) + 1, dtype=torch.float64, device=env.device)
        was_training = model.training
        model.eval()
        rounds = math.ceil(len(self.val_pairs) / env.world_size / bs)
        for i in range(rounds):
            chunk = mine[i * bs : (i + 1) * bs]
            batch = pair_batch(chunk or self.val_pairs[:1], self.tokenizer.pad_token_id)
            batch = {k: v.to(env.device) for k, v in batch.items()}
            with autocast(env):  # every rank runs the same number of forwards (FSDP gathers inside)
                pref, _ = self.pair_output(model, batch)
            if not chunk:
                continue
            metrics = reward_metrics(pref)
            vals = [pref.loss] + [metrics[k] for k in METRIC_KEYS]
            sums[:-1] += torch.stack([v.double() for v in vals]) * len(chunk)
            sums[-1] += len(chunk)
        model.train(was_training)
        dist.all_reduce_sum(sums)
        n = max(float(sums[-1]), 1.0)
        res = {"val_loss": float(sums[0]) / n}
        res.update({f"val_{k}": float(sums[1 + j]) / n for j, k in enumerate(METRIC_KEYS)})
        return res

    def describe(self, model: nn.Module) -> list[str]:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        s = self.settings
        if not self.needs_reference:
            ref = "none (reference-free)"
        elif self.cfg.precompute_ref_logps:
            ref = "precomputed log-probs"
        else:
            ref = "frozen copy" if self.ref_model is not None else "base with the adapter disabled"
        return [
            f"dpo: loss {s.loss} (beta {s.beta}), base {self.cfg.model} ({self.kind}), method "
            f"{self.cfg.method}, {n_train:,} trainable parameters, {len(self.train_pairs)} train / "
            f"{len(self.val_pairs)} val pairs, reference: {ref}"
        ]
