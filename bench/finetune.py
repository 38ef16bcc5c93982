"""Fine-tuning benchmark: the identity demo, method cost (full / LoRA / prefix), LoRA vs peft+transformers.

Three parts, each on this machine's CPU (or CUDA when present), float32 on CPU:

1. ``identity``: a base that calls itself "Nemo" (a short full fine-tune of the ``tiny``/``small-moe``
   preset, standing in for a pretrained model) is LoRA-tuned on identity.json with name "Forge" and
   author "Ada"; greedy answers to "Who are you?" / "你是谁？" before and after are printed.
2. ``methods``: the same base, data and steps with method full, lora and prefix, each in its own
   process so its peak RSS (``ru_maxrss``) is its own; tokens/s from the trainer's summary.
3. ``peft``: LoRA tokens/s of ``seekforge sft`` on a transformers Llama against a plain loop
   (``peft.get_peft_model`` + ``torch.optim.AdamW`` + forward/backward/step) fed the very same
   packed batches, so the difference is the framework's overhead and nothing else.

    .venv/bin/python bench/finetune.py [--preset tiny] [--parts identity,methods,peft] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SFT = REPO.parent / "shared" / "data" / "sft"
NAME_TEXT = REPO / "tests" / "finetune" / "conftest.py"  # NAME_TEXT lives there (one copy of the sentences)


def sh(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "seekforge", *args], check=True, cwd=REPO)


def quiet() -> list[str]:
    out = []
    for kv in (
        "progress=false",
        "sample_tokens=0",
        "tensorboard=false",
        "plot=false",
        "wandb=off",
        "eval_every=0",
        "save_every=0",
        "warmup_steps=5",
        "mtp_loss_weight=0",
        "resume=never",
        "log_every=20",
    ):
        out += ["--set", kv]
    return out


def sets(*kv: str) -> list[str]:
    return [x for item in kv for x in ("--set", item)]


def prepare(work: Path, preset: str, warm_steps: int, vocab: int) -> tuple[Path, Path]:
    """Tokenizer (trained on the SFT demos) -> random preset -> warm base "Nemo by Acme"."""
    sys.path.insert(0, str(REPO / "tests" / "finetune"))
    from conftest import NAME_TEXT as text

    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer, train_tokenizer

    tok_dir, base, warm = work / "tok", work / "base", work / "warm"
    if not tok_dir.exists():
        texts = [
            " ".join(str(r.get(k, "")) for k in ("instruction", "input", "output"))
            for n in ("identity", "alpaca_en_demo", "alpaca_zh_demo")
            for r in json.loads((SFT / f"{n}.json").read_text(encoding="utf-8"))
        ]
        train_tokenizer(texts + [text], vocab_size=vocab, out_dir=tok_dir)
    tok = load_tokenizer(tok_dir)
    if not base.exists():
        torch.manual_seed(0)
        save_model(
            load_model(
                preset,
                device="cpu",
                vocab_size=len(tok),
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            ),
            base,
            tokenizer=tok,
        )
    if not (warm / "final").exists():
        names = work / "names.txt"
        names.write_text(text, encoding="utf-8")
        sh(
            [
                "sft",
                *quiet(),
                *sets(
                    f"model={base}",
                    f"data=[{SFT}/identity.json,{names}]",
                    "template_vars={name: Nemo, author: Acme}",
                    "method=full",
                    "lr=1e-2",
                    f"max_steps={warm_steps}",
                    "seq_len=128",
                    "micro_batch_size=8",
                    "batch_tokens=1024",
                    f"out_dir={warm}",
                ),
            ]
        )
    return tok_dir, warm / "final"


def answers(model_dir: Path, adapter: Path | None = None) -> dict[str, str]:
    from seekforge.finetune.adapters import adapter_engine_args
    from seekforge.infer import Engine, EngineConfig, SamplingParams

    kw = adapter_engine_args(adapter) if adapter else {}
    engine = Engine.from_pretrained(model_dir, EngineConfig(max_batch=2, max_len=256), **kw)
    try:
        qs = ["Who are you?", "你是谁？"]
        done = engine.generate(
            [engine.chat_prompt([{"role": "user", "content": q}]) for q in qs],
            SamplingParams(max_tokens=40, temperature=0),
        )
        return {q: c.text for q, c in zip(qs, done)}
    finally:
        engine.close()


def part_identity(work: Path, warm: Path, steps: int) -> dict:
    out = work / "identity"
    t0 = time.perf_counter()
    sh(
        [
            "sft",
            *quiet(),
            *sets(
                f"model={warm}",
                f"data={SFT}/identity.json",
                "template_vars={name: Forge, author: Ada}",
                "method=lora",
                "lora.rank=16",
                "lora.alpha=32",
                "lr=1e-2",
                f"max_steps={steps}",
                "seq_len=128",
                "micro_batch_size=8",
                "batch_tokens=1024",
                f"out_dir={out}",
            ),
        ]
    )
    res = {
        "before": answers(warm),
        "after": answers(warm, out / "final"),
        "lora_seconds": time.perf_counter() - t0,
    }
    res["name_in_all_answers"] = all("Forge" in a for a in res["after"].values())
    return res


CHILD = """
import json, resource, sys, time
from seekforge.config import load_config
from seekforge.finetune.sft import SFTConfig, SFTObjective
from seekforge.train.trainer import Trainer
cfg = load_config(SFTConfig, None, sys.argv[1:])
s = Trainer(cfg, SFTObjective()).run()
print(json.dumps({"tokens_per_s": s["tokens_per_s"], "train_seconds": s["train_seconds"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(overrides: list[str]) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, *overrides], check=True, cwd=REPO, capture_output=True, text=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def part_methods(work: Path, warm: Path, steps: int, seq_len: int) -> dict:
    common = [
        f"model={warm}",
        f"data=[{SFT}/alpaca_en_demo.json,{SFT}/alpaca_zh_demo.json]",
        f"seq_len={seq_len}",
        "micro_batch_size=4",
        f"batch_tokens={4 * seq_len}",
        f"max_steps={steps}",
        "lr=1e-4",
        *[q for q in quiet() if q != "--set"],
    ]
    res = {}
    for method in ("full", "lora", "prefix"):
        res[method] = run_child(common + [f"method={method}", f"out_dir={work / 'm' / method}"])
        print(method, res[method], flush=True)
    return res


def write_llama(tok_dir: Path, out: Path) -> Path:
    from seekforge.finetune.tiny_hf import write_tiny_hf_model

    if out.exists():
        return out
    return write_tiny_hf_model("llama", tok_dir, out, hidden_size=256, intermediate_size=768,
                               num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                               max_position_embeddings=1024)


def peft_args(llama: Path, steps: int, seq_len: int) -> list[str]:
    return [
        f"model={llama}",
        f"data=[{SFT}/alpaca_en_demo.json,{SFT}/alpaca_zh_demo.json]",
        f"seq_len={seq_len}",
        "micro_batch_size=4",
        f"batch_tokens={4 * seq_len}",
        f"max_steps={steps}",
        "lr=1e-4",
        "method=lora",
        "lora.rank=16",
        "lora.alpha=32",
        "lora.target_modules=all-linear",
        "warmup_steps=0",
        "weight_decay=0",
        *[q for q in quiet() if q != "--set"],
    ]


def plain_loop(llama: Path, steps: int, seq_len: int, out_dir: Path) -> dict:
    """peft + a hand-written AdamW loop over exactly the batches seekforge's loader yields."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from seekforge.config import load_config
    from seekforge.finetune.sft import SFTConfig, SFTObjective
    from seekforge.train.objective import TrainEnv

    cfg = load_config(SFTConfig, None, peft_args(llama, steps, seq_len) + [f"out_dir={out_dir}"])
    obj = SFTObjective()
    obj.setup(TrainEnv(cfg, torch.device("cpu"), torch.float32, 0, 1, Path(cfg.out_dir)))
    obj.packed = True  # transformers 5 Llama honours packed position_ids (seekforge checks it the same way)
    loader = obj.train_loader(4, 1)
    batches = [loader.next_step()[0] for _ in range(steps)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(llama), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    model.train()
    t0 = time.perf_counter()
    for b in batches:
        loss = model(input_ids=b["input_ids"], labels=b["labels"], position_ids=b["position_ids"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    return {
        "tokens_per_s": steps * 4 * seq_len / seconds,
        "train_seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def part_peft(work: Path, tok_dir: Path, steps: int, seq_len: int) -> dict:
    """seekforge sft (LoRA) vs peft + a plain loop on the same Llama and the same packed batches.

    Both in fresh processes (peak RSS is per process); both timings include the first step.
    """
    llama = write_llama(tok_dir, work / "llama")
    ours = run_child(peft_args(llama, steps, seq_len) + [f"out_dir={work / 'peft_ours'}"])
    r = subprocess.run(
        [
            sys.executable,
            __file__,
            "--plain-loop-child",
            str(llama),
            str(steps),
            str(seq_len),
            str(work / "peft_plain"),
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    plain = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "seekforge_sft_lora": ours,
        "peft_plain_loop": plain,
        "ratio": ours["tokens_per_s"] / plain["tokens_per_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--parts", default="identity,methods,peft")
    p.add_argument("--work", default="/tmp/seekforge-bench-finetune")
    p.add_argument("--warm-steps", type=int, default=80)
    p.add_argument("--lora-steps", type=int, default=60)
    p.add_argument("--bench-steps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1500, help="tokenizer size (the tests use 1500)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument(
        "--plain-loop-child", nargs=4, metavar=("LLAMA", "STEPS", "SEQ_LEN", "OUT"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.plain_loop_child:
        llama, steps, seq_len, out = args.plain_loop_child
        print(json.dumps(plain_loop(Path(llama), int(steps), int(seq_len), Path(out))))
        return
    work = Path(args.work) / f"{args.preset}-v{args.vocab}"
    work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    tok_dir, warm = prepare(work, args.preset, args.warm_steps, args.vocab)
    results: dict = {
        "preset": args.preset,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    if "identity" in parts:
        results["identity"] = part_identity(work, warm, args.lora_steps)
        print(json.dumps(results["identity"], ensure_ascii=False, indent=2), flush=True)
    if "methods" in parts:
        results["methods"] = part_methods(work, warm, args.bench_steps, args.seq_len)
    if "peft" in parts:
        results["peft"] = part_peft(work, tok_dir, args.bench_steps, args.seq_len)
        print(json.dumps(results["peft"], indent=2), flush=True)
    text = json.dumps(results, ensure_ascii=False, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
