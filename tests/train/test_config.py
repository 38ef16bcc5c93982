"""``seekforge train`` settings: model spec merging, derived accumulation, clear errors."""

from __future__ import annotations

import pytest

from seekforge.cli import main
from seekforge.config import ConfigError
from seekforge.train.config import load_train_config

REQ = ["data.train=shards"]


def test_model_string_plus_field_overrides_keeps_the_preset(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model: tiny\ndata:\n  train: shards\n")
    cfg = load_train_config(y, ["model.hidden_size=128", "model.num_hidden_layers=3"])
    assert cfg.model == {"preset": "tiny", "hidden_size": 128, "num_hidden_layers": 3}
    assert load_train_config(y, ["model=small-moe"]).model == "small-moe"
    assert load_train_config(None, REQ + ["model.preset=tiny", "model.q_lora_rank=null"]).model == {
        "preset": "tiny", "q_lora_rank": None}


def test_grad_accum_is_derived_and_must_divide():
    cfg = load_train_config(None, REQ + ["batch_tokens=4096", "seq_len=128", "micro_batch_size=8"])
    assert cfg.grad_accum(1) == 4 and cfg.grad_accum(2) == 2 and cfg.grad_accum(4) == 1
    with pytest.raises(ConfigError, match=r"not divisible by micro_batch_size x seq_len x world_size"):
        cfg.grad_accum(3)
    with pytest.raises(ConfigError, match="multiple of seq_len"):
        load_train_config(None, REQ + ["batch_tokens=1000", "seq_len=128"])


@pytest.mark.parametrize("override, message", [
    ("max_step=10", "unknown config key 'max_step'.*Did you mean 'max_steps'"),
    ("optimizer=sgd", r"optimizer: 'sgd' is not one of \['adamw', 'muon'\]"),
    ("schedule=cosin", "did you mean 'cosine'"),
    ("seq_len=0", "seq_len: must be > 0"),
    ("lr=fast", "lr: expected a number"),
    ("data.vla=x", "unknown config key 'data.vla'.*Did you mean 'val'"),
    ("min_lr_ratio=2", "min_lr_ratio: must be in"),
    ("compile=maybe", "compile"),
    ("resume=/no/such/ckpt", "resume"),
])
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, REQ + [override])


def test_missing_data_and_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="data.train: required"):
        load_train_config(None, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-3\nseq_len: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_train_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  train: s\nwarmup: 10\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'warmup'.*warmup_steps"):
        load_train_config(typo)


def test_cli_reports_config_errors_without_a_traceback(capsys, tmp_path):
    assert main(["train", "--set", "data.train=x", "--set", "optimizer=adam"]) == 2
    err = capsys.readouterr().err
    assert "seekforge train: error:" in err and "optimizer" in err and "Traceback" not in err
    assert main(["train", "--set", f"data.train={tmp_path}/missing.txt", "--set", f"out_dir={tmp_path}/o",
                 "--set", "wandb=false"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--set", "data.train=x", "--print-config"]) == 0
    assert "batch_tokens: 16384" in capsys.readouterr().out


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    train_cfgs = [c for c in configs if c.name.startswith(("train_", "pretrain_", "speedrun_"))]
    assert len(train_cfgs) >= 4
    for path in train_cfgs:
        cfg = load_train_config(path, ["data.train=x"])
        assert cfg.batch_tokens % (cfg.micro_batch_size * cfg.seq_len) == 0, path


@pytest.mark.parametrize("override, message", [
    ("learning_rate=1e-3", "unknown config key 'learning_rate' in TrainConfig: seekforge calls it 'lr'\\."),
    ("cutoff_len=512", "'cutoff_len'.*seekforge calls it 'seq_len'"),
    ("max_grad_norm=1", "'max_grad_norm'.*seekforge calls it 'grad_clip'"),
    ("bf16=true", r"seekforge calls it 'dtype' \(dtype=bfloat16\)"),
    ("gradient_accumulation_steps=4", "seekforge calls it 'batch_tokens' \\(accumulation is derived"),
    ("dataset=shards", "seekforge calls it 'data.train'"),
    ("lora_r=16", "'lora_r' in TrainConfig\\. Did you mean"),  # pretraining has no LoRA: no alias
])
def test_other_tools_key_names_are_errors_that_name_the_seekforge_key(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_train_config(None, REQ + [override])
    assert "Valid keys: activation_checkpointing" in str(e.value)  # the valid keys are still listed


def test_sft_aliases_resolve_through_nested_blocks():
    from seekforge.config import load_config
    from seekforge.finetune.sft import SFTConfig

    need = ["model=tiny", "data=x.jsonl"]
    for override, target in [("lora_r=16", "lora.rank"), ("lora.r=16", "lora.rank"),
                             ("lora.lora_alpha=32", "lora.alpha"), ("dataset=x", "data"),
                             ("freeze_trainable_layers=2", "freeze.trainable_layers")]:
        with pytest.raises(ConfigError, match=f"seekforge calls it '{target}'"):
            load_config(SFTConfig, None, need + [override])


def test_every_alias_names_a_real_key_and_is_not_one():
    """A stale alias would send users to a key that does not exist (or shadow one that does)."""
    from seekforge.config import KEY_ALIASES, has_key
    from seekforge.finetune.distill import DistillConfig
    from seekforge.finetune.sft import SFTConfig
    from seekforge.model.config import ModelConfig
    from seekforge.train.config import TrainConfig

    classes = [TrainConfig, SFTConfig, DistillConfig, ModelConfig]
    for name, alias in KEY_ALIASES.items():
        targets = (alias.key,) if isinstance(alias.key, str) else alias.key
        for target in targets:
            assert any(has_key(cls, target) for cls in classes), f"{name} -> {target}"
        assert not any(has_key(cls, name) for cls in classes), f"{name} is a real key"


def test_quiet_run_overrides_turn_off_every_side_output():
    from seekforge.train.config import QUIET_RUN

    cfg = load_train_config(None, REQ + list(QUIET_RUN))
    assert (cfg.eval_every, cfg.save_every, cfg.sample_tokens, cfg.resume) == (0, 0, 0, "never")
    assert not any([cfg.plot, cfg.tensorboard, cfg.wandb, cfg.progress])


def test_error_says_whether_the_bad_key_came_from_the_file_or_from_set(tmp_path):
    from seekforge.config import load_config
    from seekforge.train.config import TrainConfig

    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 1.0e-3\n")
    with pytest.raises(ConfigError, match=r"^--set: unknown config key 'learning_rate'"):
        load_config(TrainConfig, cfg, ["learning_rate=1e-3"])
    cfg.write_text("learning_rate: 1.0e-3\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown config key 'learning_rate'"):
        load_config(TrainConfig, cfg, ["seed=1"])
