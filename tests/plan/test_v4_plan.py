"""DeepSeek-V4 in the shared accounting and `seekforge plan`: the parameter count equals the built
model's, the cache equals the engine's own layout, attention FLOPs follow the window / compressed
entries, and V4 presets, directories and training YAMLs all plan."""

from __future__ import annotations

import pytest

from seekforge.model.accounting import (
    arch_from_v4_config,
    kv_cache_bytes_per_token,
    param_counts,
    v4_attention_flops,
)
from seekforge.model.v4_config import CSA, HCA, SLIDING, v4_preset


@pytest.mark.parametrize("preset", ["tiny-v4", "small-v4", "v4-flash", "v4-pro"])
def test_parameters_equal_the_built_model(preset):
    from seekforge.model.v4 import build_v4

    cfg = v4_preset(preset)
    pc = param_counts(arch_from_v4_config(cfg))
    assert pc["total"] == build_v4(cfg, "meta").num_parameters()
    parts = ("attention", "router", "routed_experts", "shared_experts", "norms", "hyper_connections")
    assert sum(pc[k] for k in parts) + pc["embedding"] == pc["total"]
    assert pc["mtp"] == 0 and pc["dense_mlp"] == 0  # no MTP module, no dense FFN in V4


def test_cache_per_sequence_equals_the_layout_the_engine_allocates():
    """kv_cache_bytes_per_token x context = window + compressed entries (+ CSA indexer keys)."""
    from seekforge.model.v4_accounting import cache_bytes

    cfg = v4_preset("v4-flash")
    arch = arch_from_v4_config(cfg)
    for context in (100, 4096, 131072):
        per_token = kv_cache_bytes_per_token(arch, 2, context=context)["actual"]
        assert per_token * context == pytest.approx(sum(cache_bytes(cfg, context).values()), rel=1e-3)


def test_attention_flops_follow_window_and_compression():
    cfg = v4_preset("tiny-v4")  # window 16, CSA m=4 top-4, HCA m'=16
    arch = arch_from_v4_config(cfg)
    by_type = dict(zip(cfg.layer_types, (lay.attention for lay in arch.layers)))
    entry = 6 * cfg.num_attention_heads * 2 * cfg.head_dim
    T = 64
    sliding = v4_attention_flops(by_type[SLIDING], T)
    assert sliding == {"window": entry * 16, "compressed": 0.0, "indexer": 0.0}
    assert v4_attention_flops(by_type[HCA], T)["compressed"] == entry * T / 16
    csa = v4_attention_flops(by_type[CSA], T)
    assert csa["compressed"] == entry * 4  # top-4 of the 16 entries
    assert csa["indexer"] == 6 * cfg.index_n_heads * (cfg.index_head_dim + 1) * T / 4
    # causal, shorter than the window: on average half the tokens
    assert v4_attention_flops(by_type[SLIDING], 8, causal=True)["window"] == entry * 4


def test_plan_takes_v4_presets_directories_and_yaml(run_plan, tmp_path):
    from seekforge.model import load_model, save_model

    by_preset = run_plan(["--preset", "tiny-v4", "--hardware", "cpu"])
    save_model(load_model("tiny-v4", device="cpu"), tmp_path / "m")
    by_dir = run_plan(["--model", str(tmp_path / "m"), "--hardware", "cpu"])
    (tmp_path / "train.yaml").write_text("model: tiny-v4\nseq_len: 64\n", encoding="utf-8")
    by_yaml = run_plan(["--config", str(tmp_path / "train.yaml"), "--hardware", "cpu"])
    for r in (by_dir, by_yaml):
        assert r["params_total"] == by_preset["params_total"] == 607787
    flash = run_plan(["--preset", "v4-flash", "--hardware", "h100-sxm", "--num-gpus", "8"])
    assert flash["params_total"] == pytest.approx(284.33e9, rel=1e-4)
    assert flash["params_active"] == pytest.approx(13.79e9, rel=1e-3)
    wider = run_plan(["--preset", "tiny-v4", "--set", "hidden_size=128", "--hardware", "cpu"])
    assert wider["params_total"] > by_preset["params_total"]


def test_plan_v4_bad_override_lists_the_keys(run_plan):
    from seekforge.config import ConfigError

    with pytest.raises(ConfigError, match="valid DeepSeek-V4 keys: .*hc_mult"):
        run_plan(["--preset", "tiny-v4", "--set", "hc_mul=2", "--hardware", "cpu"])


def test_lora_parameters_equal_what_sft_adapts():
    """The planner's LoRA count for V4 is the count of the linears `all-linear` adapts on the model."""
    from seekforge.finetune.methods import resolve_lora_targets
    from seekforge.model import load_model
    from seekforge.plan.arch import lora_params

    model = load_model("tiny-v4", device="cpu")
    targets = resolve_lora_targets(model, "seekforge", "all-linear")["target_modules"]
    rank = 8
    adapted = sum(rank * (m.in_features + m.out_features) for m in map(model.get_submodule, targets))
    assert lora_params(arch_from_v4_config(v4_preset("tiny-v4")), rank) == adapted


def test_activation_estimate_counts_what_autograd_keeps():
    """Per layer, the planner's activation bytes for seekforge's V4 against the storages autograd
    saves in one forward of small-v4 (two query blocks at T = 512), within 10%."""
    import collections

    import torch

    from seekforge.model import load_model
    from seekforge.plan.estimate import layer_activation_bytes

    torch.manual_seed(0)
    model = load_model("small-v4", device="cpu")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, tuple[str, int]] = {}
    current = ["outside"]
    for name, module in model.named_modules():
        if name.startswith("model.layers.") and name.count(".") == 2:
            module.register_forward_pre_hook(lambda m, a, name=name: current.append(name))
            module.register_forward_hook(lambda m, a, o: current.pop() and None)  # None: keep the output

    def keep(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in saved and ptr not in params:
            saved[ptr] = (current[-1], t.untyped_storage().nbytes())
        return t

    T = 512
    x = torch.randint(0, 8192, (1, T), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(x, labels=x)
    per_layer = collections.Counter()
    for name, nbytes in saved.values():
        per_layer[name] += nbytes
    arch = arch_from_v4_config(v4_preset("small-v4"))
    for i, layer in enumerate(arch.layers):
        estimate = layer_activation_bytes(layer, arch.hidden_size, "none", 4.0, T) * T
        assert estimate == pytest.approx(per_layer[f"model.layers.{i}"], rel=0.10), i
