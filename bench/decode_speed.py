"""Batch-size-1 greedy decode speed and KV-cache size: seekforge's engine vs ``transformers``.

Both run the SAME weights (a ``small-moe`` directory with random weights, loaded by transformers
with ``AutoModelForCausalLM``) on the same prompt, greedy, a fixed number of new tokens, float32 on
this CPU. The cache size of transformers is measured from the tensors its cache object really
holds after ``generate``; ours is the preallocated MLA latent cache.

    .venv/bin/python bench/decode_speed.py [--new-tokens 128] [--repeats 3] [--threads N] [--timer cpu]

``--timer cpu`` times the process's CPU time instead of wall time (the engine decodes on a thread of
this process, so its work is counted too). With ``--threads 1`` it is insensitive to other jobs on a
shared machine, where wall-clock rates of one contender can collapse for a whole phase.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_WORKDIR, small_moe_dir  # noqa: E402

from seekforge.infer import Engine, EngineConfig, SamplingParams  # noqa: E402


def tensors_in(obj, seen=None) -> list[torch.Tensor]:  # noqa: ANN001
    """Every tensor reachable from a cache object (HF caches change shape between versions)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    out: list[torch.Tensor] = []
    if isinstance(obj, (list, tuple)):
        for x in obj:
            out += tensors_in(x, seen)
    elif isinstance(obj, dict):
        for x in obj.values():
            out += tensors_in(x, seen)
    elif hasattr(obj, "__dict__"):
        for x in vars(obj).values():
            out += tensors_in(x, seen)
    return out


def hf_cache_bytes_per_token(model, prompt: list[int], n: int) -> float:  # noqa: ANN001
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         pad_token_id=0, return_dict_in_generate=True)
    total_len = out.sequences.shape[1] - 1  # the last token is never fed back
    return sum(t.numel() * t.element_size() for t in tensors_in(out.past_key_values)) / total_len


def main_timed(args: argparse.Namespace, model_dir: Path, prompt: list[int]) -> dict:
    """Time the three contenders INTERLEAVED (ours, spec, HF, ours, ...): on a shared machine the
    load drifts, and timing one contender after the other would hand the quiet minutes to one."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # it lists the MTP layer's weights as "unexpected": expected
    n = args.new_tokens
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    cfg = dict(max_batch=1, max_len=len(prompt) + n + 8)
    plain = Engine.from_pretrained(model_dir, EngineConfig(**cfg))
    spec = Engine.from_pretrained(model_dir, EngineConfig(**cfg, speculative=True))
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    runs = {
        "ours": lambda: plain.generate([prompt], params)[0].token_ids,
        "spec": lambda: spec.generate([prompt], params)[0].token_ids,
        "hf": lambda: hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                  pad_token_id=0)[0, len(prompt):].tolist(),
    }
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in runs}
    tokens: dict[str, list[int]] = {}
    with torch.inference_mode():
        for f in runs.values():  # warm-up
            f()
        for _ in range(args.repeats):
            for name, f in runs.items():
                t = clock()
                tokens[name] = f()
                times[name].append(clock() - t)
        hf_bpt = hf_cache_bytes_per_token(hf, prompt, n)
    out = {k: n / statistics.median(v) for k, v in times.items()}
    out.update(tokens=tokens, hf_bpt=hf_bpt, acc=spec.stats.acceptance_rate,
               ours_bpt=plain.cache.nbytes() / (plain.cache.num_slots * plain.cache.max_len),
               spec_bpt=spec.cache.nbytes() / (spec.cache.num_slots * spec.cache.max_len))
    plain.close()
    spec.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small-moe")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                    help="wall clock, or process CPU time (use with --threads 1 on a shared machine)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = small_moe_dir(args.workdir, args.preset)
    prompt = list(range(10, 10 + args.prompt_tokens))
    r = main_timed(args, model_dir, prompt)
    hf, ours, spec = r["hf"], r["ours"], r["spec"]
    same = sum(a == b for a, b in zip(r["tokens"]["ours"], r["tokens"]["hf"]))
    print(f"\n{args.preset}, random weights, fp32, CPU threads={torch.get_num_threads()}, prompt "
          f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, bs=1, "
          f"median of {args.repeats} interleaved runs, {args.timer} time\n")
    print("| engine | decode tokens/s | vs transformers | KV cache bytes/token |")
    print("|---|---:|---:|---:|")
    print(f"| transformers `generate` | {hf:.1f} | 1.00x | {r['hf_bpt']:,.0f} |")
    print(f"| seekforge engine | {ours:.1f} | {ours / hf:.2f}x | {r['ours_bpt']:,.0f} |")
    print(f"| seekforge + MTP speculation | {spec:.1f} | {spec / hf:.2f}x | {r['spec_bpt']:,.0f} (+MTP) |")
    print(f"\ncache: transformers/seekforge = {r['hf_bpt'] / r['ours_bpt']:.1f}x; "
          f"greedy tokens identical to transformers: {same}/{len(r['tokens']['hf'])}; speculative == plain: "
          f"{r['tokens']['spec'] == r['tokens']['ours']}; MTP acceptance {(r['acc'] or 0) * 100:.0f}% "
          "(random MTP weights: expect ~0, so speculation only costs here)")


if __name__ == "__main__":
    main()
