"""Pruning: magnitude sparsity, structured channels and expert removal produce smaller models that
seekforge and transformers load identically; iterative rounds recover on the trainer loop."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from seekforge.compress.data import read_texts, token_windows
from seekforge.compress.prune import PruneSettings, expert_usage, prune_model, sparsity
from seekforge.model import load_model, save_model


@pytest.fixture(scope="module")
def base(tokenizer_dir, tmp_path_factory):
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", dtype=torch.float32)
    return save_model(model, tmp_path_factory.mktemp("p") / "base", tokenizer=load_tokenizer(tokenizer_dir))


@pytest.fixture(scope="module")
def text_file(shared_data, tmp_path_factory):
    lines = (shared_data / "pretrain" / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[:24]]
    path = tmp_path_factory.mktemp("d") / "text.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows), encoding="utf-8")
    return path


def windows_for(base, text_file):
    from seekforge.tokenizer import load_tokenizer

    return token_windows(load_tokenizer(base), read_texts(text_file, 24), seq_len=128)


def hf_logits_match(out_dir, ids) -> bool:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out_dir).float().eval()
    with torch.no_grad():
        return torch.allclose(hf(ids).logits, load_model(out_dir)(ids).logits, atol=1e-4)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_reaches_the_ratio(base, scope):
    model = load_model(base)
    pruned, report = prune_model(model, PruneSettings("magnitude", 0.6, scope=scope))
    assert abs(report.sparsity - 0.6) < 0.01 and abs(sparsity(pruned) - 0.6) < 0.01
    assert report.params_after < report.params_before
    if scope == "layer":
        w = pruned.model.layers[0].self_attn.o_proj.weight
        assert abs((w == 0).float().mean().item() - 0.6) < 0.01
    assert pruned.lm_head.weight.count_nonzero() == pruned.lm_head.weight.numel()  # head is kept


def test_structured_shrinks_matrices_and_transformers_loads_it(base, text_file, tmp_path):
    model = load_model(base)
    ref = copy.deepcopy(model)
    pruned, report = prune_model(model, PruneSettings("structured", 0.25), windows_for(base, text_file))
    cfg = pruned.config
    assert (cfg.intermediate_size, cfg.moe_intermediate_size) == (96, 24)
    assert pruned.model.layers[1].mlp.experts.gate_up_proj.shape == (8, 48, 64)
    assert pruned.model.layers[1].mlp.shared_experts.down_proj.weight.shape == (64, 24)
    assert report.params_after < report.params_before and report.bpb_after > 0
    out = save_model(pruned, tmp_path / "s")
    assert json.loads((out / "config.json").read_text())["moe_intermediate_size"] == 24
    ids = torch.randint(3, 512, (1, 16))
    assert hf_logits_match(out, ids)
    # removing the channels with the smallest weights changes the output less than random ones would
    with torch.no_grad():
        assert (pruned(ids).logits - ref(ids).logits).abs().max() < ref(ids).logits.abs().max()


def test_structured_heads_drop_low_mass_heads_and_transformers_loads_it(base, tmp_path):
    model = load_model(base)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():  # head 1 of layer 0 carries almost no weight: it is the one to go
        attn.q_b_proj.weight.view(4, 24, -1)[1] *= 1e-3
        attn.kv_b_proj.weight.view(4, 32, -1)[1] *= 1e-3
        attn.o_proj.weight.view(64, 4, 16)[:, 1] *= 1e-3
    kept_q = attn.q_b_proj.weight.view(4, 24, -1)[[0, 2, 3]].clone()
    pruned, report = prune_model(model, PruneSettings("structured", 0.25, structure="heads"))
    attn = pruned.model.layers[0].self_attn
    assert pruned.config.num_attention_heads == 3 and attn.n_heads == 3
    assert attn.q_b_proj.weight.shape == (3 * 24, 32) and attn.kv_b_proj.weight.shape == (3 * 32, 32)
    assert attn.o_proj.weight.shape == (64, 3 * 16)
    assert torch.equal(attn.q_b_proj.weight.view(3, 24, -1), kept_q)
    assert report.params_after < report.params_before
    out = save_model(pruned, tmp_path / "h")
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 3
    ids = torch.randint(3, 512, (1, 16))
    assert hf_logits_match(out, ids)
    loaded = load_model(out)  # the absorbed-MLA decode path agrees with the full forward
    cache = loaded.new_cache(1, 32)
    loaded.forward_cached(ids[:, :15], cache, torch.tensor([0]), torch.tensor([0]))
    step = loaded.forward_cached(ids[:, 15:], cache, torch.tensor([0]), torch.tensor([15])).logits[0, -1]
    full = loaded(ids).logits[0, -1]
    assert torch.allclose(step, full, atol=1e-4)
    both, _ = prune_model(load_model(base), PruneSettings("structured", 0.5, structure="both"))
    assert both.config.num_attention_heads == 2 and both.config.intermediate_size == 64


def test_experts_drop_least_used_and_reindex_router(base, text_file, tmp_path):
    model = load_model(base)
    windows = windows_for(base, text_file)
    layer = model.moe_layers[0]
    bias = layer.mlp.gate.e_score_correction_bias
    bias += torch.arange(8.0) / 100  # make the re-indexing of the bias visible
    gate_w, bias = layer.mlp.gate.weight.detach().clone(), bias.clone()
    usage = expert_usage(model, windows.rows)
    pruned, report = prune_model(model, PruneSettings("experts", 0.25), windows)
    assert pruned.config.n_routed_experts == 6 and report.n_routed_experts == 6
    # n_group=2 groups of 4: the least-used expert of each group goes
    top3 = [usage[0, 4 * g : 4 * g + 4].topk(3).indices + 4 * g for g in range(2)]
    kept = [e for t in top3 for e in sorted(t.tolist())]
    assert torch.equal(pruned.moe_layers[0].mlp.gate.weight, gate_w[kept])
    assert torch.equal(pruned.moe_layers[0].mlp.gate.e_score_correction_bias, bias[kept])
    out = save_model(pruned, tmp_path / "e")
    assert hf_logits_match(out, torch.randint(3, 512, (1, 16)))


def test_iterative_rounds_with_recovery(base, text_file, tmp_path):
    model = load_model(base)
    windows = windows_for(base, text_file)
    settings = PruneSettings("magnitude", 0.5, iterations=2, recover_steps=3)
    pruned, report = prune_model(model, settings, windows, str(text_file), base, tmp_path, lr=1e-3)
    assert abs(report.sparsity - 0.5) < 0.01  # masks survive the recovery runs
    assert report.bpb_after != report.bpb_before


def test_prune_cli_and_bad_input(base, text_file, tmp_path, capsys):
    from seekforge.cli import main

    assert main(["prune", str(base), "--method", "experts", "--ratio", "0.25", "--data", str(text_file),
                 "--out", str(tmp_path / "ok")]) == 0
    printed = capsys.readouterr().out
    assert "routed experts per layer: 6" in printed and "bits per byte" in printed

    def error(*argv: str) -> str:
        assert main(["prune", str(base), *argv, "--out", str(tmp_path / "bad")]) == 2
        return capsys.readouterr().err

    assert "unknown pruning method 'magnitud'" in error("--method", "magnitud", "--ratio", "0.5")
    assert "ratio must be in (0, 1)" in error("--method", "magnitude", "--ratio", "1.0")
    assert "ratio must be in (0, 1)" in error("--method", "magnitude", "--ratio", "0")
    assert "needs calibration text" in error("--method", "experts", "--ratio", "0.25")
    assert "removes no expert" in error("--method", "experts", "--ratio", "0.1", "--data", str(text_file))
    missing = str(tmp_path / "x.txt")
    assert "does not exist" in error("--method", "structured", "--ratio", "0.5", "--data", missing)
    assert "--recover-steps needs --data" in error("--method", "magnitude", "--ratio", "0.5",
                                                   "--recover-steps", "2")
    assert not (tmp_path / "bad").exists()
