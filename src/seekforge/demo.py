"""``seekforge demo`` (``make demo``): the whole pipeline, end to end, on a laptop CPU in minutes.

    raw text -> data prepare -> tokenizer train -> data tokenize -> train small-moe -> samples + report

The corpus is Chinese + English and needs no download: the docstrings of the Python standard library
(~1.5 MB of English prose about programming, read from the ``.py`` sources with ``ast`` — nothing
is imported or executed) mixed with the samples shipped in :mod:`seekforge.samples` — 70 Tang poems,
up-sampled so that classical Chinese is a real share of what the model sees, and 18 English texts.
Each stage is the real seekforge stage with its real outputs in ``--out`` (default ``demo_out/``),
so the demo doubles as a template for your own data: swap the corpus for your files and the preset
for a bigger one. After training, the engine continues Chinese and English prompts twice: greedily,
and sampled (temperature, top-p, repetition penalty), side by side.

Re-running reuses finished stages (prepare, tokenizer and shards are cached; training resumes
from its checkpoint), so an interrupted demo picks up where it stopped. Training is sized to
``--minutes`` from a measured step time (at least 20 steps); everything else is short: on 2 cores
under load ~11 the corpus took 27 s, prepare 6 s, tokenizer 2 s, tokenize 3 s (1.8 MB of text,
460K training tokens) and the samples 5 s.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sysconfig
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("seekforge.demo")

# Modules whose sources are tests, GUIs or vendored code: their docstrings are noise for a demo.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo",
              "__pycache__", "ensurepip", "tkinter"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="built-in end-to-end demo: data -> tokenizer -> pretrain -> "
                              "samples")
    p.add_argument("--out", default="demo_out", help="working folder (stages are cached here)")
    p.add_argument("--preset", default="small-moe", help="model preset to pretrain")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="training budget; steps are sized from a measured step time (default 3)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra `seekforge train` overrides, e.g. --set optimizer=adamw")
    p.add_argument("--samples", metavar="DIR", default=None,
                   help="only write the bundled sample data (Tang poems, English texts, zh+en SFT and "
                   "identity sets) to DIR and exit")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# 1. corpus


def stdlib_docstrings(min_chars: int = 40) -> list[dict[str, str]]:
    """One document per stdlib module: its module, class and function docstrings, in source order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree)
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        parts = [d for d in (ast.get_docstring(n) for n in nodes) if d and len(d) >= min_chars]
        if parts:
            docs.append({"text": "\n\n".join(parts), "id": str(rel)})
    return docs


# Sources of the demo corpus: (name, path, weight). The Tang poems are ~7 KB against ~1.5 MB of
# docstrings; up-sampling them 40x makes classical Chinese ~1/6 of the training text (at the cost of
# repetition: the model memorises lines, which is what a short run can show).
TANG_WEIGHT = 40
ENGLISH_WEIGHT = 4

# Prompts continued after training: Tang poem openings, a speech in the English sample, docstrings.
SAMPLE_PROMPTS = ["床前明月光，", "春眠不觉晓，", "白日依山尽，", "Four score and seven years ago",
                  "Return the number of", "This module provides"]


def write_corpus(out: Path) -> Path:
    path = out / "raw" / "stdlib_docstrings.jsonl"
    if path.is_file():
        return path
    from seekforge.utils import atomic_write_text

    docs = stdlib_docstrings()
    atomic_write_text(path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    log.info("corpus: %d stdlib modules, %.2f MB of docstrings -> %s", len(docs),
             sum(len(d["text"]) for d in docs) / 1e6, path)
    return path


# ---------------------------------------------------------------------------------------------
# 2-4. data prepare, tokenizer, shards


def prepare_data(corpus: Path, out: Path) -> Path:
    from seekforge.config import load_config
    from seekforge.data.prepare import PrepareConfig, prepare
    from seekforge.samples import sample_path

    dest = out / "prepared"
    if (dest / "report.json").is_file():
        return dest
    # Docstrings are prose mixed with code and poems are short lines, which web-text quality filters
    # (made for crawls) reject wholesale; keep cleaning and dedup, switch the crawl filters off.
    sources = [{"name": "stdlib_docstrings", "paths": [str(corpus)]},
               {"name": "tang_poems", "paths": [str(sample_path("tang_poems.jsonl"))], "weight": TANG_WEIGHT},
               {"name": "english", "paths": [str(sample_path("english.jsonl"))], "weight": ENGLISH_WEIGHT}]
    cfg = load_config(PrepareConfig, overrides=[
        f"out={dest}", "progress=false", "workers=1",
        "filters.gopher_quality.enabled=false", "filters.gopher_repetition.enabled=false",
        "filters.c4.enabled=false", "filters.fineweb.enabled=false"], base={"sources": sources})
    report = prepare(cfg)
    totals = report.get("totals", {})
    log.info("prepare: kept %s of %s documents", totals.get("docs_out", "?"), totals.get("docs_in", "?"))
    return dest


def train_tokenizer_on(prepared: Path, out: Path, vocab_size: int) -> Path:
    from seekforge.data.readers import iter_documents
    from seekforge.tokenizer import train_tokenizer

    dest = out / f"tokenizer-{vocab_size}"
    if (dest / "tokenizer.json").is_file():
        return dest
    return train_tokenizer((d.text for d in iter_documents(prepared)), vocab_size, dest)


def tokenize(prepared: Path, tokenizer: Path, out: Path) -> Path:
    from seekforge.data.tokenize import tokenize_to_shards

    dest = out / f"shards-{tokenizer.name}"
    if not (dest / "manifest.json").is_file():
        tokenize_to_shards(prepared, tokenizer, dest, val_fraction=0.05, workers=0)
    return dest


# ---------------------------------------------------------------------------------------------
# 5. train


def demo_config(shards: Path, out: Path, preset: str, device: str, max_steps: int, overrides: list[str]):
    from seekforge.train.config import load_train_config

    sets = [f"model={preset}", f"data.train={shards}", f"out_dir={out / 'run'}", f"device={device}",
            f"max_steps={max_steps}", "seq_len=256", "batch_tokens=8192", "micro_batch_size=16",
            "optimizer=muon", "lr=3e-3", "schedule=wsd", "decay_fraction=0.3", "min_lr_ratio=0.0",
            f"warmup_steps={max(5, max_steps // 20)}", f"eval_every={max(10, max_steps // 3)}",
            f"save_every={max(10, max_steps // 3)}", "eval_tokens=16384", "sample_tokens=48",
            "tensorboard=false", "keep_last=1",
            f"sample_prompts={json.dumps(SAMPLE_PROMPTS[::2], ensure_ascii=False)}"]
    return load_train_config(None, sets + list(overrides))


def steps_for_budget(shards: Path, preset: str, device: str, minutes: float) -> tuple[int, float]:
    """Time one optimizer step (2 x 16 x 256 tokens, forward + backward + Muon/AdamW) of the demo
    model on random tokens, after a warm-up step, and size ``max_steps`` to the budget."""
    import torch

    from seekforge.model import build_model
    from seekforge.model.config import model_config_from
    from seekforge.train.optim import OptimizerSpec, build_optimizer
    from seekforge.utils import resolve_device

    vocab = json.loads((shards / "manifest.json").read_text())["vocab_size"]
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = build_model(model_config_from(preset, {"vocab_size": vocab}), dev, torch.float32)
    opt = build_optimizer(model.named_parameters(), OptimizerSpec(kind="muon"), dev)
    x = torch.randint(0, vocab, (16, 256), device=dev)
    seconds = 0.0
    for _step in range(2):
        t0 = time.perf_counter()
        for _ in range(2):  # grad_accum 2, as in demo_config
            model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0  # keep the second (warm) step
    tok_s = 8192 / seconds
    return max(20, int(minutes * 60 * tok_s / 8192)), tok_s


# ---------------------------------------------------------------------------------------------
# 6. samples


SAMPLED = dict(temperature=0.8, top_p=0.95, repetition_penalty=1.3, seed=0)


def show_samples(checkpoint: Path, device: str, max_tokens: int = 40) -> None:
    """Continue each prompt greedily and sampled; greedy text from a short run loops, sampling with a
    repetition penalty shows more of what the model learned."""
    from seekforge.infer import Engine, EngineConfig, SamplingParams

    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    sampled = SamplingParams(max_tokens=max_tokens, **SAMPLED)
    cfg = EngineConfig(max_batch=len(SAMPLE_PROMPTS), device=device)
    with Engine.from_pretrained(checkpoint, cfg) as eng:
        by_greedy = eng.generate(SAMPLE_PROMPTS, greedy)
        by_sampling = eng.generate(SAMPLE_PROMPTS, sampled)
    print("   sampled = " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in SAMPLED.items()))
    for prompt, g, s in zip(SAMPLE_PROMPTS, by_greedy, by_sampling):
        print(f"   {prompt}")
        print(f"     greedy : {_one_line(g.text)}")
        print(f"     sampled: {_one_line(s.text)}")


def _one_line(text: str) -> str:
    return text.replace("\n", " ⏎ ")


# ---------------------------------------------------------------------------------------------


def write_sample_files(dest: str) -> int:
    from seekforge.samples import write_samples

    for path in write_samples(dest):
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.samples is not None:
        return write_sample_files(args.samples)
    from seekforge.train import Trainer
    from seekforge.utils import human_count

    out = Path(args.out)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str, fn, *a: Any):
        print(f"== {name}", flush=True)
        s = time.perf_counter()
        result = fn(*a)
        timings[name] = time.perf_counter() - s
        return result

    corpus = stage("corpus: standard-library docstrings", write_corpus, out)
    prepared = stage("data prepare: clean + dedup", prepare_data, corpus, out)
    tok = stage(f"tokenizer train: byte-level BPE, {args.vocab_size} tokens", train_tokenizer_on, prepared,
                out, args.vocab_size)
    shards = stage("data tokenize", tokenize, prepared, tok, out)
    run_dir = out / "run"
    summary_path = run_dir / "summary.json"
    done = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if done is None:
        sized = out / "train_steps.json"
        if sized.is_file():  # an interrupted run: keep its schedule, resume from its checkpoint
            steps = json.loads(sized.read_text())["max_steps"]
        else:
            steps, tok_s = stage("measure step time", steps_for_budget, shards, args.preset, args.device,
                                 args.minutes)
            print(f"   {tok_s:,.0f} tokens/s -> {steps} steps of 8,192 tokens for a {args.minutes:g}-minute "
                  "budget")
            sized.write_text(json.dumps({"max_steps": steps}) + "\n")
        cfg = demo_config(shards, out, args.preset, args.device, steps, args.overrides)
        done = stage(f"train {args.preset}", Trainer(cfg).run)
    manifest = json.loads((shards / "manifest.json").read_text())
    stage("samples from the final checkpoint", show_samples, Path(done["checkpoint"]), args.device)
    print("\n== report")
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    rows = [
        ("corpus", f"{train['bytes'] / 1e6:.2f} MB train, {val['bytes'] / 1e3:.0f} KB val"),
        ("tokens", f"{human_count(train['tokens'])} train "
                   f"({train['bytes'] / train['tokens']:.2f} bytes/token)"),
        ("trained", f"{done['step']} steps, {human_count(done['tokens'])} tokens"),
        ("throughput", f"{done.get('tokens_per_s') or 0:,.0f} tokens/s, "
                       f"MFU {100 * (done.get('mfu') or 0):.1f}%"),
        ("final val", f"loss {done.get('val_loss', float('nan')):.3f} nats/token, "
                      f"{done.get('val_bpb', float('nan')):.3f} bits/byte"),
        ("checkpoint", done["checkpoint"]),
        ("wall clock", f"{time.perf_counter() - t0:.0f} s this run ("
                       + ", ".join(f"{k.split(':')[0]} {v:.0f}s" for k, v in timings.items()) + ")"),
    ]
    for k, v in rows:
        print(f"  {k:<12} {v}")
    ckpt = done["checkpoint"]
    print(f"\nNext: chat with it: seekforge chat {ckpt}\n      train longer: seekforge train "
          f"{ckpt}/trainer_state/config.yaml --set max_steps=2000   (resumes from the checkpoint)\n"
          f"      loss curve: {run_dir / 'loss.png'}")
    return 0
