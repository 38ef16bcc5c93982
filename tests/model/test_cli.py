"""``seekforge model init/info`` through the real command line entry point."""

from __future__ import annotations

import json

import pytest

from seekforge.cli import main
from seekforge.model import load_model


def test_info_v3_is_analytic_and_instant(capsys):
    assert main(["model", "info", "--preset", "v3"]) == 0
    out = capsys.readouterr().out
    assert "671.03B" in out and "37.55B" in out  # total / active (report: 671B / 37B)
    assert "68.62 KiB" in out  # MLA cache per token, bf16: (d_c 512 + d_r 64) x 61 layers x 2 bytes
    assert "71.1x MLA" in out


def test_info_of_a_directory_and_overrides(tmp_path, capsys):
    argv = ["model", "init", "--preset", "tiny", "--set", "num_hidden_layers=3", "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_hidden_layers"] == 3
    capsys.readouterr()
    assert main(["model", "info", str(tmp_path / "m")]) == 0
    assert "layers=3" in capsys.readouterr().out
    assert load_model(tmp_path / "m", device="cpu").config.num_hidden_layers == 3


@pytest.mark.parametrize("argv, needle", [
    (["model", "info", "--preset", "small_moe"], "Did you mean 'small-moe'"),
    (["model", "info", "--preset", "tiny", "--set", "n_group=3"], "n_group"),
    (["model", "info", "--preset", "tiny", "--set", "topk_group=5"], "topk_group"),
    (["model", "info", "--preset", "tiny", "--set", "num_experts_per_tok=99"], "num_experts_per_tok"),
    (["model", "info", "--preset", "tiny", "--set", "q_lora_rnk=8"], "q_lora_rank"),
    (["model", "info"], "--preset"),
    (["model", "init", "--preset", "v3", "--out", "/nonexistent/x"], "memory"),
])
def test_errors_name_the_problem(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_init_with_tokenizer_sets_vocab_and_special_ids(tmp_path):
    from seekforge.tokenizer import load_tokenizer, train_tokenizer

    texts = ["hello world, 你好世界。", "the quick brown fox 跳过了懒狗"] * 50
    train_tokenizer(texts, 400, tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    assert main(["model", "init", "--preset", "tiny", "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "m")]) == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["vocab_size"] == len(tok)
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (tok.bos_token_id, tok.eos_token_id)
    assert (tmp_path / "m" / "tokenizer.json").exists()
    assert len(load_tokenizer(tmp_path / "m")) == len(tok)



def test_info_v32_shows_the_indexer_and_what_top_k_saves(capsys):
    assert main(["model", "info", "--preset", "v3.2", "--seq-len", "32768"]) == 0
    out = capsys.readouterr().out
    assert "64 heads x 128, top-2048 tokens per query" in out
    assert "saves" in out and "indexer 15.25 KiB" in out
