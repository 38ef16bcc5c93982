"""Compression benchmark on small-moe: size on disk, val bits per byte, bs=1 greedy decode speed.

The model is ``small-moe`` (random init, seed 0, the tokenizer of bench/_common.py) after a SHORT
pretraining run on this machine (``--train-steps``, default 60 steps of 1024 tokens, on
../shared/data text; the last docs are held out for validation). Then, all in one run:

    fp32            the trained model
    int8            seekforge quantize --method int8 (lm_head kept fp32)
    int8+head       ... --lm-head int8
    int4 / awq      --method int4 / awq, group 128 (lm_head kept; and +head: lm_head int8)
    qat int4        sft --set qat=int4 for --qat-steps more steps, then int4 RTN; compared with the
                    same steps without QAT, then int4 RTN ("ptq int4")
    experts -25%    seekforge prune --method experts --ratio 0.25 (no recovery)
    --compile       fp32 and int8+head again with the engine's compiled decode step (compile=True)
    --wide          100m-moe, random init (decode speed only): fp32 vs int8+head

Bits per byte: the first ``--val-docs`` held-out documents, measured as ``seekforge eval --ppl`` measures
a file of them (``seekforge.compress.data.bits_per_byte``).

Decode: seekforge's engine (eager, ``compile=False``), batch 1, greedy, ``--new-tokens`` tokens,
``--threads`` CPU threads; each contender in its own process, rounds interleaved, best round kept,
timed in process CPU time (``--timer cpu``, default: robust to other jobs on a shared machine with
one thread) or wall time. llama.cpp: when ``seekforge.export.gguf.export_gguf`` and ``llama_cpp``
both import, the fp32 model is exported to a GGUF (f32 and q8_0) and timed the same way.

    .venv/bin/python bench/compress.py [--workdir DIR] [--train-steps 60] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, corpus, small_moe_dir

PROMPT = "The history of the city begins"


# ---------------------------------------------------------------------------------------------
# building the contenders
# ---------------------------------------------------------------------------------------------


def split_text(workdir: Path) -> tuple[Path, Path]:
    texts = corpus()
    n_val = max(len(texts) // 20, 20)
    train, val = workdir / "train.jsonl", workdir / "val.jsonl"
    for path, part in ((train, texts[:-n_val]), (val, texts[-n_val:])):
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in part),
                        encoding="utf-8")
    return train, val


def trained_model(workdir: Path, steps: int, train: Path) -> Path:
    from seekforge.config import load_config
    from seekforge.train.config import QUIET_RUN, TrainConfig
    from seekforge.train.objective import PretrainObjective
    from seekforge.train.trainer import Trainer

    out = workdir / f"trained-{steps}"
    if (out / "final" / "config.json").is_file():
        return out / "final"
    init = small_moe_dir(workdir)
    cfg = load_config(TrainConfig, None, [*QUIET_RUN, f"model={init}", f"tokenizer={init}",
                                          f"data.train={train}", f"max_steps={steps}", f"out_dir={out}",
                                          "lr=3e-3", "warmup_steps=5",
                                          "seq_len=256", "micro_batch_size=4", "batch_tokens=1024",
                                          "log_every=10", "mtp_loss_weight=0.3"])
    summary = Trainer(cfg, PretrainObjective()).run()
    from seekforge.finetune.cli import publish_final

    return publish_final(summary, out)


def continued(workdir: Path, base: Path, train: Path, steps: int, qat: str | None) -> Path:
    """``steps`` more steps of sft on the plain text (format=text), with or without QAT."""
    from seekforge.config import load_config
    from seekforge.finetune.cli import publish_final
    from seekforge.finetune.sft import SFTConfig, SFTObjective
    from seekforge.train.config import QUIET_RUN
    from seekforge.train.trainer import Trainer

    out = workdir / f"cont-{steps}-{qat or 'plain'}"
    if (out / "final" / "config.json").is_file():
        return out / "final"
    extra = [f"qat={qat}", "qat_group_size=128"] if qat else []
    cfg = load_config(SFTConfig, None, [*QUIET_RUN, f"model={base}", f"data={train}", "format=text",
                                        "method=full", f"max_steps={steps}", f"out_dir={out}", "lr=5e-4",
                                        "warmup_steps=5", "seq_len=256", "micro_batch_size=4",
                                        "batch_tokens=1024", "max_samples=2000",
                                        "log_every=10", "seed=0", *extra])
    return publish_final(Trainer(cfg, SFTObjective()).run(), out)


def quantized(workdir: Path, src: Path, name: str, method: str, lm_head: str, calib: list) -> Path:
    from seekforge.compress.quantize import QuantizeSettings, quantize_model, save_quantized
    from seekforge.model import load_model

    out = workdir / "compressed" / name
    if not (out / "config.json").is_file():
        model = quantize_model(load_model(src), QuantizeSettings(method, 128, lm_head), calib)
        save_quantized(model, out, tokenizer=src)
    return out


def pruned_experts(workdir: Path, src: Path, windows) -> Path:
    from seekforge.compress.prune import PruneSettings, prune_model
    from seekforge.model import load_model, save_model

    out = workdir / "compressed" / "experts-25"
    if not (out / "config.json").is_file():
        model, _ = prune_model(load_model(src), PruneSettings("experts", 0.25), windows)
        save_model(model, out, tokenizer=src)
    return out


# ---------------------------------------------------------------------------------------------
# decode timing, one process per contender
# ---------------------------------------------------------------------------------------------


def _worker(conn, kind: str, path: str, prompt: list[int], n: int, threads: int, timer: str) -> None:
    import torch

    torch.set_num_threads(threads)
    if kind in ("engine", "compiled"):
        from seekforge.infer import Engine, EngineConfig, SamplingParams

        engine = Engine.from_pretrained(path, EngineConfig(max_batch=1, max_len=len(prompt) + n + 8,
                                                           threads=threads, compile=kind == "compiled"))
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)

        def run() -> list[int]:
            return engine.generate([prompt], params)[0].token_ids
    else:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=path, n_ctx=len(prompt) + n + 8, n_threads=threads, verbose=False)

        def run() -> list[int]:
            llm.reset()
            out = []
            for tok in llm.generate(prompt, temp=0.0, top_k=1):
                out.append(tok)
                if len(out) == n:
                    break
            return out
    run()
    conn.send("ready")
    clock = time.process_time if timer == "cpu" else time.perf_counter
    while conn.recv() == "run":
        t = clock()
        tokens = run()
        conn.send((clock() - t, len(tokens)))
    if kind != "llama":
        engine.close()


def decode_speeds(contenders: dict[str, tuple[str, Path]], prompt: list[int], n: int, threads: int,
                  rounds: int, timer: str) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    procs = {}
    for name, (kind, path) in contenders.items():
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(child, kind, str(path), prompt, n, threads, timer))
        p.start()
        procs[name] = (p, parent)
    for _, conn in procs.values():
        assert conn.recv() == "ready"
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (_, conn) in procs.items():
            conn.send("run")
            seconds, count = conn.recv()
            best[name] = max(best.get(name, 0.0), count / seconds)
    for p, conn in procs.values():
        conn.send("stop")
        p.join(timeout=60)
    return best


# ---------------------------------------------------------------------------------------------


def gguf_contenders(workdir: Path, fp32: Path) -> tuple[dict[str, tuple[str, Path]], str | None]:
    try:
        import llama_cpp  # noqa: F401

        from seekforge.export.gguf import export_gguf
    except ImportError as e:
        return {}, f"llama.cpp column skipped: {e}"
    out = {}
    for outtype in ("f32", "q8_0"):
        path = workdir / "compressed" / f"model-{outtype}.gguf"
        if not path.is_file():
            export_gguf(fp32, path, outtype=outtype)
        out[f"llama.cpp {outtype}"] = ("llama", path)
    return out, None


def wide_contenders(workdir: Path) -> dict[str, tuple[str, Path]]:
    """100m-moe (random init, untrained: decode speed only): fp32 and int8 with an int8 head."""
    from seekforge.compress.quantize import QuantizeSettings, quantize_model, save_quantized
    from seekforge.model import load_model

    src = small_moe_dir(workdir, "100m-moe")
    out = workdir / "compressed" / "100m-int8-head"
    if not (out / "config.json").is_file():
        model = quantize_model(load_model(src), QuantizeSettings("int8", 128, "int8"))
        save_quantized(model, out, tokenizer=src)
    return {"100m-moe fp32": ("engine", src), "100m-moe int8+head": ("engine", out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "compress")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--qat-steps", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timer", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--val-docs", type=int, default=60)
    ap.add_argument("--compile", action="store_true",
                    help="also time fp32 and int8 with the engine's compiled decode step (compile=True)")
    ap.add_argument("--wide", action="store_true",
                    help="also time 100m-moe (random init) fp32 vs int8+head: larger matrices")
    args = ap.parse_args()

    import torch

    from seekforge.compress.data import bits_per_byte, read_texts, token_windows
    from seekforge.compress.quantize import directory_bytes
    from seekforge.model import load_model
    from seekforge.tokenizer import load_tokenizer

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    args.workdir.mkdir(parents=True, exist_ok=True)
    train, val = split_text(args.workdir)
    t0 = time.perf_counter()
    fp32 = trained_model(args.workdir, args.train_steps, train)
    took = time.perf_counter() - t0
    print(f"trained small-moe for {args.train_steps} steps x 1024 tokens ({took:.0f} s): {fp32}")
    tok = load_tokenizer(fp32)
    windows = token_windows(tok, read_texts(val, args.val_docs), seq_len=256)
    calib = token_windows(tok, read_texts(train, 128), seq_len=256, max_tokens=32768).rows
    plain = continued(args.workdir, fp32, train, args.qat_steps, None)
    qat = continued(args.workdir, fp32, train, args.qat_steps, "int4")
    dirs = {
        "fp32": fp32,
        "int8": quantized(args.workdir, fp32, "int8", "int8", "keep", calib),
        "int8+head": quantized(args.workdir, fp32, "int8-head", "int8", "int8", calib),
        "int4 RTN": quantized(args.workdir, fp32, "int4", "int4", "keep", calib),
        "awq": quantized(args.workdir, fp32, "awq", "awq", "keep", calib),
        "int4 RTN+head": quantized(args.workdir, fp32, "int4-head", "int4", "int8", calib),
        "awq+head": quantized(args.workdir, fp32, "awq-head", "awq", "int8", calib),
        "experts -25%": pruned_experts(args.workdir, fp32, token_windows(tok, read_texts(train, 128), 256)),
        f"plain +{args.qat_steps} steps": plain,
        f"plain +{args.qat_steps}, int4 RTN": quantized(args.workdir, plain, "plain-int4", "int4", "keep",
                                                        calib),
        f"qat +{args.qat_steps} steps (fp32)": qat,
        f"qat +{args.qat_steps}, int4 RTN": quantized(args.workdir, qat, "qat-int4", "int4", "keep", calib),
    }
    bpb = {name: bits_per_byte(load_model(d), windows) for name, d in dirs.items()}
    size = {name: directory_bytes(d) for name, d in dirs.items()}
    timed = ["fp32", "int8", "int8+head", "int4 RTN", "awq", "int4 RTN+head", "experts -25%"]
    contenders = {name: ("engine", dirs[name]) for name in timed}
    extra: dict[str, tuple[str, Path]] = {}
    if args.compile:
        extra["fp32 compiled"] = ("compiled", fp32)
        extra["int8+head compiled"] = ("compiled", dirs["int8+head"])
    if args.wide:
        extra.update(wide_contenders(args.workdir))
    contenders.update(extra)
    gguf, skipped = gguf_contenders(args.workdir, fp32)
    contenders.update(gguf)
    prompt = tok.encode(PROMPT)
    tps = decode_speeds(contenders, prompt, args.new_tokens, args.threads, args.rounds, args.timer)

    import os

    load = os.getloadavg()
    print(f"\nsmall-moe, {args.train_steps} training steps; val: {windows.num_docs} held-out docs, "
          f"{windows.num_bytes:,} bytes; decode: bs=1 greedy, {args.new_tokens} tokens, "
          f"{args.threads} thread(s), {args.timer} time, best of {args.rounds}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(f"| {'model':<24} | {'size MB':>8} | {'% fp32':>6} | {'val bpb':>7} | {'Δ bpb':>7} | "
          f"{'tok/s':>7} | {'× fp32':>6} |")
    print("|" + "|".join("-" * (w + 2) for w in (24, 8, 6, 7, 7, 7, 6)) + "|")
    base_bpb = {name: bpb["fp32"] for name in dirs}
    base_bpb[f"plain +{args.qat_steps}, int4 RTN"] = bpb[f"plain +{args.qat_steps} steps"]
    base_bpb[f"qat +{args.qat_steps}, int4 RTN"] = bpb[f"plain +{args.qat_steps} steps"]
    for name in dirs:
        speed = f"{tps[name]:7.1f}" if name in tps else " " * 7
        ratio = f"{tps[name] / tps['fp32']:6.2f}" if name in tps else " " * 6
        delta = (bpb[name] - base_bpb[name]) / base_bpb[name]
        print(f"| {name:<24} | {size[name] / 1e6:8.2f} | {size[name] / size['fp32']:6.1%} | "
              f"{bpb[name]:7.4f} | {delta:+7.2%} | {speed} | {ratio} |")
    for name in gguf:
        print(f"| {name:<24} | {Path(contenders[name][1]).stat().st_size / 1e6:8.2f} | {'':>6} | {'':>7} | "
              f"{'':>7} | {tps[name]:7.1f} | {tps[name] / tps['fp32']:6.2f} |")
    for name, (_, path) in extra.items():
        base = "100m-moe fp32" if name.startswith("100m") else "fp32 compiled"
        print(f"| {name:<24} | {directory_bytes(path) / 1e6:8.2f} | {'':>6} | {'':>7} | {'':>7} | "
              f"{tps[name]:7.1f} | {tps[name] / tps[base]:6.2f} |")
    if skipped:
        print(f"\n{skipped}")
    print("\nΔ bpb: against fp32; the two '+N' int4 rows against the plain continued model (same steps). "
          "× fp32: llama.cpp rows against the eager fp32 engine; 'compiled' rows against 'fp32 compiled'; "
          "100m-moe rows against '100m-moe fp32'.")


if __name__ == "__main__":
    main()
