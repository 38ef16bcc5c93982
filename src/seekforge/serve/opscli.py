"""The multi-version flags of ``seekforge serve`` (``--model``, ``--route``, ``--shadow``, ``--canary``,
``--admin-key``, logs) and turning them into engines plus :class:`~seekforge.serve.ops.OpsOptions`."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from seekforge.serve.canary import CanaryPolicy
from seekforge.serve.ops import OpsOptions
from seekforge.serve.routing import Shadow, VersionSpec, parse_route


def add_ops_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several versions (A/B, shadow, canary)")
    g.add_argument("--model", dest="versions", action="append", default=[], metavar="NAME=DIR[+ADAPTER]",
                   help="a model version, its own engine (repeatable): a model directory, a quantized one, "
                   "or BASE+ADAPTER for a LoRA/prefix adapter of `seekforge sft`")
    g.add_argument("--route", action="append", default=[], metavar="NAME=V1:90,V2:10",
                   help="a public name splitting traffic over versions by weight, sticky per user "
                   "(the request's `user`, else its API key); repeatable")
    g.add_argument("--shadow", action="append", default=[], metavar="ROUTE=VERSION[:FRACTION]",
                   help="also send FRACTION (default 1) of ROUTE's requests to VERSION; its answers are "
                   "never returned, only written to --shadow-log")
    g.add_argument("--canary", action="append", default=[], metavar="ROUTE=VERSION[,key=value...]",
                   help="watch VERSION of ROUTE and roll the route back to its stable version on a "
                   "breach; keys: window_s, min_requests, max_error_rate, max_p95_latency_s, max_p95_ttft_s, "
                   "probe (a `seekforge eval --gen` file), probe_every_s, probe_metric, min_probe_score")
    g.add_argument("--default-model", default=None,
                   help="version or route for requests without 'model' (default: the first route)")
    g.add_argument("--admin-key", default=None,
                   help="Bearer key of the /admin/ API (env SEEKFORGE_ADMIN_KEY); without it /admin/ is off")
    g.add_argument("--request-log", default=None, metavar="FILE.jsonl",
                   help="one JSON line per request (version, route, status, latency, TTFT, tokens), "
                   "feedback, probe scores and route events: the input of `seekforge ab-report`")
    g.add_argument("--request-log-max-mb", type=float, default=None, metavar="M",
                   help="rotate the request log when it would pass M MiB: FILE -> FILE.1 -> ... -> FILE.K "
                   "(between whole lines; default: never rotate)")
    g.add_argument("--request-log-keep", type=int, default=None, metavar="K",
                   help="rotated request logs kept with --request-log-max-mb (default 5); pass them all "
                   "to `seekforge ab-report`")
    g.add_argument("--shadow-log", default=None, metavar="FILE.jsonl",
                   help="request, live answer and shadow answer of every shadowed request")
    # A client (or load balancer) that reuses an idle connection just as the server closes it gets a
    # connection error; keeping idle connections longer than the peer makes the server never the one
    # that closes first (uvicorn's default is 5 s; nginx keeps upstream connections 60 s, AWS ALB 60 s).
    g.add_argument("--keep-alive", type=float, default=75.0,
                   help="seconds an idle HTTP keep-alive connection stays open (longer than the proxy's)")
    g.add_argument("--drain-timeout", type=float, default=600.0,
                   help="seconds a hot-swapped or unloaded engine may finish its requests before it is freed")


def version_specs(args: argparse.Namespace) -> list[VersionSpec]:
    specs = [VersionSpec.parse(text) for text in args.versions]
    if args.model_dir:
        if not os.path.isdir(args.model_dir):
            raise FileNotFoundError(f"MODEL_DIR {args.model_dir}: no such directory")
        name = args.model_name or os.path.basename(os.path.abspath(args.model_dir))
        specs.insert(0, VersionSpec(name, args.model_dir, args.adapter))
    if not specs:
        raise ValueError("give a MODEL_DIR or at least one --model NAME=DIR")
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"--model: version name(s) used twice: {', '.join(sorted(dup))}")
    return specs


def ops_options(args: argparse.Namespace, api_keys: list[str]) -> OpsOptions:
    routes: dict[str, dict[str, float]] = {}
    for text in args.route:
        name, weights = parse_route(text)
        if name in routes:
            raise ValueError(f"--route {name}: given twice")
        routes[name] = weights
    shadows = dict(Shadow.parse(text) for text in args.shadow)
    admin_key = args.admin_key or os.environ.get("SEEKFORGE_ADMIN_KEY") or None
    if admin_key and admin_key in api_keys:
        raise ValueError("--admin-key must differ from every --api-key (a user key never opens /admin/)")
    max_bytes, keep = request_log_rotation(args)
    return OpsOptions(routes=routes, shadows=shadows, canaries=[CanaryPolicy.parse(t) for t in args.canary],
                      default_model=args.default_model, admin_key=admin_key, request_log=args.request_log,
                      request_log_max_bytes=max_bytes, request_log_keep=keep,
                      shadow_log=args.shadow_log, drain_timeout_s=args.drain_timeout)


def request_log_rotation(args: argparse.Namespace) -> tuple[int | None, int]:
    """(rotation size in bytes or None, backups kept) from ``--request-log-max-mb/-keep``."""
    max_mb, keep = args.request_log_max_mb, args.request_log_keep
    if max_mb is None:
        if keep is not None:
            raise ValueError("--request-log-keep needs --request-log-max-mb (without a size the log never "
                             "rotates)")
        return None, 5
    if not max_mb > 0:  # also NaN
        raise ValueError(f"--request-log-max-mb must be > 0 (MiB), got {max_mb:g}")
    if not args.request_log:
        raise ValueError("--request-log-max-mb needs --request-log FILE")
    if keep is not None and keep < 1:
        raise ValueError(f"--request-log-keep must be >= 1, got {keep}")
    return max(1, int(max_mb * 1024 * 1024)), 5 if keep is None else keep


def version_loader(args: argparse.Namespace, queue_size: int) -> Any:
    """VersionSpec -> Engine with the command's engine flags (each version gets its own engine)."""
    from seekforge.serve.cli import engine_config, load_engine

    cfg = engine_config(args, queue_size)

    def load(spec: VersionSpec) -> Any:
        # --tokenizer belongs to MODEL_DIR; --model versions read their own directory's tokenizer.
        is_positional = spec.model_dir == args.model_dir and spec.adapter == args.adapter
        tokenizer = args.tokenizer if is_positional else None
        return load_engine(spec.model_dir, dataclasses.replace(cfg), adapter=spec.adapter,
                           tokenizer=tokenizer, name=spec.name)

    return load
