"""DeepSeek Sparse Attention (V3.2): dense below index_topk, sparse above, cached paths equal the full
forward, training stages train what they should, bad configs are named."""

from __future__ import annotations

import json

import pytest
import torch

from seekforge.config import ConfigError
from seekforge.model import load_model, preset_config, save_model
from seekforge.model.dsa import DSAttention, set_dsa_stage, top_k_tokens, topk_keep


def _dense_twin(dsa_model, kernels: bool = True):
    """A plain V3 model with the same weights as ``dsa_model`` minus the indexers."""
    dense = load_model("tiny", device="cpu", kernels=kernels).eval()
    dense.load_state_dict({k: v for k, v in dsa_model.state_dict().items() if ".indexer." not in k})
    return dense


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "reference"])
def test_shorter_than_topk_is_dense_mla_exactly_and_longer_is_sparse(kernels):
    torch.manual_seed(0)
    model = load_model("tiny-dsa", device="cpu", kernels=kernels).eval()
    assert all(isinstance(layer.self_attn, DSAttention) for layer in model.model.layers)
    dense = _dense_twin(model, kernels)
    k = model.config.index_topk
    short = torch.randint(0, 512, (2, k))
    long = torch.randint(0, 512, (2, 3 * k))
    with torch.no_grad():
        assert torch.equal(model(short).logits, dense(short).logits)
        got, want = model(long).logits, dense(long).logits
    # positions < k see at most k tokens: dense; later ones attend to k of their tokens only
    assert torch.allclose(got[:, :k], want[:, :k], atol=1e-6)
    assert (got[:, k:] - want[:, k:]).abs().max() > 1e-4


def test_topk_ties_break_towards_the_later_token_whatever_the_shape():
    scores = torch.tensor([[0.5, 0.0, 0.0, -1.0, 0.0, 0.2]])
    hidden = torch.zeros_like(scores, dtype=torch.bool)
    assert sorted(top_k_tokens(scores, hidden, 3)[0].tolist()) == [0, 4, 5]
    wide = torch.cat([scores, torch.zeros(7, 6)]).view(2, 4, 6)[:1, :1]  # same row inside a larger tensor
    assert sorted(top_k_tokens(wide, hidden[None], 3)[0, 0].tolist()) == [0, 4, 5]
    hidden[0, 5] = True
    assert sorted(top_k_tokens(scores, hidden, 3)[0].tolist()) == [0, 2, 4]
    neg = torch.tensor([[-3.0, -1.0, -2.0, -0.0]])
    assert top_k_tokens(neg, torch.zeros_like(neg, dtype=torch.bool), 2)[0].tolist() == [3, 1]
    visible = torch.ones(4, 4, dtype=torch.bool).tril()[None]
    keep = topk_keep(torch.randn(1, 4, 4), visible, 2)
    assert keep.sum(-1).tolist() == [[1, 2, 2, 2]] and not (keep & ~visible).any()


def test_cached_prefill_decode_and_chunks_equal_the_full_forward():
    torch.manual_seed(0)
    model = load_model("tiny-dsa", device="cpu").eval()
    x = torch.randint(0, 512, (2, 70))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(3, 96)
        slots = torch.tensor([2, 0])
        start = torch.zeros(2, dtype=torch.long)
        out = model.forward_cached(x[:, :40], cache, slots, start)  # a prefill longer than index_topk
        assert (out.logits - full[:, :40]).abs().max() < 1e-5
        for t in range(40, 50):  # decode over more than index_topk cached tokens
            step = model.forward_cached(x[:, t : t + 1], cache, slots, torch.tensor([t, t]))
            assert (step.logits[:, 0] - full[:, t]).abs().max() < 1e-5
        chunk = model.forward_cached(x[:, 50:], cache, slots, torch.tensor([50, 50]))  # a later chunk
        assert (chunk.logits - full[:, 50:]).abs().max() < 1e-5
    assert len(cache.index_keys) == 3 and cache.index_keys[0].shape == (3, 96, model.config.index_head_dim)
    dense_bytes = load_model("tiny", device="cpu").new_cache(3, 96).nbytes()
    assert cache.nbytes() - dense_bytes == 3 * 3 * 96 * model.config.index_head_dim * 4


def test_dense_warmup_trains_only_the_indexer_towards_the_attention_distribution():
    torch.manual_seed(0)
    model = load_model("tiny-dsa", device="cpu")
    with torch.no_grad():  # a peaked attention distribution to learn (at init it is nearly uniform)
        for layer in model.model.layers:
            layer.self_attn.q_b_proj.weight.mul_(40)
            layer.self_attn.kv_b_proj.weight.mul_(40)
    set_dsa_stage(model, "dense_warmup")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".indexer." in n for n in trainable)
    x = torch.randint(0, 512, (2, 40))
    dense = _dense_twin(model)
    with torch.no_grad():  # warm-up attention is dense
        assert torch.allclose(model(x).logits, dense(x).logits, atol=1e-6)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(20):
        out = model(x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else out.losses["indexer"].item()
    assert out.losses["indexer"].item() < 0.5 * first, (first, out.losses["indexer"].item())


def test_sparse_stage_keeps_the_indexer_out_of_the_lm_loss():
    torch.manual_seed(0)
    model = load_model("tiny-dsa", device="cpu")
    set_dsa_stage(model, "sparse")
    x = torch.randint(0, 512, (2, 40))
    out = model(x, labels=x)
    indexer_loss = model._indexer_loss()
    assert torch.equal(out.losses["indexer"], indexer_loss.detach())
    indexer = [p for n, p in model.named_parameters() if ".indexer." in n]
    lm_grads = torch.autograd.grad(out.loss - indexer_loss, indexer, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in lm_grads)  # detached inputs, hard selection: no LM path
    kl_grads = torch.autograd.grad(indexer_loss, indexer, retain_graph=True)
    assert all(g.abs().max() > 0 for g in kl_grads)
    out.loss.backward()
    assert model.model.layers[0].self_attn.q_a_proj.weight.grad.abs().max() > 0  # the model itself trains
    with pytest.raises(ValueError, match="dsa stage"):
        set_dsa_stage(model, "warmup")
    with pytest.raises(ValueError, match="no indexer"):
        set_dsa_stage(load_model("tiny", device="cpu"), "sparse")


def test_bad_dsa_configs_name_the_key(tmp_path):
    for bad in (0, -3, 513):
        with pytest.raises(ConfigError, match="index_topk"):
            preset_config("tiny-dsa", {"index_topk": bad})
    with pytest.raises(ConfigError, match="q_lora_rank"):
        preset_config("tiny-dsa", {"q_lora_rank": None})
    torch.manual_seed(0)
    v32 = save_model(load_model("tiny-dsa", device="cpu"), tmp_path / "v32")
    v3 = save_model(load_model("tiny", device="cpu"), tmp_path / "v3")
    assert "index_topk" not in json.loads((v3 / "config.json").read_text())
    cfg = json.loads((v32 / "config.json").read_text())
    (tmp_path / "as_v3").mkdir()
    (tmp_path / "as_v3" / "config.json").write_text(json.dumps({**cfg, "model_type": "deepseek_v3"}))
    with pytest.raises(ConfigError, match="index_topk.*deepseek_v32"):
        load_model(tmp_path / "as_v3", device="cpu")
    cfg3 = json.loads((v3 / "config.json").read_text())
    (tmp_path / "as_v32").mkdir()
    (tmp_path / "as_v32" / "config.json").write_text(json.dumps({**cfg3, "model_type": "deepseek_v32"}))
    with pytest.raises(ConfigError, match="index_topk"):
        load_model(tmp_path / "as_v32", device="cpu")
    with pytest.raises(ValueError, match=r"indexer.*seekforge train"):  # V3 weights under a V3.2 config
        load_model(v3, device="cpu", index_topk=16, index_n_heads=4, index_head_dim=16)
    with pytest.raises(ValueError, match="unexpected.*indexer"):  # V3.2 weights under a V3 config
        load_model(v32, device="cpu", index_topk=None)
