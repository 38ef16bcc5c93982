"""Batch-size-1 greedy decode speed and KV-cache size: seekforge's engine vs ``transformers``.

Both run the SAME weights (a ``small-moe`` directory with random weights, loaded by transformers
with ``AutoModelForCausalLM``) on the same prompt, greedy, a fixed number of new tokens, float32 on
this CPU. The cache size of transformers is measured from the tensors its cache object really
holds after ``generate``; ours is the preallocated MLA latent cache.

    .venv/bin/python bench/decode_speed.py [--new-tokens 128] [--repeats 3] [--threads N]
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


def bench_hf(model_dir: Path, prompt: list[int], n: int, repeats: int) -> tuple[float, list[int], float]:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # it lists the MTP layer's weights as "unexpected": expected
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    kw = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = model.generate(ids, return_dict_in_generate=True, **kw)
            times.append(time.perf_counter() - t)
    seq = out.sequences[0, len(prompt):].tolist()
    total_len = out.sequences.shape[1] - 1  # the last token is never fed back
    cache_bytes = sum(t.numel() * t.element_size() for t in tensors_in(out.past_key_values))
    return n / statistics.median(times), seq, cache_bytes / total_len


def bench_ours(model_dir: Path, prompt: list[int], n: int, repeats: int, speculative: bool) -> tuple:
    cfg = EngineConfig(max_batch=1, max_len=len(prompt) + n + 8, speculative=speculative)
    with Engine.from_pretrained(model_dir, cfg) as eng:
        p = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        eng.generate([prompt], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))  # warm-up
        times, res = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            res = eng.generate([prompt], p)[0]
            times.append(time.perf_counter() - t)
        # Bytes per token of the cache the engine really allocated (main layers; + MTP when speculating).
        per_token = eng.cache.nbytes() / (eng.cache.num_slots * eng.cache.max_len)
        tps = n / statistics.median(times)
        return tps, res.token_ids, per_token, eng.stats.acceptance_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small-moe")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = small_moe_dir(args.workdir, args.preset)
    prompt = list(range(10, 10 + args.prompt_tokens))
    ours, ours_ids, main_bpt, _ = bench_ours(model_dir, prompt, args.new_tokens, args.repeats, False)
    spec, spec_ids, spec_bpt, acc = bench_ours(model_dir, prompt, args.new_tokens, args.repeats, True)
    hf, hf_ids, hf_bpt = bench_hf(model_dir, prompt, args.new_tokens, args.repeats)
    same = sum(a == b for a, b in zip(ours_ids, hf_ids))
    print(f"\n{args.preset}, random weights, fp32, CPU threads={torch.get_num_threads()}, prompt "
          f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, bs=1, "
          f"median of {args.repeats}\n")
    print("| engine | decode tokens/s | vs transformers | KV cache bytes/token |")
    print("|---|---:|---:|---:|")
    print(f"| transformers `generate` | {hf:.1f} | 1.00x | {hf_bpt:,.0f} |")
    print(f"| seekforge engine | {ours:.1f} | {ours / hf:.2f}x | {main_bpt:,.0f} |")
    print(f"| seekforge + MTP speculation | {spec:.1f} | {spec / hf:.2f}x | {spec_bpt:,.0f} (+MTP) |")
    print(f"\ncache: transformers/seekforge = {hf_bpt / main_bpt:.1f}x; "
          "greedy tokens identical to transformers: "
          f"{same}/{len(hf_ids)}; speculative == plain: {spec_ids == ours_ids}; MTP acceptance "
          f"{(acc or 0) * 100:.0f}% (random MTP weights: expect ~0, so speculation only costs here)")


if __name__ == "__main__":
    main()
