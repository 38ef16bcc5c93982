"""``seekforge sft``: supervised fine-tuning as an objective of the one trainer loop.

:class:`SFTConfig` is :class:`~seekforge.train.config.TrainConfig` (every optimizer, schedule,
checkpoint, logging and distributed key means the same as in ``seekforge train``) with ``data``
redefined as chat data and the fine-tuning keys added. :class:`SFTObjective` supplies the data
(chat template, loss mask, packing), the base model with the method applied, the loss and the
save hook; :class:`seekforge.train.trainer.Trainer` does the rest (resume, eval, torchrun ...).

    seekforge sft configs/sft_identity.yaml --set template_vars.name=Forge --set max_steps=200
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from seekforge.config import ConfigError
from seekforge.finetune.encode import IGNORE, ChatEncoder, Encoded, Row, collate, pack, single_rows
from seekforge.finetune.methods import (
    ADAPTER_METHODS,
    FreezeSettings,
    LoraSettings,
    PrefixSettings,
    is_v4,
    load_base,
    unwrap,
)
from seekforge.train.config import DataConfig, TrainConfig
from seekforge.train.loader import StepLoader
from seekforge.train.objective import LossOutput, Objective, TrainEnv, autocast

log = logging.getLogger("seekforge.finetune")

SFT_PROMPTS = ["Who are you?", "你是谁？"]


@dataclass
class SFTConfig(TrainConfig):
    # --- what ----------------------------------------------------------------------------------
    model: str = ""  # base: a seekforge model dir, any local HF causal-LM dir, or a preset (tests)
    tokenizer: str | None = None  # default: the base model directory
    data: str | list[str] = ""  # file(s)/folder(s), or dataset names in dataset_dir/dataset_info.json
    dataset_dir: str | None = None  # where dataset_info.json and its files live
    format: Literal["auto", "alpaca", "sharegpt", "openai", "text"] = "auto"  # plain files only
    columns: dict[str, str] = field(default_factory=dict)  # plain files: logical -> actual column names
    tags: dict[str, str] = field(default_factory=dict)  # plain sharegpt/openai files: role names
    template_vars: dict[str, str] = field(default_factory=dict)  # fills {{name}}, {{author}} ...
    chat_template: str | None = None  # a Jinja file or string replacing the tokenizer's template
    train_on: Literal["assistant", "last", "all"] = "assistant"  # which tokens carry loss
    packing: bool | Literal["auto"] = "auto"  # auto: on where the attention keeps examples apart
    max_samples: int | None = None  # per dataset
    val_size: float = 0.0  # fraction of examples held out for val_loss (0 = none)
    out_dir: str = "runs/sft"
    # --- method --------------------------------------------------------------------------------
    method: Literal["full", "freeze", "lora", "qlora", "prefix"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze: FreezeSettings = field(default_factory=FreezeSettings)
    prefix: PrefixSettings = field(default_factory=PrefixSettings)
    # quantization-aware training (seekforge.compress.qat): int8 | int4 fake-quantized weights
    qat: str | None = None
    qat_group_size: int = 128  # int4: use the same --group-size when quantizing the result
    # --- SFT-sized defaults of the shared trainer keys -----------------------------------------
    seq_len: int = 1024  # max tokens per example / packed row (longer examples are truncated)
    batch_tokens: int = 8192
    micro_batch_size: int = 4
    max_steps: int = 300
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    eval_every: int = 100
    save_every: int = 100
    sample_prompts: list[str] = field(default_factory=lambda: list(SFT_PROMPTS))

    def validate(self) -> None:
        if not self.model:
            raise ConfigError(
                "model: required (a seekforge model dir or a local HF causal-LM dir), "
                "e.g. --set model=runs/pretrain/final"
            )
        if not self.data:
            raise ConfigError(
                "data: required (a .json/.jsonl/... file or a dataset name from dataset_info.json)"
            )
        if self.qat:
            from seekforge.compress.qat import parse_qat

            parse_qat(self.qat)
            if self.method not in ("full", "freeze"):
                raise ConfigError(f"qat: trains the base weights, so it needs method full or freeze "
                                  f"(got method={self.method})")
        if not 0.0 <= self.val_size < 1.0:
            raise ConfigError(f"val_size: must be in [0, 1) (got {self.val_size})")
        if self.lora.rank < 1:
            raise ConfigError(f"lora.rank: must be >= 1 (got {self.lora.rank})")
        if not 0.0 <= self.lora.dropout < 1.0:
            raise ConfigError(f"lora.dropout: must be in [0, 1) (got {self.lora.dropout})")
        # The shared keys are checked by TrainConfig's own rules (data is checked above instead).
        shared = {f.name: getattr(self, f.name) for f in fields(TrainConfig) if f.name != "data"}
        TrainConfig(**shared, data=DataConfig(train="<sft data>")).validate()


# ---------------------------------------------------------------------------------------------
# Data loader (the step arithmetic and resume state are StepLoader's, as for pretraining)


class SFTLoader(StepLoader):
    """Encoded rows, padded per micro-batch; state = global rows consumed.

    Row ``i`` of the endless stream is row ``perm_e[j]`` of epoch ``e`` (a seeded permutation per
    epoch), so resuming and changing the world size never repeat or skip rows. With
    ``with_row_index`` each batch also carries the stored rows' indices (``row_index``), by which
    distillation finds its cached teacher logits.
    """

    identity_hint = " (data, seq_len or packing changed)"

    def __init__(
        self,
        rows: list[Row],
        micro_batch_size: int,
        grad_accum: int,
        pad_id: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        with_row_index: bool = False,
    ) -> None:
        if not rows:
            raise ConfigError("no training rows")
        super().__init__(micro_batch_size, grad_accum, rank, world_size, device)
        self.rows, self.pad_id, self.seed, self.with_row_index = rows, pad_id, seed, with_row_index
        self._perm: tuple[int, list[int]] | None = None  # (epoch, its row order), the last one used

    def row_id(self, index: int) -> int:
        """Absolute stream index -> index into ``rows``."""
        epoch, j = divmod(index, len(self.rows))
        if self._perm is None or self._perm[0] != epoch:
            order = list(range(len(self.rows)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._perm = (epoch, order)
        return self._perm[1][j]

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids = [self.row_id(i) for i in indices]
        out = collate([self.rows[i] for i in ids], self.pad_id)
        if self.with_row_index:
            out["row_index"] = torch.tensor(ids)
        return out

    @property
    def epoch(self) -> float:
        return self.position / len(self.rows)

    def identity(self) -> dict[str, int]:
        return {"rows": len(self.rows), "seed": self.seed}


# ---------------------------------------------------------------------------------------------
# Shared pieces (also used by distillation)


def load_chat_tokenizer(cfg: SFTConfig):
    from seekforge.tokenizer import load_tokenizer

    tok_dir = cfg.tokenizer or cfg.model
    if not Path(tok_dir).is_dir():
        raise ConfigError(
            f"tokenizer: {tok_dir!r} is not a directory; set `tokenizer` when `model` is a preset"
        )
    tok = load_tokenizer(tok_dir)
    if cfg.chat_template:
        p = Path(cfg.chat_template)
        tok.chat_template = p.read_text(encoding="utf-8") if p.is_file() else cfg.chat_template
    return tok


def split_val(items: list, val_size: float, seed: int) -> tuple[list, list]:
    if val_size <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(val_size * len(items))))
    held = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def model_dtype(cfg: TrainConfig, device: torch.device, method: str) -> torch.dtype:
    """fp32 master weights (the trainer autocasts); a frozen base may sit in bf16 on CUDA."""
    if method in ADAPTER_METHODS and device.type == "cuda" and cfg.dtype in ("auto", "bfloat16"):
        return torch.bfloat16
    return torch.float32


def decide_packing(setting: bool | str, kind: str, method: str, model: nn.Module) -> bool:
    if kind == "hf" and method == "prefix":  # peft's prefix passes past_key_values: no packed masks
        if setting is True:
            raise ConfigError(
                "packing: not available for method=prefix on a transformers model (set packing: false)"
            )
        return False
    if kind == "seekforge" and is_v4(unwrap(model)):
        # V4's forward has no segment mask: its sliding window and compressed blocks would mix examples.
        if setting is True:
            raise ConfigError(
                "packing: not available for DeepSeek-V4 models (their sliding-window and compressed "
                "attention take no segment mask, so packed examples would see each other); set packing: false"
            )
        return False
    if kind == "seekforge":
        return setting in (True, "auto")
    if setting is False:
        return False
    from seekforge.finetune.methods import honours_packing

    ok = honours_packing(model)
    if not ok and setting is True:
        raise ConfigError(
            f"packing: {type(unwrap(model)).__name__} ignores packed position_ids (its attention "
            "would mix examples); set packing: false"
        )
    if not ok:
        log.info("packing off: %s does not keep packed examples apart", type(unwrap(model)).__name__)
    return ok


def model_forward(model: nn.Module, batch: dict[str, torch.Tensor], packed: bool, with_labels: bool = True):
    kwargs: dict[str, Any] = {}
    if packed:
        kwargs = {"segment_ids": batch["segment_ids"], "position_ids": batch["position_ids"]}
    return model(batch["input_ids"], labels=batch["labels"] if with_labels else None, **kwargs)


@torch.no_grad()
def greedy_chat(
    model: nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    device: torch.device,
    env: TrainEnv | None = None,
) -> str:
    """Greedy answer to one user message (a plain loop for training-time samples and tests)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids], device=device)
    stops = {tokenizer.eos_token_id}
    for name in ("<|eot|>", "<|im_end|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            stops.add(tid)
    new: list[int] = []
    for _ in range(max_new_tokens):
        ctx = autocast(env) if env is not None else torch.autocast(device.type, enabled=False)
        with ctx:
            nxt = int(model(x).logits[0, -1].argmax())
        if nxt in stops:
            break
        new.append(nxt)
        x = torch.cat([x, x.new_tensor([[nxt]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# The objective


class SFTObjective(Objective):
    """Chat data -> masked next-token loss on the chosen base and method."""

    name = "sft"
    loader_row_index = False  # batches carry the rows' indices (distillation's teacher cache)

    def setup(self, env: TrainEnv) -> None:
        from seekforge.finetune.datasets import load_examples, resolve_datasets
        from seekforge.finetune.methods import base_kind

        super().setup(env)
        cfg: SFTConfig = env.cfg  # type: ignore[assignment]
        self.cfg = cfg
        self.kind = base_kind(cfg.model)
        self.tokenizer = load_chat_tokenizer(cfg)
        specs = resolve_datasets(cfg.data, cfg.dataset_dir, cfg.format, cfg.columns, cfg.tags)
        examples, self.report = load_examples(specs, cfg.template_vars, cfg.max_samples)
        train_ex, val_ex = split_val(examples, cfg.val_size, cfg.seed)
        self.encoder = ChatEncoder(self.tokenizer, cfg.seq_len, cfg.train_on)
        self.train_encoded: list[Encoded] = self.encoder.encode_all(train_ex)
        self.val_encoded: list[Encoded] = (
            ChatEncoder(self.tokenizer, cfg.seq_len, cfg.train_on).encode_all(val_ex) if val_ex else []
        )
        if env.rank == 0:
            log.info(
                "first example (trained tokens in [[...]]):\n%s", self.encoder.preview(self.train_encoded[0])
            )
        self.packed = False

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from seekforge.finetune.methods import prepare

        cfg, env = self.cfg, self.env
        from seekforge.compress.quantize import is_seekforge_quantized

        # A `seekforge quantize` directory is already an int8/int4 base: LoRA over it is QLoRA on any
        # device (seekforge.compress.qlora), with no bitsandbytes re-quantization.
        prequantized = is_seekforge_quantized(cfg.model)
        if prequantized and (cfg.method not in ("lora", "qlora") or cfg.qat):
            raise ConfigError(f"model: {cfg.model} is a `seekforge quantize` output: its weights are frozen "
                              "int8/int4 codes, so only method=lora (or qlora) can train on it (got "
                              f"method={cfg.method}{', qat=' + cfg.qat if cfg.qat else ''}); fine-tune the "
                              "float model for full/freeze/QAT and quantize the result")
        model, kind = load_base(
            cfg.model,
            device=env.device,
            dtype=model_dtype(cfg, env.device, cfg.method),
            quantize_4bit=cfg.method == "qlora" and not prequantized,
        )
        base = unwrap(model)
        vocab = base.config.vocab_size
        if len(self.tokenizer) > vocab:
            raise ConfigError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocab_size is {vocab}: "
                "use the tokenizer the model was trained with"
            )
        if kind == "seekforge":
            v4_only = ("bias_update_speed",)  # V4 here has no MTP module and no auxiliary balance loss
            for key in ("mtp_loss_weight", "aux_loss_alpha", "bias_update_speed"):
                if getattr(cfg, key) is None:
                    continue
                if is_v4(base) and key not in v4_only:
                    if getattr(cfg, key):
                        raise ConfigError(f"{key}: DeepSeek-V4 models have no MTP module or auxiliary "
                                          f"balance loss in seekforge; remove {key} (or set it to 0)")
                    continue
                setattr(base.config, key, getattr(cfg, key))
        self.packed = decide_packing(cfg.packing, kind, cfg.method, model)
        sample = torch.tensor([self.train_encoded[0].input_ids], device=env.device)
        model = prepare(
            model, kind, cfg.method, lora=cfg.lora, freeze=cfg.freeze, prefix=cfg.prefix, sample_ids=sample
        )
        if cfg.qat:
            from seekforge.compress.qat import apply_qat, parse_qat

            if kind != "seekforge" or is_v4(base):
                raise ConfigError("qat: available for seekforge DeepSeek-V3/V2 base models only")
            apply_qat(base, parse_qat(cfg.qat), cfg.qat_group_size)
        from seekforge.train.objective import freeze_untrained_indexers

        # No fine-tuning loss reaches a lightning indexer (its top-k is discrete): frozen, as in
        # pretraining without a dsa_stage, or DDP waits for their gradients.
        if frozen := freeze_untrained_indexers(base, None):
            log.info("%d lightning-indexer tensors frozen: no loss of this run reaches them", frozen)
        if kind == "seekforge" and not is_v4(base) and base.config.num_nextn_predict_layers \
                and not base.config.mtp_loss_weight:
            # MTP modules get no gradient without their loss: freeze them, or DDP waits for their grads.
            for layer in base.mtp_layers:
                layer.requires_grad_(False)
        return model

    # -- the reference model of preference / RL objectives (dpo, grpo) ---------------------------
    def load_reference(self, model: nn.Module) -> None:
        """A frozen copy of the base as ``self.ref_model``, unless the policy is an adapter whose
        ``disable_adapter()`` gives the base without a second copy of the weights."""
        from seekforge.finetune.methods import load_base
        from seekforge.train.objective import unwrap as unwrap_dist

        self.ref_model = None
        if hasattr(unwrap_dist(model), "disable_adapter"):
            return
        cfg, env = self.cfg, self.env
        ref, _ = load_base(cfg.model, device=env.device, dtype=model_dtype(cfg, env.device, "lora"))
        self.ref_model = ref.eval().requires_grad_(False)

    def _reference_context(self, model: nn.Module):
        """(module, context) giving the reference model's forward."""
        from contextlib import nullcontext

        from seekforge.train.objective import unwrap as unwrap_dist

        if self.ref_model is not None:
            return self.ref_model, nullcontext()
        base = unwrap_dist(model)
        return base, base.disable_adapter()

    def train_loader(self, micro_batch_size: int, grad_accum: int):
        rows = pack(self.train_encoded, self.cfg.seq_len) if self.packed else single_rows(self.train_encoded)
        n_tok = sum(len(r) for r in rows)
        per_step = micro_batch_size * grad_accum * self.env.world_size
        log.info(
            "sft data: %d examples -> %d rows (%s), %d tokens, %d label tokens; one epoch = %.1f steps",
            len(self.train_encoded),
            len(rows),
            "packed" if self.packed else "one example per row",
            n_tok,
            self.encoder.stats.label_tokens,
            len(rows) / per_step,
        )
        return SFTLoader(
            rows,
            micro_batch_size,
            grad_accum,
            self.tokenizer.pad_token_id,
            self.cfg.seed,
            self.env.rank,
            self.env.world_size,
            self.env.device,
            with_row_index=self.loader_row_index,
        )

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        out = model_forward(model, batch, self.packed)
        return LossOutput(out.loss, dict(out.losses), out.expert_loads)

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean CE over the held-out examples' trained tokens (``val_size``)."""
        from seekforge.train import dist

        if not self.val_encoded:
            return {}
        env = self.env
        bs = self.cfg.eval_batch_size or self.cfg.micro_batch_size
        rows = single_rows(self.val_encoded)
        mine = rows[env.rank :: env.world_size]
        sums = torch.zeros(2, dtype=torch.float64, device=env.device)
        was_training = model.training
        model.eval()
        rounds = math.ceil(len(rows) / env.world_size / bs) if rows else 0
        for i in range(rounds):
            chunk = mine[i * bs : (i + 1) * bs] or rows[:1]
            batch = {k: v.to(env.device) for k, v in collate(chunk, self.tokenizer.pad_token_id).items()}
            if not mine[i * bs : (i + 1) * bs]:
                batch["labels"].fill_(IGNORE)  # keep forwards in step across ranks
            with autocast(env):
                logits = model_forward(model, batch, False, with_labels=False).logits
            targets = batch["labels"][:, 1:]
            sums[0] += torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            ).double()
            sums[1] += (targets != IGNORE).sum()
        model.train(was_training)
        dist.all_reduce_sum(sums)
        return {"val_loss": float(sums[0]) / max(int(sums[1]), 1), "val_tokens": int(sums[1])}

    def samples(self, model: nn.Module) -> list[tuple[str, str]]:
        cfg = self.cfg
        if not cfg.sample_tokens:
            return []
        was_training = model.training
        model.eval()
        try:
            return [
                (p, greedy_chat(model, self.tokenizer, p, cfg.sample_tokens, self.env.device, self.env))
                for p in cfg.sample_prompts
            ]
        finally:
            model.train(was_training)

    # -- saving ---------------------------------------------------------------------------------
    def save_model(self, model: nn.Module, path: Path) -> None:
        from seekforge.finetune.adapters import save_result
        from seekforge.train.objective import unwrap as unwrap_dist

        save_result(
            unwrap_dist(model),
            self.kind,
            self.cfg.method,
            path,
            tokenizer=self.tokenizer,
            base_path=self.cfg.model,
        )

    def load_model_weights(self, model: nn.Module, path: Path) -> None:
        from seekforge.finetune.adapters import load_trained_weights
        from seekforge.train.objective import unwrap as unwrap_dist

        load_trained_weights(unwrap_dist(model), self.kind, self.cfg.method, path)

    def describe(self, model: nn.Module) -> list[str]:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return [
            f"sft: base {self.cfg.model} ({self.kind}), method {self.cfg.method}, {n_train:,} trainable "
            f"parameters, {len(self.train_encoded)} train / {len(self.val_encoded)} val examples, "
            f"packing {'on' if self.packed else 'off'}"
        ]

    def flops_per_token(self, model: nn.Module) -> float | None:
        if self.kind != "seekforge":
            return None
        from seekforge.model.accounting import flops_per_token

        mc = unwrap(model).config
        if is_v4(unwrap(model)):
            from seekforge.model.v4_accounting import flops_per_token as v4_forward_flops

            return 3 * v4_forward_flops(mc, self.cfg.seq_len // 2)  # forward + backward, mean context
        return flops_per_token(
            mc, self.cfg.seq_len, include_mtp=mc.num_nextn_predict_layers > 0 and mc.mtp_loss_weight > 0
        )
