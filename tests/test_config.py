"""The config system: YAML + key=value overrides + validation with helpful errors."""

from dataclasses import dataclass, field

import pytest

from seekforge.config import ConfigError, load_config, parse_overrides, parse_value
from seekforge.model.config import ModelConfig, model_config_from, preset_config


@dataclass
class Inner:
    rank: int = 8
    alpha: float = 16.0


@dataclass
class Outer:
    lr: float = 1e-3
    name: str = "x"
    q_lora_rank: int | None = 4
    lora: Inner = field(default_factory=Inner)


def test_parse_value_yaml_semantics():
    assert parse_value("null") is None
    assert parse_value("true") is True
    assert parse_value("3e-4") == pytest.approx(3e-4)
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("hello") == "hello"


def test_overrides_nested_and_null(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\nlora:\n  rank: 4\n")
    cfg = load_config(Outer, path, ["lora.alpha=2", "q_lora_rank=null", "name=abc"])
    assert cfg.lr == 0.5 and cfg.lora.rank == 4 and cfg.lora.alpha == 2.0
    assert cfg.q_lora_rank is None and cfg.name == "abc"


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match="'lora.rnak'.*'rank'"):
        load_config(Outer, None, ["lora.rnak=3"])
    with pytest.raises(ConfigError, match="Valid keys: alpha, rank"):
        load_config(Outer, None, ["lora.rnak=3"])


def test_bad_value_type_names_key():
    with pytest.raises(ConfigError, match="lora.rank: expected an integer"):
        load_config(Outer, None, ["lora.rank=abc"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_bad_yaml_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 1\nlora: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+"):
        load_config(Outer, path)


def test_presets_validate_and_override():
    cfg = preset_config("tiny", ["q_lora_rank=null"])
    assert cfg.q_lora_rank is None
    assert model_config_from("small-moe").n_routed_experts >= 8


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'small-moe'|Did you mean 'small-moe'"):
        preset_config("smal-moe")


@pytest.mark.parametrize(
    "override, field_names",
    [
        ("n_group=3", ["n_routed_experts", "n_group"]),
        ("num_experts_per_tok=99", ["num_experts_per_tok", "n_routed_experts"]),
        ("topk_group=5", ["topk_group", "n_group"]),
        ("scoring_func=relu", ["scoring_func"]),
        ("qk_rope_head_dim=7", ["qk_rope_head_dim"]),
    ],
)
def test_invalid_combinations_name_fields(override, field_names):
    with pytest.raises(ConfigError) as e:
        preset_config("tiny", [override])
    for name in field_names:
        assert name in str(e.value)


def test_hf_dict_round_trip():
    cfg = preset_config("v3")
    back = ModelConfig.from_hf_dict(cfg.to_hf_dict())
    assert back == cfg
    assert cfg.to_hf_dict()["model_type"] == "deepseek_v3"
