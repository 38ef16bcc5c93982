"""``seekforge distill``: teach a student what a teacher does, on the one trainer loop.

Two recipes (``mode``):

* ``logits`` - logit distillation on the SFT data: ``alpha*CE + (1-alpha)*T^2*KL(p_T || q_T)``
  (:mod:`.losses`). The teacher runs online (full distribution), or with ``teacher_topk: k``
  its top-k logits over the whole training set are computed once and cached on disk
  (``teacher_cache``), then reused by every step, epoch and later run with the same data.
  Teacher and student must share the tokenizer; that is checked before anything loads.
* ``generate`` - sequence-level distillation, the DeepSeek-R1 recipe: the teacher answers every
  prompt of the data (a local seekforge model through :mod:`seekforge.infer`'s engine, or any
  OpenAI-compatible endpoint via ``teacher_api``, called through :mod:`seekforge.llm_client`, which
  writes ``OUT/report.json``), the answers become an SFT set (``OUT/teacher_data.jsonl``,
  OpenAI messages), and the student is fine-tuned on it. Tokenizers may differ here.

Both report teacher-student agreement - top-1 match and KL(teacher || student) at T=1 over the
trained positions of held-out (or the first) examples - before training and at every eval, and
write ``OUT/distill_report.json``. (Needs a local teacher with the student's tokenizer.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from seekforge.config import ConfigError, to_dict
from seekforge.finetune.encode import collate, single_rows
from seekforge.finetune.losses import agreement_stats, kl_full, kl_topk, shift_mask
from seekforge.finetune.methods import is_v4, load_base, unwrap
from seekforge.finetune.sft import SFTConfig, SFTObjective, model_dtype, model_forward
from seekforge.train.objective import LossOutput, autocast
from seekforge.utils import atomic_write_text

log = logging.getLogger("seekforge.finetune")


@dataclass
class DistillConfig(SFTConfig):
    mode: Literal["logits", "generate"] = "logits"
    teacher: str | None = None  # local teacher model dir (seekforge, or HF for mode=logits)
    teacher_api: str | None = None  # mode=generate: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    teacher_model: str | None = None  # model id at teacher_api (default: the first one it lists)
    teacher_api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the endpoint's key
    alpha: float = 0.5  # weight of the hard-label CE; 1 - alpha goes to the KL term
    temperature: float = 2.0
    teacher_topk: int = 0  # 0: online teacher, full distribution; k > 0: cached top-k logits
    teacher_cache: str | None = None  # default OUT/teacher_topk
    gen_max_tokens: int = 256
    gen_temperature: float = 0.6  # DeepSeek-R1's recommendation for sampling its traces
    gen_top_p: float = 0.95
    gen_concurrency: int = 8  # engine batch / parallel API requests
    gen_keep_truncated: bool = False  # keep answers cut at gen_max_tokens
    agreement_examples: int = 64
    method: Literal["full", "freeze", "lora", "qlora", "prefix"] = "full"
    out_dir: str = "runs/distill"

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha: must be in [0, 1] (got {self.alpha})")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0 (got {self.temperature})")
        if self.teacher_topk < 0:
            raise ConfigError(f"teacher_topk: must be >= 0 (got {self.teacher_topk})")
        if self.mode == "logits" and not self.teacher:
            raise ConfigError("teacher: required for mode=logits (a local model directory)")
        if self.mode == "generate" and not (self.teacher or self.teacher_api):
            raise ConfigError(
                "mode=generate needs `teacher` (a local seekforge model) or `teacher_api` "
                "(an OpenAI-compatible endpoint)"
            )
        if self.teacher and self.teacher_api:
            raise ConfigError("set either `teacher` or `teacher_api`, not both")


# ---------------------------------------------------------------------------------------------
# Shared tokenizer check


def check_same_tokenizer(student_tok, teacher_tok, student: str, teacher: str) -> None:
    """Logit distillation compares distributions token id by token id: the vocabularies must match."""
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv == tv:
        return
    diff = sorted(set(sv.items()) ^ set(tv.items()), key=lambda kv: kv[1])[:3]
    raise ConfigError(
        f"teacher {teacher} and student {student} do not share a tokenizer ({len(tv)} vs {len(sv)} "
        f"tokens; e.g. differing entries {diff}). Logit distillation needs one vocabulary: use "
        "mode=generate (sequence-level distillation works across tokenizers)"
    )


# ---------------------------------------------------------------------------------------------
# Logit distillation objective


class DistillObjective(SFTObjective):
    """SFT data and student + a frozen teacher; loss = alpha*CE + (1-alpha)*T^2*KL."""

    name = "distill"
    loader_row_index = True

    def setup(self, env) -> None:
        from seekforge.tokenizer import load_tokenizer

        super().setup(env)
        cfg: DistillConfig = self.cfg  # type: ignore[assignment]
        self.teacher_tok = load_tokenizer(cfg.teacher)
        check_same_tokenizer(self.tokenizer, self.teacher_tok, cfg.model, cfg.teacher)
        self.agreement_before: dict[str, float] | None = None
        self.agreement_after: dict[str, float] | None = None
        self.topk: dict[str, torch.Tensor] | None = None

    def build_model(self) -> nn.Module:
        cfg: DistillConfig = self.cfg  # type: ignore[assignment]
        student = super().build_model()
        teacher, self.teacher_kind = load_base(
            cfg.teacher, device=self.env.device, dtype=model_dtype(cfg, self.env.device, "lora")
        )
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        self.vocab = min(unwrap(teacher).config.vocab_size, unwrap(student).config.vocab_size)
        if self.teacher_kind == "seekforge":  # V3/V2 take segment ids; V4 has no segment mask
            teacher_packs = not is_v4(unwrap(teacher))
        else:
            teacher_packs = self._hf_packing(teacher)
        self.teacher_packed = self.packed and teacher_packs
        if not self.teacher_packed:
            self.packed = False  # both models must see the same rows
        n = min(cfg.agreement_examples, len(self.val_encoded) or len(self.train_encoded))
        self.agree_rows = single_rows((self.val_encoded or self.train_encoded)[:n])
        self.agreement_before = self.agreement(student)
        log.info(
            "teacher-student agreement before: top-1 %.3f, KL %.4f over %d positions",
            self.agreement_before["agree_top1"],
            self.agreement_before["agree_kl"],
            self.agreement_before["agree_positions"],
        )
        return student

    def _hf_packing(self, model: nn.Module) -> bool:
        from seekforge.finetune.methods import honours_packing

        return honours_packing(model)

    # -- teacher signal -------------------------------------------------------------------------
    def train_loader(self, micro_batch_size: int, grad_accum: int):
        loader = super().train_loader(micro_batch_size, grad_accum)
        cfg: DistillConfig = self.cfg  # type: ignore[assignment]
        if cfg.alpha < 1.0 and cfg.teacher_topk > 0:
            self.topk = self._topk_cache(loader.rows)
        return loader

    def _cache_path(self, rows) -> Path:
        cfg: DistillConfig = self.cfg  # type: ignore[assignment]
        h = hashlib.sha256()
        h.update(str(Path(cfg.teacher).resolve()).encode())
        for f in sorted(Path(cfg.teacher).glob("*.safetensors")):
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(f"{cfg.teacher_topk}|{self.packed}".encode())
        for r in rows:
            h.update(torch.tensor(r.input_ids).numpy().tobytes())
            h.update(torch.tensor(r.labels).numpy().tobytes())
        root = Path(cfg.teacher_cache) if cfg.teacher_cache else Path(cfg.out_dir) / "teacher_topk"
        return root / f"topk{cfg.teacher_topk}-{h.hexdigest()[:16]}.safetensors"

    @torch.no_grad()
    def _topk_cache(self, rows) -> dict[str, torch.Tensor]:
        """Top-k teacher logits at every trained position of every row, computed once, on disk."""
        from safetensors.torch import load_file, save_file

        from seekforge.train import dist

        path = self._cache_path(rows)
        k = self.cfg.teacher_topk  # type: ignore[attr-defined]
        if self.env.rank == 0 and not path.exists():
            t0 = time.perf_counter()
            ids, vals, offsets = [], [], [0]
            for r in rows:
                batch = {
                    key: v.to(self.env.device) for key, v in collate([r], self.tokenizer.pad_token_id).items()
                }
                logits = self._teacher_logits(batch)
                mask = shift_mask(batch["labels"], batch["segment_ids"] if self.packed else None)
                top = logits[mask].float().topk(k, dim=-1)
                ids.append(top.indices.to(torch.int32).cpu())
                vals.append(top.values.to(torch.float16).cpu())
                offsets.append(offsets[-1] + int(mask.sum()))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file(
                {"ids": torch.cat(ids), "logits": torch.cat(vals), "offsets": torch.tensor(offsets)}, str(tmp)
            )
            os.replace(tmp, path)
            log.info(
                "cached teacher top-%d logits for %d positions in %.1fs: %s (%.1f MB)",
                k,
                offsets[-1],
                time.perf_counter() - t0,
                path,
                path.stat().st_size / 1e6,
            )
        elif self.env.rank == 0:
            log.info("reusing cached teacher top-%d logits %s", k, path)
        dist.barrier()
        return load_file(str(path))

    def _teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(self.env):
            return model_forward(self.teacher, batch, self.packed, with_labels=False).logits[
                ..., : self.vocab
            ]

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        cfg: DistillConfig = self.cfg  # type: ignore[assignment]
        out = model_forward(model, batch, self.packed)
        mask = shift_mask(batch["labels"], batch["segment_ids"] if self.packed else None)
        s = out.logits[..., : self.vocab][mask]
        targets = torch.roll(batch["labels"], -1, dims=1)[mask]
        ce = F.cross_entropy(s.float(), targets) if s.shape[0] else s.sum() * 0
        parts = {**{k: v for k, v in out.losses.items() if k != "main"}, "main": ce.detach()}
        if cfg.alpha >= 1.0:
            return LossOutput(out.loss, parts, out.expert_loads)
        if self.topk is not None:
            kl = self._kl_from_cache(s, batch["row_index"])
        else:
            with torch.no_grad():
                t = self._teacher_logits(batch)[mask]
            kl = kl_full(s, t, cfg.temperature)
        kl_mean = kl.mean() if kl.numel() else s.sum() * 0
        # out.loss = CE (+ MTP + balance for seekforge): swap its CE for alpha*CE + (1-alpha)*T^2*KL.
        total = out.loss + (cfg.alpha - 1.0) * ce + (1.0 - cfg.alpha) * cfg.temperature**2 * kl_mean
        parts["kl"] = kl_mean.detach()
        return LossOutput(total, parts, out.expert_loads)

    def _kl_from_cache(self, s: torch.Tensor, row_index: torch.Tensor) -> torch.Tensor:
        cache = self.topk
        off = cache["offsets"]
        spans = [(int(off[i]), int(off[i + 1])) for i in row_index.tolist()]
        ids = torch.cat([cache["ids"][a:b] for a, b in spans]).to(s.device)
        vals = torch.cat([cache["logits"][a:b] for a, b in spans]).to(s.device)
        if ids.shape[0] != s.shape[0]:
            raise RuntimeError(
                f"teacher cache has {ids.shape[0]} positions for this batch, the student {s.shape[0]}"
                " (stale cache? delete it)"
            )
        return kl_topk(s, ids, vals, self.cfg.temperature)  # type: ignore[attr-defined]

    # -- agreement --------------------------------------------------------------------------------
    @torch.no_grad()
    def agreement(self, student: nn.Module) -> dict[str, float]:
        was_training = student.training
        student.eval()
        match, kl, n = 0, 0.0, 0
        bs = self.cfg.eval_batch_size or self.cfg.micro_batch_size
        for i in range(0, len(self.agree_rows), bs):
            batch = {
                k: v.to(self.env.device)
                for k, v in collate(self.agree_rows[i : i + bs], self.tokenizer.pad_token_id).items()
            }
            mask = shift_mask(batch["labels"])
            with autocast(self.env):
                s = model_forward(student, batch, False, with_labels=False).logits[..., : self.vocab][mask]
                t = model_forward(self.teacher, batch, False, with_labels=False).logits[..., : self.vocab][
                    mask
                ]
            m, k, c = agreement_stats(s, t)
            match, kl, n = match + m, kl + k, n + c
        student.train(was_training)
        return {"agree_top1": match / max(n, 1), "agree_kl": kl / max(n, 1), "agree_positions": n}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        res = super().evaluate(model)
        self.agreement_after = self.agreement(model)  # every rank: FSDP forwards are collective
        res.update({k: float(v) for k, v in self.agreement_after.items() if k != "agree_positions"})
        return res


# ---------------------------------------------------------------------------------------------
# Sequence-level distillation: teacher answers -> SFT data


def prompts_of(examples) -> list[list[dict[str, str]]]:
    """Each chat without its final answer (what the teacher must answer)."""
    out = []
    for ex in examples:
        if ex.is_text:
            raise ConfigError("mode=generate needs chat/instruction data (prompts to answer), not plain text")
        msgs = ex.messages[:-1] if ex.messages and ex.messages[-1]["role"] == "assistant" else ex.messages
        out.append([dict(m) for m in msgs])
    return out


def generate_local(
    cfg: DistillConfig, prompts: list[list[dict[str, str]]], device: torch.device
) -> list[tuple[str, str]]:
    """(answer, finish_reason) per prompt from a local seekforge teacher, through the engine."""
    from seekforge.infer import Engine, EngineConfig
    from seekforge.tokenizer import load_tokenizer

    model, kind = load_base(cfg.teacher, device=device, dtype=model_dtype(cfg, device, "lora"))
    if kind != "seekforge":
        raise ConfigError(
            f"teacher {cfg.teacher}: local teachers for mode=generate run on seekforge's engine, "
            "which serves seekforge (DeepSeek-V4/V3) models. Serve this model with any "
            "OpenAI-compatible server (vLLM, llama.cpp, ...) and set teacher_api instead"
        )
    tok = load_tokenizer(cfg.teacher)
    ids = [
        tok(tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
        for p in prompts
    ]
    # Size the latent cache for these prompts, not for the model's full context (163k for V3).
    max_len = min(
        max(len(i) for i in ids) + cfg.gen_max_tokens + 1, unwrap(model).config.max_position_embeddings
    )
    engine = Engine(model.eval(), tok, EngineConfig(max_batch=cfg.gen_concurrency, max_len=max_len))
    try:
        params = [_sampling(cfg, i) for i in range(len(prompts))]
        done = engine.generate(ids, params)
    finally:
        engine.close()
    return [(c.text, c.finish_reason) for c in done]


def _sampling(cfg: DistillConfig, i: int):
    from seekforge.infer import SamplingParams

    return SamplingParams(
        max_tokens=cfg.gen_max_tokens,
        temperature=cfg.gen_temperature,
        top_p=cfg.gen_top_p if cfg.gen_temperature > 0 else 1.0,
        seed=cfg.seed + i,
    )


def generate_api(cfg: DistillConfig, prompts: list[list[dict[str, str]]]) -> list[tuple[str, str] | None]:
    """(answer, finish_reason) per prompt from an OpenAI-compatible endpoint, None where the request
    failed for good. Goes through :class:`seekforge.llm_client.LLMClient` (preflight, retries,
    ``gen_concurrency`` requests in flight, a response cache in ``OUT/teacher_responses`` so a re-run with
    other generation settings only pays for new requests); its numbers go to ``OUT/report.json``."""
    from seekforge.llm_client import EndpointConfig, LLMClient

    endpoint = EndpointConfig(
        endpoint=cfg.teacher_api,
        model=cfg.teacher_model,
        api_key=os.environ.get(cfg.teacher_api_key_env) or None,
        concurrency=cfg.gen_concurrency,
        timeout_s=600,
        cache=str(Path(cfg.out_dir) / "teacher_responses" / "responses.sqlite"),
    )
    with LLMClient(endpoint) as client:
        model = client.preflight()
        log.info("teacher: %s at %s", model, endpoint.base_url)
        requests = []
        for i, prompt in enumerate(prompts):
            params: dict[str, Any] = {
                "temperature": cfg.gen_temperature,
                "max_tokens": cfg.gen_max_tokens,
                "seed": cfg.seed + i,
            }
            if cfg.gen_temperature > 0:
                params["top_p"] = cfg.gen_top_p
            requests.append((prompt, params))
        answers = client.chat_many(requests)
        report = client.report()
    atomic_write_text(Path(cfg.out_dir) / "report.json",
                      json.dumps({"stage": "distill teacher answers", **report}, indent=2) + "\n")
    log.info("teacher requests: %s", client.progress_line())
    return [(a.text, a.finish_reason) if a is not None else None for a in answers]


def build_teacher_dataset(cfg: DistillConfig, device: torch.device) -> Path:
    """Ask the teacher; write ``OUT/teacher_data.jsonl`` (reused when prompts and teacher are unchanged)."""
    from seekforge.finetune.datasets import load_examples, resolve_datasets

    out = Path(cfg.out_dir) / "teacher_data.jsonl"
    specs = resolve_datasets(cfg.data, cfg.dataset_dir, cfg.format, cfg.columns, cfg.tags)
    examples, _ = load_examples(specs, cfg.template_vars, cfg.max_samples)
    prompts = prompts_of(examples)
    key = hashlib.sha256(
        json.dumps(
            [
                prompts,
                cfg.teacher and str(Path(cfg.teacher).resolve()),
                cfg.teacher_api,
                cfg.teacher_model,
                cfg.gen_max_tokens,
                cfg.gen_temperature,
                cfg.gen_top_p,
                cfg.seed,
            ],
            ensure_ascii=False,
        ).encode()
    ).hexdigest()[:16]
    meta = out.with_suffix(".meta.json")
    if out.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key:
        log.info("reusing teacher answers in %s", out)
        return out
    t0 = time.perf_counter()
    answers = generate_api(cfg, prompts) if cfg.teacher_api else generate_local(cfg, prompts, device)
    kept, cut, empty, failed = [], 0, 0, 0
    for p, answer in zip(prompts, answers):
        if answer is None:
            failed += 1
            continue
        text, reason = answer
        if not text.strip():
            empty += 1
            continue
        if reason == "length" and not cfg.gen_keep_truncated:
            cut += 1
            continue
        kept.append({"messages": p + [{"role": "assistant", "content": text}]})
    log.info(
        "teacher answered %d prompts in %.1fs: kept %d, dropped %d cut at gen_max_tokens, %d empty, "
        "%d failed requests",
        len(prompts),
        time.perf_counter() - t0,
        len(kept),
        cut,
        empty,
        failed,
    )
    if not kept:
        raise ConfigError(
            f"the teacher produced no usable answer ({failed} requests failed, {empty} empty, {cut} cut at "
            "gen_max_tokens; raise gen_max_tokens or set gen_keep_truncated: true)"
        )
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    atomic_write_text(
        meta,
        json.dumps(
            {"key": key, "prompts": len(prompts), "kept": len(kept), "cut": cut, "empty": empty,
             "failed": failed},
            indent=2,
        )
        + "\n",
    )
    return out


def _wait_for(path: Path, timeout: float = 24 * 3600) -> None:
    """Non-zero ranks wait for rank 0's teacher data (no process group exists yet)."""
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f}s for {path}")
        time.sleep(2)


def run_distillation(cfg: DistillConfig, runner) -> int:
    """``seekforge distill``: returns the exit code of the training run (see :mod:`.cli`)."""
    from seekforge.utils import resolve_device

    if cfg.mode == "generate":
        rank = int(os.environ.get("RANK", "0"))
        data_path = Path(cfg.out_dir) / "teacher_data.jsonl"
        if rank == 0:
            data_path = build_teacher_dataset(cfg, resolve_device(cfg.device))
        else:
            _wait_for(data_path.with_suffix(".meta.json"))
        # Then plain SFT on the teacher's answers (alpha = 1: CE only; a local teacher is kept only
        # to measure agreement when it shares the student's tokenizer).
        sft = replace(
            cfg,
            data=str(data_path),
            dataset_dir=None,
            format="openai",
            columns={},
            tags={},
            template_vars={},
            alpha=1.0,
        )
        if not cfg.teacher:
            return runner(
                SFTConfig(**{k: getattr(sft, k) for k in SFTConfig.__dataclass_fields__}), SFTObjective()
            )
        cfg = sft
        if not _shares_tokenizer(cfg):
            log.info(
                "teacher and student tokenizers differ: no agreement numbers (sequence-level distillation "
                "itself is fine)"
            )
            return runner(
                SFTConfig(**{k: getattr(cfg, k) for k in SFTConfig.__dataclass_fields__}), SFTObjective()
            )
    objective = DistillObjective()
    code = runner(cfg, objective)
    report = {
        "mode": cfg.mode,
        "teacher": cfg.teacher,
        "student": cfg.model,
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
        "teacher_topk": cfg.teacher_topk,
        "before": getattr(objective, "agreement_before", None),
        "after": getattr(objective, "agreement_after", None),
        "config": to_dict(cfg),
    }
    if int(os.environ.get("RANK", "0")) == 0 and report["before"] is not None:
        atomic_write_text(Path(cfg.out_dir) / "distill_report.json", json.dumps(report, indent=2) + "\n")
        b, a = report["before"], report["after"] or {}
        log.info(
            "agreement top-1 %.3f -> %s, KL %.4f -> %s",
            b["agree_top1"],
            f"{a['agree_top1']:.3f}" if a else "n/a",
            b["agree_kl"],
            f"{a['agree_kl']:.4f}" if a else "n/a",
        )
    return code


def _shares_tokenizer(cfg: DistillConfig) -> bool:
    from seekforge.tokenizer import load_tokenizer

    try:
        check_same_tokenizer(
            load_tokenizer(cfg.tokenizer or cfg.model), load_tokenizer(cfg.teacher), cfg.model, cfg.teacher
        )
    except ConfigError:
        return False
    return True


__all__ = [
    "DistillConfig",
    "DistillObjective",
    "run_distillation",
    "build_teacher_dataset",
    "check_same_tokenizer",
]
