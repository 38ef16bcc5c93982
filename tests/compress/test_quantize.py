"""Weight-only quantization: kernels match the dequantized math, directories round-trip through
load_model and the engine, error is bounded, files shrink, bad input is refused clearly."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from seekforge.compress.qlinear import QuantLinear, dequantize_int4, quantize_int4
from seekforge.compress.quantize import QuantizeSettings, directory_bytes, quantize_model, save_quantized
from seekforge.model import load_model, save_model

# tiny with wider matrices so int4 groups of 32 tile every input dimension
TINY = dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64)


@pytest.fixture(scope="module")
def float_dir(tokenizer_dir, tmp_path_factory):
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", dtype=torch.float32, **TINY)
    return save_model(model, tmp_path_factory.mktemp("q") / "fp32", tokenizer=load_tokenizer(tokenizer_dir))


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_kernel_matches_dequantized_weight(bits):
    torch.manual_seed(0)
    w = torch.randn(96, 256)
    layer = QuantLinear.from_weight(w, bits, 64)
    x = torch.randn(3, 256)
    ref = x @ layer.dequantize().T
    small = layer(x)  # packed CPU kernel (bf16 activations)
    large = layer(x.repeat(8, 1))[:3]  # dequantize + fp32 matmul
    assert torch.allclose(large, ref, atol=1e-4)
    assert (small - ref).abs().max() < 0.01 * ref.abs().max()
    rel = (layer.dequantize() - w).norm() / w.norm()
    assert rel < (0.01 if bits == 8 else 0.12)
    again = QuantLinear.from_tensors(layer.to_tensors(), 256, 96, bits, 64)
    assert torch.equal(again.dequantize(), layer.dequantize())


def test_int4_codes_use_all_levels_and_rebuild_group_range():
    w = torch.linspace(-1, 1, 64).repeat(2, 1)
    codes, scales, mins = quantize_int4(w, 32)
    assert codes.min() == 0 and codes.max() == 15
    deq = dequantize_int4(codes, scales, mins)
    assert torch.allclose(deq[:, 0], w[:, 0]) and torch.allclose(deq[:, 31], w[:, 31], atol=1e-6)


@pytest.mark.parametrize("method", ["int8", "int4", "awq"])
def test_quantized_dir_loads_generates_and_is_smaller(float_dir, tmp_path, method):
    from seekforge.infer import Engine, EngineConfig, SamplingParams

    ref_model = load_model(float_dir)
    torch.manual_seed(1)
    ids = torch.randint(3, 512, (1, 48))
    calib = [torch.randint(3, 512, (64,)) for _ in range(4)]
    q = quantize_model(copy.deepcopy(ref_model), QuantizeSettings(method=method, group_size=32), calib)
    out = save_quantized(q, tmp_path / method, tokenizer=float_dir)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["method"] == method
    loaded = load_model(out)
    ref, got = ref_model(ids).logits, loaded(ids).logits
    assert torch.equal(got, q(ids).logits)  # the file holds exactly what was quantized
    err = (got - ref).abs().max() / ref.abs().max()
    assert 0 < err < (0.01 if method == "int8" else 0.1)
    assert directory_bytes(out) < (0.45 if method == "int8" else 0.4) * directory_bytes(float_dir)
    # decode through the latent cache uses the packed kernels and agrees with the full forward
    cache = loaded.new_cache(1, 64)
    loaded.forward_cached(ids[:, :20], cache, torch.tensor([0]), torch.tensor([0]))
    step = loaded.forward_cached(ids[:, 20:21], cache, torch.tensor([0]), torch.tensor([20])).logits[0, -1]
    assert (step - got[0, 20]).abs().max() < 0.02 * got.abs().max()
    with Engine.from_pretrained(out, EngineConfig(max_batch=2, max_len=128)) as engine:
        prompt = engine.encode("hello world")
        done = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    assert len(done.token_ids) == 8
    first = loaded(torch.tensor([prompt])).logits[0, -1]
    top2 = first.topk(2).values
    if top2[0] - top2[1] > 0.05 * first.abs().max():  # not a near-tie between bf16 and fp32 paths
        assert done.token_ids[0] == int(first.argmax())


def test_lm_head_int8_and_keep(float_dir, tmp_path):
    model = load_model(float_dir)
    q = quantize_model(model, QuantizeSettings(method="int8", lm_head="int8", keep=["o_proj"]))
    assert isinstance(q.lm_head, QuantLinear)
    assert type(q.model.layers[0].self_attn.o_proj) is torch.nn.Linear
    assert type(q.model.layers[0].self_attn.kv_b_proj) is torch.nn.Linear
    assert type(q.model.layers[1].mlp.gate) is not QuantLinear  # the router stays
    out = save_quantized(q, tmp_path / "q", tokenizer=float_dir)
    assert isinstance(load_model(out).lm_head, QuantLinear)


def test_cli_quantize_and_bad_input(float_dir, tmp_path, capsys):
    from seekforge.cli import main

    calib = tmp_path / "calib.txt"
    calib.write_text("the model learns to predict the next token.\n\n我们用数据训练一个语言模型。\n",
                     encoding="utf-8")
    assert main(["quantize", str(float_dir), "--method", "awq", "--group-size", "32", "--calib", str(calib),
                 "--out", str(tmp_path / "awq")]) == 0
    printed = capsys.readouterr().out
    assert "bits per byte" in printed and (tmp_path / "awq" / "model.safetensors").is_file()

    def error(*argv: str) -> str:
        assert main(["quantize", str(float_dir), *argv, "--out", str(tmp_path / "bad")]) == 2
        return capsys.readouterr().err

    assert "unknown quantization method 'int3'" in error("--method", "int3")
    assert "does not divide the input dimension" in error("--method", "int4", "--group-size", "96")
    assert "multiple of 32" in error("--method", "int4", "--group-size", "20")
    assert "does not exist" in error("--method", "awq", "--calib", str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert "no non-empty documents" in error("--method", "awq", "--calib", str(empty))
    assert "needs calibration text: pass --calib PATH" in error("--method", "awq")
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_awq_defaults_to_the_training_runs_validation_split(float_dir, tmp_path, capsys):
    """A checkpoint inside a `seekforge train` run (RUN/final next to RUN/summary.json, shards in
    RUN/data) calibrates on that run's val split when --calib is not given."""
    import shutil

    from seekforge.cli import main
    from seekforge.compress.data import run_validation_data
    from seekforge.data.tokenize import tokenize_to_shards

    run = tmp_path / "run"
    shutil.copytree(float_dir, run / "final")
    (run / "summary.json").write_text("{}", encoding="utf-8")
    text = tmp_path / "docs.jsonl"
    docs = [f"document {i}: the model learns to predict the next token. 我们训练模型。" for i in range(40)]
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    tokenize_to_shards([text], float_dir, run / "data", val_fraction=0.25, workers=0)
    assert run_validation_data(run / "final") == run / "data"
    assert main(["quantize", str(run / "final"), "--method", "awq", "--group-size", "32",
                 "--out", str(tmp_path / "awq")]) == 0
    printed = capsys.readouterr().out
    assert f"validation split {run / 'data'}" in printed and "bits per byte on" in printed
    assert run_validation_data(float_dir) is None  # not inside a run: the CLI asks for --calib


def test_bits_per_byte_is_seekforge_eval_ppl(float_dir, tmp_path):
    """quantize / prune / bench report the same number as `seekforge eval --ppl` on the same text."""
    from seekforge.cli import main
    from seekforge.compress.data import bits_per_byte, read_texts, token_windows
    from seekforge.tokenizer import load_tokenizer

    text = tmp_path / "val.jsonl"
    en, zh = "the model learns to predict the next token from data. ", "我们用数据训练一个语言模型。"
    docs = [en * (3 + i) + zh * i for i in range(6)]
    lines = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    text.write_text(lines, encoding="utf-8")
    model = load_model(float_dir)
    ours = bits_per_byte(model, token_windows(load_tokenizer(float_dir), read_texts(text), seq_len=64))
    assert main(["eval", str(float_dir), "--ppl", str(text), "--out", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    result = json.loads((tmp_path / "eval" / "results.json").read_text())["ppl"]["val.jsonl"]
    assert ours == pytest.approx(result["bits_per_byte"], rel=1e-6)


@pytest.mark.slow
def test_compiled_engine_runs_quantized_model(float_dir, tmp_path):
    """compile=True on a quantized directory: the packed kernels and the routed-expert op run inside
    the compiled decode graph and give the eager engine's greedy tokens."""
    from seekforge.infer import Engine, EngineConfig, SamplingParams

    q = quantize_model(load_model(float_dir), QuantizeSettings(method="int8", lm_head="int8"))
    out = save_quantized(q, tmp_path / "int8", tokenizer=float_dir)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    tokens = {}
    for compile_ in (False, True):
        with Engine.from_pretrained(out, EngineConfig(max_batch=1, max_len=64, compile=compile_)) as engine:
            tokens[compile_] = engine.generate([engine.encode("hello world")], params)[0].token_ids
    assert tokens[True] == tokens[False] and len(tokens[True]) == 12
