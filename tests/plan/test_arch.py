"""HF config.json families -> one Arch: parameter counts against the model cards."""

from __future__ import annotations

import pytest

from seekforge.config import ConfigError
from seekforge.model.accounting import flops_per_token, kv_cache_bytes_per_token, param_counts
from seekforge.plan.arch import arch_from_hf_dict, lora_params, resolve_arch

# (config.json fields, published total, published active or non-embedding count, which one)
CARDS = {
    "Mixtral-8x7B": (dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                          num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          num_local_experts=8, num_experts_per_tok=2), 46.7e9, 12.9e9, "active"),
    "Qwen2.5-7B": (dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                        tie_word_embeddings=False), 7.61e9, 6.53e9, "non_embedding"),
    "Qwen3-8B": (dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                      num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      tie_word_embeddings=False), 8.2e9, 6.95e9, "non_embedding"),
    "Qwen1.5-MoE-A2.7B": (dict(model_type="qwen2_moe", vocab_size=151936, hidden_size=2048,
                               intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                               num_key_value_heads=16, num_experts=60, num_experts_per_tok=4,
                               moe_intermediate_size=1408,
                               shared_expert_intermediate_size=5632, tie_word_embeddings=False),
                          14.3e9, 2.7e9, "active"),
    "Qwen3-30B-A3B": (dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=2048,
                           intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
                           num_key_value_heads=4, head_dim=128,
                           num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                           tie_word_embeddings=False), 30.5e9, 3.3e9, "active"),
}


@pytest.mark.parametrize("name", list(CARDS))
def test_model_card_counts(name):
    cfg, total, second, kind = CARDS[name]
    pc = param_counts(arch_from_hf_dict(cfg))
    assert pc["total"] == pytest.approx(total, rel=0.01)
    got = pc["active"] if kind == "active" else pc["total"] - pc["embedding"]
    assert got == pytest.approx(second, rel=0.02)


def test_gqa_kv_cache_and_dense_flops():
    arch = arch_from_hf_dict(CARDS["Qwen2.5-7B"][0])
    kv = kv_cache_bytes_per_token(arch)
    assert kv["gqa"] == 28 * 2 * 4 * 128 * 2  # layers x (K, V) x kv heads x head_dim x bf16
    assert kv["mha"] == kv["gqa"] * 7  # 28 query heads share 4 KV heads
    # Dense: 6·(N - embedding lookup - norms - q/k/v biases) + 6·L·H·(2·head_dim)·T.
    pc = param_counts(arch)
    T = 4096
    biases = 28 * (28 * 128 + 2 * 4 * 128)
    matmul = pc["total"] - 152064 * 3584 - pc["norms"] - biases
    assert flops_per_token(arch, T) == 6 * matmul + 6 * 28 * 28 * 256 * T


def test_deepseek_dir_and_preset_agree(model_dir):
    from seekforge.model.config import preset_config

    d = model_dir(preset_config("v2-lite").to_hf_dict())
    from_dir, _ = resolve_arch(model_dir=d)
    from_preset, _ = resolve_arch(preset="v2-lite")
    assert param_counts(from_dir) == param_counts(from_preset)


def test_training_yaml_gives_defaults(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model: small-moe\nseq_len: 512\nbatch_tokens: 8192\nmicro_batch_size: 4\n")
    arch, defaults = resolve_arch(config=str(cfg), overrides=["num_hidden_layers=4"])
    assert arch.num_layers == 4
    assert defaults == {"seq_len": 512, "batch_tokens": 8192, "micro_batch_size": 4}
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("preset: tiny\nhidden_size: 128\n")
    assert resolve_arch(config=str(model_yaml))[0].hidden_size == 128


def test_lora_params_hand_count():
    arch = arch_from_hf_dict(dict(model_type="llama", vocab_size=100, hidden_size=8, intermediate_size=16,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    # q (8->8), k (8->4), v (8->4), o (8->8), gate/up (8->16), down (16->8); r·(in+out) each.
    r = 4
    assert lora_params(arch, r) == r * ((8 + 8) + (8 + 4) + (8 + 4) + (8 + 8) + 2 * (8 + 16) + (16 + 8))


def test_bad_model_inputs(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="model_type 'gpt_neox' is not supported"):
        arch_from_hf_dict({"model_type": "gpt_neox"})
    with pytest.raises(ConfigError, match="missing 'intermediate_size'"):
        arch_from_hf_dict({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
                           "num_hidden_layers": 1, "vocab_size": 10})
    with pytest.raises(ConfigError, match="config.json is missing"):
        resolve_arch(model_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="exactly one of --preset"):
        resolve_arch(preset="tiny", model_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="Did you mean 'small-moe'"):
        resolve_arch(preset="small_moe")
