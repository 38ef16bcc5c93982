"""DeepSeek-V4's CSA lightning indexer trained by V3.2's stages (seekforge.model.dsa.set_dsa_stage):
the dense warm-up attends to every closed block and moves only the indexers, towards the attention's
distribution; the sparse stage keeps the plain forward and separates the LM loss from the indexer KL."""

from __future__ import annotations

import pytest
import torch

from seekforge.model.dsa import dsa_attentions, indexer_kl, mean_indexer_recall, set_dsa_stage
from seekforge.model.v4 import DeepseekV4ForCausalLM, build_v4
from seekforge.model.v4_config import CSA, v4_preset

T = 64  # 16 closed CSA blocks at the end, index_topk 4: most queries choose among more than k


def _model(seed: int = 0, **fields) -> DeepseekV4ForCausalLM:
    """tiny-v4 with its CSA entries' norm scaled up: at init the attention over the compressed entries
    is nearly uniform, and a peaked distribution is what gives the indexer something to learn."""
    torch.manual_seed(seed)
    model = build_v4(v4_preset("tiny-v4", **fields))
    with torch.no_grad():
        for layer in dsa_attentions(model):
            layer.compressor.kv_norm.weight.mul_(4)
    return model


def _dense_twin(model: DeepseekV4ForCausalLM) -> DeepseekV4ForCausalLM:
    """The same weights with index_topk above the number of blocks: plain top-k keeps every block."""
    twin = build_v4(v4_preset("tiny-v4", index_topk=T), init=False)
    twin.load_state_dict(model.state_dict())
    return twin


def test_stages_reach_only_the_csa_layers():
    model = _model()
    layers = dsa_attentions(model)
    assert [layer.layer_type for layer in layers] == [CSA, CSA]
    set_dsa_stage(model, "dense_warmup")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".self_attn.compressor.indexer." in n for n in trainable)
    assert len(trainable) == sum(len(list(layer.trainable_indexer().parameters())) for layer in layers)


def test_dense_warmup_attends_to_every_block_and_only_the_indexer_learns():
    model = _model()
    x = torch.randint(0, 512, (4, T))
    with torch.no_grad():
        sparse_logits = model(x).logits
    set_dsa_stage(model, "dense_warmup")
    with torch.no_grad():
        dense_logits = model(x).logits
        assert torch.allclose(dense_logits, _dense_twin(model)(x).logits, atol=1e-6)
        assert (dense_logits - sparse_logits).abs().max() > 1e-3  # top-4 of 16 blocks differs from all 16
        fresh_recall = mean_indexer_recall(model).item()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    kl = []
    for _ in range(30):
        out = model(x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        kl.append(out.losses["indexer"].item())
    assert all(torch.isfinite(torch.tensor(kl))) and kl[-1] < 0.25 * kl[0], kl
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (".indexer." in name), name  # indexers all moved, nothing else
    with torch.no_grad():
        model(x)
    warmed_recall = mean_indexer_recall(model).item()
    # the warmed-up indexer's top 4 holds most of the attention's 4 heaviest blocks; a fresh one ~ chance
    assert warmed_recall > fresh_recall + 0.25, (fresh_recall, warmed_recall)


def test_sparse_stage_is_the_plain_forward_and_separates_the_two_losses():
    model = _model()
    x = torch.randint(0, 512, (2, T))
    with torch.no_grad():
        plain = model(x).logits
    set_dsa_stage(model, "sparse")
    out = model(x, labels=x)
    assert torch.equal(out.logits, plain)  # the stage only adds the loss: same top-k, same output
    kl = torch.stack([layer.indexer_loss for layer in dsa_attentions(model)]).mean()
    assert torch.equal(out.losses["indexer"], kl.detach()) and torch.isfinite(kl) and kl > 0
    assert mean_indexer_recall(model) is None  # recall is a dense warm-up measure

    named = dict(model.named_parameters())
    indexer = [p for n, p in named.items() if ".indexer." in n]
    rest = {n: p for n, p in named.items() if ".indexer." not in n}
    lm_grads = torch.autograd.grad(out.loss - kl, indexer, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in lm_grads)  # detached inputs, hard top-k: no LM path
    kl_grads = torch.autograd.grad(kl, indexer, retain_graph=True, allow_unused=True)
    assert all(g is not None for g in kl_grads) and any(g.abs().max() > 0 for g in kl_grads)
    kl_to_rest = torch.autograd.grad(kl, list(rest.values()), retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in kl_to_rest)  # the target is detached
    out.loss.backward()
    assert named["model.layers.1.self_attn.q_a_proj.weight"].grad.abs().max() > 0  # the model trains

    set_dsa_stage(model, None)  # back to inference: no loss, the plain forward
    out = model(x, labels=x)
    assert "indexer" not in out.losses and torch.equal(out.logits, plain)


def test_short_sequences_without_closed_blocks_give_a_finite_loss():
    model = _model()
    set_dsa_stage(model, "dense_warmup")
    out = model(torch.randint(0, 512, (2, 3)), labels=torch.randint(0, 512, (2, 3)))
    assert out.losses["indexer"].item() == 0.0  # no block has closed yet: nothing to learn
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_kl_leaves_out_queries_that_keep_nothing():
    scores = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]], requires_grad=True)
    target = torch.tensor([[[0.0, 0.0], [0.5, 0.5]]])
    keep = torch.tensor([[[False, False], [True, True]]])
    loss = indexer_kl(scores, target, keep)
    expected = (0.5 * torch.log(0.5 / torch.softmax(torch.tensor([1.0, -1.0]), 0))).sum()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.isfinite(scores.grad).all() and not scores.grad[0, 0].any()


@pytest.mark.parametrize("stage", ["dense_warmup", "sparse"])
def test_only_v4_csa_layers_take_a_stage(stage):
    model = _model(layer_types=["sliding_attention", "heavily_compressed_attention"] * 2)
    with pytest.raises(ValueError, match="no indexer"):
        set_dsa_stage(model, stage)
