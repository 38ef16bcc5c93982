"""``seekforge serve MODEL_DIR``: the OpenAI-compatible server (FastAPI + uvicorn) and chat page."""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger("seekforge.serve")


def add_engine_args(p: argparse.ArgumentParser, model_optional: bool = False) -> None:
    """Engine flags shared by ``serve`` and ``chat`` (``serve`` may name its models with ``--model``)."""
    p.add_argument("model_dir", nargs="?" if model_optional else None,
                   help="a seekforge/HF DeepSeek-V3 model directory (with tokenizer files)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: MODEL_DIR)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together (cache slots)")
    p.add_argument("--max-len", type=int, default=None, help="context per request (default: the model's)")
    p.add_argument("--prefill-chunk", type=int, default=512, help="prompt tokens prefilled per engine step")
    p.add_argument("--speculative", action="store_true", help="draft 1 token with the MTP module")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step: 1.5-2.5x faster "
                   "bs=1 decode on CPU after compiling at start-up (20-50 s the first time, then cached)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the engine (default: all cores)")
    p.add_argument("--adapter", default=None, help="LoRA / MLA-prefix adapter dir from `seekforge sft` to "
                   "apply on MODEL_DIR (its tokenizer and chat template are used)")
    p.add_argument("--config", default=None, help="YAML file with EngineConfig keys (flags override it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an EngineConfig key, e.g. --set prefill_chunk=256")


def engine_config(args: argparse.Namespace, queue_size: int = 64):
    """Flags -> EngineConfig through the config system: defaults <- flags <- --config YAML <- --set."""
    from seekforge.config import load_config
    from seekforge.infer import EngineConfig

    flags = dict(max_batch=args.max_batch, max_len=args.max_len, queue_size=queue_size,
                 prefill_chunk=args.prefill_chunk, speculative=args.speculative, device=args.device,
                 dtype=args.dtype, compile=args.compile, threads=args.threads)
    return load_config(EngineConfig, getattr(args, "config", None), getattr(args, "overrides", []),
                       base=flags)


def load_engine(model_dir: str, cfg, adapter: str | None = None, tokenizer: str | None = None,
                name: str | None = None):
    """An Engine over ``model_dir`` (a plain or quantized checkpoint), optionally with an adapter on it."""
    from seekforge.infer import Engine

    if adapter:  # seekforge.finetune owns adapters; the engine only gets the transformed model
        from seekforge.finetune.adapters import adapter_engine_args

        return Engine.from_pretrained(model_dir, cfg, **adapter_engine_args(adapter, tokenizer), name=name)
    return Engine.from_pretrained(model_dir, cfg, tokenizer_dir=tokenizer, name=name)


def engine_from_args(args: argparse.Namespace, queue_size: int = 64):
    """The engine of ``chat`` / single-model ``serve`` flags."""
    return load_engine(args.model_dir, engine_config(args, queue_size), getattr(args, "adapter", None),
                       args.tokenizer, getattr(args, "model_name", None))


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from seekforge.serve import ServerOptions, create_app
    from seekforge.serve.opscli import ops_options, version_loader, version_specs

    keys = [k for k in (args.api_key or []) for k in k.split(",") if k]
    if not keys and os.environ.get("SEEKFORGE_API_KEY"):
        keys = [os.environ["SEEKFORGE_API_KEY"]]
    specs = version_specs(args)
    ops = ops_options(args, keys)  # flag errors before any model loads
    ops.loader = version_loader(args, args.queue_size)
    engines = {}
    try:
        for spec in specs:
            engines[spec.name] = ops.loader(spec)
        opts = ServerOptions(api_keys=keys, rate_limit=args.rate_limit, rate_burst=args.rate_burst, ops=ops)
        app = create_app(engines, opts)
        state = app.state.server
        for spec in specs:
            state.models[spec.name].spec = spec
        where = f"http://{args.host}:{args.port}"
        for name, m in state.models.items():
            log.info("version %s: %s (max_batch %d, context %d, queue %d)", name, m.spec.describe(),
                     m.engine.config.max_batch, m.engine.max_len, m.engine.config.queue_size)
        for route in state.ops.routes.values():
            log.info("route %s: %s", route.name, route.to_dict())
        log.info("serving %s at %s%s  — chat page: %s/", ", ".join(state.ops.public_names()), where,
                 " (API key required)" if keys else "", where)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if not args.verbose else "info",
                    timeout_keep_alive=args.keep_alive)
        state.ops.close()
        engines = {name: m.engine for name, m in state.models.items()}  # swapped/loaded ones included
    finally:
        for engine in engines.values():
            engine.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server + web chat page",
                       description="Serve one model (MODEL_DIR) or several versions (--model NAME=DIR) over "
                       "the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /tokenize, "
                       "/detokenize, /health, /ready, /metrics, /v1/feedback) with a chat page at /, "
                       "weighted routes, shadow traffic, canaries and an /admin/ API.")
    add_engine_args(p, model_optional=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to listen on all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="model id clients send (default: the directory name)")
    p.add_argument("--api-key", action="append", default=None,
                   help="required Bearer key (repeatable or comma-separated; env SEEKFORGE_API_KEY)")
    p.add_argument("--queue-size", type=int, default=64, help="waiting requests before answering 503")
    p.add_argument("--rate-limit", type=float, default=0.0, help="requests/minute per API key (0 = off)")
    p.add_argument("--rate-burst", type=int, default=10, help="requests allowed at once by the rate limit")
    from seekforge.serve.opscli import add_ops_args

    add_ops_args(p)
    p.set_defaults(func=run_serve)
