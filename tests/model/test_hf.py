"""HF format: directories we write load in the real transformers with equal logits, and back."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers

from seekforge.model import load_model, save_model
from seekforge.model.hf import read_safetensors

YARN = {"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}


@pytest.fixture(autouse=True)
def quiet_transformers():
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _random_bias(model):
    with torch.no_grad():
        for layer in model.moe_layers:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)


@pytest.mark.parametrize("overrides", [
    {},  # tiny: MoE, q-LoRA, n_group 2
    {"q_lora_rank": None},
    {"rope_scaling": YARN},
    {"rope_scaling": {**YARN, "mscale": 1.0, "mscale_all_dim": 0.8}},  # cos/sin multiplier != 1
    {"n_group": 4, "topk_group": 2, "num_experts_per_tok": 3},
], ids=["qlora", "no-qlora", "yarn", "yarn-mscale", "groups"])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, overrides):
    torch.manual_seed(0)
    ours = load_model("tiny", device="cpu", **overrides).eval()
    _random_bias(ours)
    save_model(ours, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["torch_dtype"] == "float32"
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    L = ours.config.num_hidden_layers  # MTP keys at layer L are the only ones HF does not use
    assert all(k.startswith(f"model.layers.{L}.") for k in info["unexpected_keys"])
    x = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        assert (ours(x).logits - hf.eval()(x).logits).abs().max() < 1e-4


def test_export_layout_per_expert_keys_mtp_copies_and_fp32_bias(tmp_path):
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", dtype="bf16")
    save_model(model, tmp_path / "m")
    t = read_safetensors(tmp_path / "m")
    assert t["model.layers.1.mlp.experts.7.gate_proj.weight"].shape == (32, 64)
    assert t["model.layers.1.mlp.experts.0.down_proj.weight"].shape == (64, 32)
    assert "model.layers.1.mlp.experts.gate_up_proj" not in t
    assert t["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert t["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    for name in ("enorm", "hnorm", "eh_proj", "shared_head.norm", "shared_head.head", "embed_tokens"):
        assert f"model.layers.2.{name}.weight" in t
    assert torch.equal(t["model.layers.2.shared_head.head.weight"], t["lm_head.weight"])
    # our own directory round-trips exactly, MTP included
    back = load_model(tmp_path / "m", device="cpu", dtype="bf16")
    assert back.config.num_nextn_predict_layers == 1
    for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n


def test_sharded_save_and_tokenizer_copy(tmp_path):
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text("{}")
    save_model(model, tmp_path / "m", tokenizer=tok, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert (tmp_path / "m" / "tokenizer.json").exists()
    back = load_model(tmp_path / "m", device="cpu")
    x = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)


def test_transformers_saved_model_loads_into_seekforge(tmp_path):
    """Random DeepseekV3Config in transformers -> save_pretrained -> load_model: same logits."""
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(
        vocab_size=300, hidden_size=48, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
        v_head_dim=12, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2, n_group=2, topk_group=1,
        first_k_dense_replace=1, routed_scaling_factor=1.5, max_position_embeddings=128)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for layer in hf.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf", device="cpu").eval()
    assert ours.config.num_nextn_predict_layers == 0  # transformers saves no MTP weights
    x = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        assert (ours(x).logits - hf(x).logits).abs().max() < 1e-4


def test_fused_expert_keys_are_read(tmp_path):
    """Checkpoints with transformers 5's in-memory layout (mlp.experts.gate_up_proj [E, 2I, d]) load too."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", num_nextn_predict_layers=0)
    save_model(model, tmp_path / "m")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    back = load_model(tmp_path / "m", device="cpu")
    got, want = back.model.layers[1].mlp.experts, model.model.layers[1].mlp.experts
    assert torch.equal(got.gate_up_proj, want.gate_up_proj) and torch.equal(got.down_proj, want.down_proj)


def test_v2_softmax_router_exports_as_deepseek_v2(tmp_path):
    torch.manual_seed(0)
    ours = load_model("tiny", device="cpu", scoring_func="softmax", topk_method="greedy", n_group=1,
                      topk_group=1, norm_topk_prob=False, num_nextn_predict_layers=0,
                      routed_scaling_factor=1.0).eval()
    save_model(ours, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "deepseek_v2"
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert (ours(x).logits - hf.eval()(x).logits).abs().max() < 1e-4


def test_missing_weights_error_names_the_directory(tmp_path):
    (tmp_path / "m").mkdir()
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 1, "first_k_dense_replace": 0, "hidden_size": 16}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path / "m", device="cpu")


def test_v32_export_loads_in_transformers_with_equal_logits_below_and_above_index_topk(tmp_path):
    torch.manual_seed(0)
    ours = load_model("tiny-dsa", device="cpu").eval()
    _random_bias(ours)
    with torch.no_grad():  # non-trivial indexer key LayerNorm
        for name, p in ours.named_parameters():
            if "k_norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    save_model(ours, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v32" and cfg["index_topk"] == 16
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert type(hf).__name__ == "DeepseekV32ForCausalLM"
    assert not info["missing_keys"] and not info["mismatched_keys"]
    L = ours.config.num_hidden_layers
    assert all(k.startswith(f"model.layers.{L}.") for k in info["unexpected_keys"])
    for T in (12, 16, 48):  # below, at and above index_topk (16)
        x = torch.randint(0, 512, (2, T))
        with torch.no_grad():
            assert (ours(x).logits - hf.eval()(x).logits).abs().max() < 1e-4, T


def test_transformers_v32_model_loads_into_seekforge(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.DeepseekV32Config(
        vocab_size=300, hidden_size=48, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
        v_head_dim=12, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2, n_group=2, topk_group=1,
        first_k_dense_replace=1, routed_scaling_factor=1.5, max_position_embeddings=128,
        index_topk=8, index_n_heads=16, index_head_dim=16)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf", device="cpu").eval()
    assert ours.config.is_dsa and ours.config.index_topk == 8 and ours.config.index_n_heads == 16
    for T in (6, 30):
        x = torch.randint(0, 300, (2, T))
        with torch.no_grad():
            assert (ours(x).logits - hf(x).logits).abs().max() < 1e-4, T
