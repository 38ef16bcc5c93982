"""The one engine on DeepSeek-V4: window + compressed caches give the same greedy tokens as the
full forward, with continuous batching, chunked prefill and slots reused by later requests."""

from __future__ import annotations

import pytest
import torch

from seekforge.infer import Engine, EngineConfig

from .test_engine import greedy, reference_greedy


@pytest.fixture(scope="module")
def v4_model():
    from seekforge.model.v4 import build_v4
    from seekforge.model.v4_config import v4_preset

    torch.manual_seed(0)
    model = build_v4(v4_preset("tiny-v4")).eval()
    with torch.no_grad():  # random sinks / block biases / router biases, so every path matters
        for name, p in model.named_parameters():
            if name.endswith(("sinks", "position_bias", ".base", "hc_base")):
                p.normal_(0, 0.5)
        for layer in model.moe_layers:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.1)
    return model




def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    # shorter than a CSA block, inside the window, across HCA blocks (16) and past the window (16)
    return [torch.randint(3, 512, (n,), generator=gen).tolist() for n in (3, 9, 21, 37)]


def test_greedy_equals_full_forward_with_batching(v4_model, tokenizer_dir) -> None:
    from seekforge.tokenizer import load_tokenizer

    prompts, lengths = _prompts(), [30, 12, 25, 18]  # decoding crosses more blocks and the window
    with Engine(v4_model, load_tokenizer(tokenizer_dir), EngineConfig(max_batch=3, max_len=96)) as eng:
        results = eng.generate(prompts, [greedy(n) for n in lengths])  # 4 requests on 3 slots
        for prompt, res, n in zip(prompts, results, lengths):
            assert res.token_ids == reference_greedy(v4_model, prompt, n)
        assert eng.free_slots() == 3


def test_chunked_prefill_equals_full_forward(v4_model, tokenizer_dir) -> None:
    from seekforge.tokenizer import load_tokenizer

    prompt = _prompts()[3]
    cfg = EngineConfig(max_batch=1, max_len=96, prefill_chunk=7)  # 37 tokens in 6 chunks
    with Engine(v4_model, load_tokenizer(tokenizer_dir), cfg) as eng:
        assert eng.generate([prompt], [greedy(10)])[0].token_ids == reference_greedy(v4_model, prompt, 10)


def test_cache_is_smaller_than_the_sequence(v4_model) -> None:
    """Per layer: n_win window keys + one entry per block, not one key per token."""
    cache = v4_model.new_cache(num_slots=1, max_len=4096)
    cfg = v4_model.config
    full = 4096 * cfg.head_dim * cfg.num_hidden_layers * 4  # fp32 keys for every position, every layer
    assert cache.nbytes() < full / 3
