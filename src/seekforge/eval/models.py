"""What `seekforge eval` evaluates: a local model directory (+ adapter) or an OpenAI-compatible endpoint.

:func:`open_model` returns an :class:`EvalModel`: the tokenizer-side rules (:class:`Tokens`), a
:class:`Scorer` for log-likelihoods and a ``generate`` function for generation tasks.

- seekforge directories (DeepSeek-V4/V3.2/V3/V2) load with ``seekforge.model.load_model`` (seekforge's
  own modules, DeepSeek-V4 included); scoring runs on the model's MLA cache (:class:`SeekforgeScorer`;
  for V4, whose compressed cache shares no prefix, one full forward per batch), generation through
  ``seekforge.infer.Engine``.
- any other ``transformers`` causal LM (Llama, Qwen, ...) loads with ``AutoModelForCausalLM``;
  scoring is :class:`TransformersScorer`, generation ``model.generate``.
- ``--adapter DIR``: a PEFT / seekforge adapter from ``seekforge sft``, applied with
  ``seekforge.finetune.adapters.load_adapter`` (LoRA merged into the weights).
- ``--endpoint URL``: scoring via ``/v1/completions`` (echo + logprobs), generation via
  ``/v1/chat/completions``, both through ``seekforge.llm_client`` (preflight, retries, budgets,
  optional cache, ``report.json``); the tokenizer comes from ``--tokenizer`` (or the model directory).

The context window is the model config's ``max_position_embeddings`` (``n_positions``/``n_ctx``
for other architectures), else 2048, as lm-eval resolves it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from seekforge.eval.scoring import (
    EndpointError,
    EndpointScorer,
    Scorer,
    Tokens,
    TransformersScorer,
    scorer_class,
)

if TYPE_CHECKING:
    from seekforge.llm_client import EndpointConfig, LLMClient

log = logging.getLogger("seekforge.eval")

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the config names no context length


@dataclass
class GenRequest:
    """One generation: chat ``messages`` (rendered with the chat template) or a plain ``prompt``."""

    prompt: str | None
    messages: list[dict[str, Any]] | None


@dataclass
class GenSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


class Generator(Protocol):
    def __call__(self, requests: list[GenRequest], settings: GenSettings) -> list[str]: ...


@dataclass
class EvalModel:
    name: str
    tokens: Tokens
    scorer: Scorer
    generate: Generator
    info: dict[str, Any]
    client: LLMClient | None = None  # the endpoint's client (its report is the run's report.json)

    def close(self) -> None:
        self.scorer.close()


def context_length(config: Any) -> int:
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None) if not isinstance(config, dict) else config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


def _is_chat_tokenizer(tokenizer: Any) -> bool:
    from seekforge.tokenizer.load import FALLBACK_CHAT_TEMPLATE

    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and template != FALLBACK_CHAT_TEMPLATE


def _prompt_ids(tokenizer: Any, req: GenRequest, use_chat: bool) -> list[int]:
    if req.messages is not None or use_chat:
        messages = req.messages if req.messages is not None else [{"role": "user", "content": req.prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)  # the template writes BOS itself
    return tokenizer.encode(req.prompt)


def open_model(
    model_dir: str | None,
    *,
    adapter: str | None = None,
    tokenizer_dir: str | None = None,
    endpoint: EndpointConfig | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 8,
    max_length: int | None = None,
    add_bos: bool | None = None,
) -> EvalModel:
    from seekforge.tokenizer import load_tokenizer

    if endpoint:
        tok_dir = tokenizer_dir or model_dir
        if not tok_dir:
            raise ValueError(
                "--endpoint needs a local tokenizer to count context tokens: pass --tokenizer DIR "
                "(the served model's tokenizer directory)"
            )
        tokenizer = load_tokenizer(tok_dir)
        cfg_file = Path(tok_dir) / "config.json"
        if max_length is None and cfg_file.is_file():
            import json

            max_length = context_length(json.loads(cfg_file.read_text(encoding="utf-8")))
        from seekforge.llm_client import LLMClient

        client = LLMClient(endpoint)
        try:
            name = client.preflight()  # unreachable, key refused, model not listed: fail before any work
        except BaseException:
            client.close()
            raise
        scorer = EndpointScorer(client, max_length or DEFAULT_MAX_LENGTH, batch_size)
        return EvalModel(
            name,
            Tokens(tokenizer, add_bos),
            scorer,
            _endpoint_generator(client),
            {"endpoint": client.cfg.base_url, "model": name, "max_length": scorer.window},
            client,
        )
    if not model_dir:
        raise ValueError("give a MODEL_DIR (or --endpoint URL)")
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    from seekforge.finetune.methods import base_kind
    from seekforge.utils import parse_dtype, resolve_device

    dev = resolve_device(device)
    dt = parse_dtype(dtype, dev)
    kind = base_kind(path)
    if adapter:
        from seekforge.finetune.adapters import read_adapter_config

        read_adapter_config(adapter)  # fail before the base loads
    # Load with one CPU thread, as Engine.from_pretrained does: a multi-threaded op here would start an
    # OpenMP pool on this thread while the generation engine's thread has its own, and two live pools
    # slow every parallel CPU op (docs/serve.md). Generation runs first, then scoring (runner.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if kind == "seekforge":
            from seekforge.model import load_model

            model = load_model(str(path), device=dev, dtype=dt)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dt).to(dev)
        if adapter:
            from seekforge.finetune.adapters import load_adapter

            model = load_adapter(model, adapter)
    finally:
        torch.set_num_threads(threads)
    if adapter and tokenizer_dir is None and (Path(adapter) / "tokenizer_config.json").is_file():
        tokenizer_dir = adapter  # the adapter's chat template is the one it was trained with
    tokenizer = load_tokenizer(tokenizer_dir or path)
    window = max_length or context_length(model.config)
    name = path.resolve().name + (f"+{Path(adapter).resolve().name}" if adapter else "")
    cls = scorer_class(model) if kind == "seekforge" else TransformersScorer
    scorer = cls(model, window, batch_size, name)
    gen = _engine_generator(model, tokenizer) if kind == "seekforge" else _hf_generator(model, tokenizer)
    info = {
        "path": str(path),
        "kind": kind,
        "adapter": adapter,
        "device": str(dev),
        "dtype": str(dt).replace("torch.", ""),
        "max_length": window,
    }
    return EvalModel(name, Tokens(tokenizer, add_bos), scorer, gen, info)


def _engine_generator(model: torch.nn.Module, tokenizer: Any) -> Generator:
    """Generation through seekforge's inference engine (continuous batching, MLA cache)."""

    def generate(requests: list[GenRequest], settings: GenSettings) -> list[str]:
        from seekforge.infer import Engine, EngineConfig
        from seekforge.infer.sampling import SamplingParams

        use_chat = _is_chat_tokenizer(tokenizer)
        prompts = [_prompt_ids(tokenizer, r, use_chat) for r in requests]
        params = [
            SamplingParams(
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                seed=settings.seed + i,
            )
            for i in range(len(prompts))
        ]
        with Engine(model, tokenizer, EngineConfig(max_batch=8)) as engine:
            return [c.text for c in engine.generate(prompts, params)]

    return generate


def _hf_generator(model: torch.nn.Module, tokenizer: Any) -> Generator:
    """Other transformers models: ``model.generate``, one prompt at a time (no padding questions)."""

    @torch.inference_mode()
    def generate(requests: list[GenRequest], settings: GenSettings) -> list[str]:
        use_chat = _is_chat_tokenizer(tokenizer)
        dev = next(model.parameters()).device
        out = []
        for i, r in enumerate(requests):
            ids = torch.tensor([_prompt_ids(tokenizer, r, use_chat)], device=dev)
            torch.manual_seed(settings.seed + i)
            kwargs: dict[str, Any] = {"do_sample": settings.temperature > 0}
            if settings.temperature > 0:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            res = model.generate(
                ids, max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs
            )
            out.append(tokenizer.decode(res[0, ids.shape[1] :], skip_special_tokens=True))
        return out

    return generate


def _endpoint_generator(client: LLMClient) -> Generator:
    """``/v1/chat/completions`` through the model client, ``concurrency`` requests in flight; a plain
    ``prompt`` becomes one user message. A request that fails for good fails the run: a generation
    metric over the answers that happened to come back would not be the metric asked for."""

    def generate(requests: list[GenRequest], settings: GenSettings) -> list[str]:
        batch = []
        for i, r in enumerate(requests):
            messages = r.messages if r.messages is not None else [{"role": "user", "content": r.prompt}]
            params = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                      "top_p": settings.top_p, "seed": settings.seed + i}
            batch.append((messages, params))
        answers = client.chat_many(batch)
        if failed := [i for i, a in enumerate(answers) if a is None]:
            raise EndpointError(
                f"{client.cfg.base_url}/chat/completions: {len(failed)} of {len(answers)} generation "
                f"requests failed after retries (first: request {failed[0]}); {client.progress_line()}"
            )
        return [a.text for a in answers if a is not None]

    return generate
