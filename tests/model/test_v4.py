"""DeepSeek-V4 (seekforge.model.v4): equal to transformers' DeepseekV4ForCausalLM both ways, with
every layer type, hash and learned routing and mHC exercised, and clear errors on bad configs."""

from __future__ import annotations

import json

import pytest
import torch

from seekforge.config import ConfigError
from seekforge.model import load_model, save_model
from seekforge.model.hf_v4 import from_disk, to_disk
from seekforge.model.v4 import DeepseekV4ForCausalLM, build_v4, rope_tail
from seekforge.model.v4_config import CSA, HCA, SLIDING, V4Config, v4_preset

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model(random_v4) -> DeepseekV4ForCausalLM:
    return random_v4()


def _hf_from(model: DeepseekV4ForCausalLM):
    cfg = transformers.DeepseekV4Config(**model.config.to_hf_dict())
    cfg._attn_implementation = "eager"
    hf = transformers.DeepseekV4ForCausalLM(cfg).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert not missing and not unexpected
    return hf


# Below the window (16), across it, and past several HCA blocks (16) and many CSA blocks (4).
@pytest.mark.parametrize("length", [3, 15, 16, 40, 67])
def test_logits_equal_transformers(model, length):
    hf = _hf_from(model)
    gen = torch.Generator().manual_seed(length)
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=gen)
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_each_v4_part_changes_the_output(model):
    """The parity test is only as good as its sensitivity: each V4-specific part must matter."""
    ids = torch.randint(0, model.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(1))
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        base = model(ids).logits
        for name in ("model.layers.1.self_attn.compressor.indexer.q_b_proj.weight",  # CSA top-k choice
                     "model.layers.2.self_attn.compressor.kv_proj.weight",  # HCA entries
                     "model.layers.0.attn_hc.fn",  # mHC
                     "model.layers.0.self_attn.sinks",
                     "model.layers.0.mlp.gate.tid2eid"):  # hash routing
            t = params[name]
            old = t.clone()
            if t.dtype == torch.long:
                t.copy_((t + 1) % model.config.n_routed_experts)
            else:
                t.add_(torch.randn_like(t))
            changed = (model(ids).logits - base).abs().max().item()
            t.copy_(old)
            assert changed > 1e-3, name


def test_save_load_both_ways(model, tmp_path):
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    save_model(model, ours_dir)
    names = set(json.loads((ours_dir / "config.json").read_text()))
    assert {"layer_types", "mlp_layer_types", "hc_mult", "compress_rates"} <= names
    hf, info = transformers.DeepseekV4ForCausalLM.from_pretrained(ours_dir, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    ids = torch.randint(0, model.config.vocab_size, (1, 37), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hf.eval()(ids).logits - model(ids).logits).abs().max().item() < 1e-4
    hf.save_pretrained(theirs_dir)
    back = load_model(theirs_dir)
    assert isinstance(back, DeepseekV4ForCausalLM)
    with torch.no_grad():
        assert (back(ids).logits - model(ids).logits).abs().max().item() < 1e-4
    assert torch.equal(back.model.layers[0].mlp.gate.tid2eid, model.model.layers[0].mlp.gate.tid2eid)


def test_disk_names_round_trip(model):
    state = model.state_dict()
    disk = to_disk(state)
    assert "head.weight" in disk and "model.layers.1.attn.indexer.compressor.wkv.weight" in disk
    assert "model.layers.1.ffn.experts.7.w3.weight" in disk
    back = from_disk(disk)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_rope_tail_keeps_layout_and_inverts():
    x = torch.randn(2, 5, 3, 12)
    angles = torch.rand(2, 5, 4)
    cos, sin = angles.cos(), angles.sin()
    y = rope_tail(x, cos, sin)
    assert torch.equal(y[..., :4], x[..., :4])  # only the last 2 * 4 channels turn
    assert torch.allclose(rope_tail(y, cos, -sin), x, atol=1e-6)
    # pair (x_4, x_5) turned by the first angle, interleaved as in DeepSeek's release
    c, s = cos[..., None, 0], sin[..., None, 0]
    assert torch.allclose(y[..., 4], x[..., 4] * c - x[..., 5] * s, atol=1e-6)


def test_training_interface(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    model.train()
    out = model(ids, labels=ids)
    out.loss.backward()
    assert out.loss.item() > 0
    assert out.expert_loads.shape == (len(model.moe_layers), model.config.n_routed_experts)
    assert out.expert_loads.sum(-1).eq(2 * 24 * model.config.num_experts_per_tok).all()
    assert model.model.layers[0].mlp.gate.tid2eid.grad is None  # the hash table is a frozen buffer
    before = model.moe_layers[0].mlp.gate.e_score_correction_bias.clone()
    model.update_router_bias(out.expert_loads)
    assert not torch.equal(before, model.moe_layers[0].mlp.gate.e_score_correction_bias)
    model.zero_grad(set_to_none=True)
    model.eval()


def test_presets_and_meta_build():
    big = load_model("v4-flash")  # published shape, on the meta device
    assert next(big.parameters()).is_meta
    assert big.config.num_hidden_layers == 43 and big.config.hc_mult == 4
    pro = load_model("v4-pro")
    assert next(pro.parameters()).is_meta and pro.config.num_hidden_layers == 61
    assert pro.config.layer_types[:3] == [HCA, HCA, HCA] and pro.config.layer_types[3] == CSA
    small = v4_preset("small-v4")
    assert {SLIDING, CSA, HCA} <= set(small.layer_types) and "hash_moe" in small.mlp_layer_types


@pytest.mark.parametrize("overrides, key", [
    ({"layer_types": [SLIDING, "full_attention", HCA, CSA]}, "layer_types[1]"),
    ({"compress_rates": {CSA: 3, HCA: 16}}, "compress_rates.compressed_sparse_attention"),
    ({"hc_mult": 0}, "hc_mult"),
    ({"mlp_layer_types": ["moe"]}, "mlp_layer_types"),
])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        v4_preset("tiny-v4", **overrides)


def test_v4_and_v3_configs_are_not_confused(model, tmp_path):
    from seekforge.model.config import ModelConfig

    save_model(model, tmp_path / "m")
    with pytest.raises(ConfigError, match="deepseek_v4"):
        ModelConfig.load(tmp_path / "m")
    with pytest.raises(ConfigError, match="model_type"):
        V4Config.from_hf_dict({"model_type": "deepseek_v3", "num_hidden_layers": 2})


def test_hash_table_that_does_not_match_the_vocabulary(model, tmp_path):
    from safetensors.torch import load_file, save_file

    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.ffn.gate.tid2eid"] = tensors["model.layers.0.ffn.gate.tid2eid"][:100]
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"tid2eid has shape \[100, 2\]"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("preset", ["tiny-v4", "small-v4", "v4-flash", "v4-pro"])
def test_analytic_parameter_count_is_exact(preset):
    from seekforge.model.v4_accounting import parameter_counts

    cfg = v4_preset(preset)
    assert parameter_counts(cfg).total == build_v4(cfg, "meta").num_parameters()


def test_model_info_for_v4(capsys):
    from seekforge.cli import main

    assert main(["model", "info", "--preset", "v4-flash"]) == 0
    out = capsys.readouterr().out
    assert "284.33B" in out and "13.79B" in out  # published: 284B total, 13B active
    assert main(["model", "info", "--preset", "v4-pro"]) == 0
    out = capsys.readouterr().out
    assert "1.57T" in out and "49.76B" in out  # announced: 1.6T total, 49B active
    assert "cache bf16 per sequence at 128k" in out


def test_query_blocks_equal_one_block(monkeypatch, random_v4):
    """The full forward runs queries in blocks against the keys their window reaches; blocks of one
    window (16 tokens here) give the logits, gradients and indexer loss of a single block."""
    from seekforge.model.dsa import set_dsa_stage
    from seekforge.model.v4 import V4Attention

    x = torch.randint(0, 512, (2, 67), generator=torch.Generator().manual_seed(3))
    runs = []
    for block in (4096, 1):  # 1 -> the window, 16: five blocks of 67 tokens
        monkeypatch.setattr(V4Attention, "QUERY_BLOCK", block)
        model = random_v4(seed=5).train()
        set_dsa_stage(model, "dense_warmup")
        out = model(x, labels=x)
        out.loss.backward()
        runs.append((out.logits.detach(), out.losses["indexer"],
                     {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ia, ga), (b, ib, gb) = runs
    assert (a - b).abs().max() < 1e-5 and torch.allclose(ia, ib, atol=1e-6)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name


def test_indexer_scores_queries_in_blocks(monkeypatch, random_v4):
    """The CSA indexer's choice and the logits are the same when its queries are scored one at a
    time (the blocks that bound its [B, T, heads, n] dot products at long context)."""
    from seekforge.model.v4 import Indexer

    model = random_v4()
    x = torch.randint(0, 512, (2, 67), generator=torch.Generator().manual_seed(4))
    calls = []
    real = Indexer.top_entries

    def counted(self, x, *args):
        calls.append(x.shape[1])  # queries scored in this call
        return real(self, x, *args)

    monkeypatch.setattr(Indexer, "top_entries", counted)
    with torch.no_grad():
        whole = model(x).logits
        assert calls and all(t == 67 for t in calls)  # one block per CSA layer
        calls.clear()
        monkeypatch.setattr(Indexer, "SCORE_BLOCK_ELEMENTS", 1)  # one query per block
        blocked = model(x).logits
    assert calls and all(t == 1 for t in calls)
    assert torch.equal(whole, blocked)
