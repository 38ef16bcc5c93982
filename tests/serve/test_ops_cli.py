"""``seekforge serve --model ...`` as a real command: a plain, a quantized and a base+LoRA version."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import httpx
import pytest
import torch

from seekforge.cli import main

from .conftest import free_port


@pytest.fixture(scope="module")
def quantized_dir(tiny_model_dir, tokenizer_dir, tmp_path_factory):
    """``tiny`` with int8 weights as ``seekforge quantize`` writes it."""
    from seekforge.compress.quantize import QuantizeSettings, quantize_model, save_quantized
    from seekforge.model import load_model
    from seekforge.tokenizer import load_tokenizer

    model = load_model(str(tiny_model_dir), device="cpu", dtype=torch.float32)
    quantize_model(model, QuantizeSettings(method="int8"))
    out = tmp_path_factory.mktemp("q") / "tiny-int8"
    return save_quantized(model, out, tokenizer=load_tokenizer(tokenizer_dir))


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tokenizer_dir, tmp_path_factory):
    """A LoRA adapter of ``tiny`` as ``seekforge sft`` saves it (random non-zero B: it changes outputs)."""
    from seekforge.finetune.adapters import save_result
    from seekforge.finetune.methods import LoraSettings, apply_lora
    from seekforge.model import load_model
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(3)
    model = apply_lora(load_model(str(tiny_model_dir), device="cpu", dtype=torch.float32), "seekforge",
                       LoraSettings(rank=4, target_modules="attn"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("a") / "lora"
    return save_result(model, "seekforge", "lora", out, tokenizer=load_tokenizer(tokenizer_dir),
                       base_path=tiny_model_dir)


def test_serve_versions_from_the_command_line(tiny_model_dir, quantized_dir, adapter_dir, tmp_path) -> None:
    port = free_port()
    log = tmp_path / "requests.jsonl"
    cmd = [sys.executable, "-m", "seekforge", "serve", "--port", str(port), "--max-batch", "2",
           "--max-len", "96",
           "--model", f"plain={tiny_model_dir}", "--model", f"int8={quantized_dir}",
           "--model", f"lora={tiny_model_dir}+{adapter_dir}", "--route", "chat=plain:1,int8:1",
           "--admin-key", "adm", "--api-key", "user", "--request-log", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    user = {"Authorization": "Bearer user"}
    try:
        for _ in range(600):  # bounded: 60 s
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        models = httpx.get(url + "/v1/models", headers=user).json()["data"]
        assert [m["id"] for m in models] == ["chat", "plain", "int8", "lora"]
        echo = {"prompt": "the model learns to predict the next token", "max_tokens": 0, "echo": True,
                "logprobs": 1, "temperature": 0}
        lps = {}
        for name in ("plain", "int8", "lora"):
            r = httpx.post(url + "/v1/completions", headers=user, json={"model": name, **echo}, timeout=60)
            assert r.status_code == 200 and r.headers["x-seekforge-model"] == name, r.text
            lps[name] = torch.tensor(r.json()["choices"][0]["logprobs"]["token_logprobs"][1:])
        # int8 is close to the plain weights; the adapter really changes the model
        assert (lps["int8"] - lps["plain"]).abs().max() < 0.1
        assert (lps["lora"] - lps["plain"]).abs().max() > 0.1
        versions = httpx.get(url + "/admin/versions", headers={"Authorization": "Bearer adm"}).json()["data"]
        assert [v["source"] for v in versions] == [str(tiny_model_dir), str(quantized_dir),
                                                   f"{tiny_model_dir}+{adapter_dir}"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [json.loads(line)["version"] for line in log.read_text().splitlines()] == ["plain", "int8", "lora"]


def test_bad_flags_are_clear_errors(tiny_model_dir, capsys) -> None:
    for argv, message in [
        (["--model", "a"], "--model 'a': expected NAME=DIR"),
        (["--model", "a=/no/such/dir"], "model 'a': /no/such/dir is not a directory"),
        (["--model", f"a={tiny_model_dir}", "--route", "chat=a:x"], "weight 'x' of 'a' is not a number"),
        (["--model", f"a={tiny_model_dir}", "--shadow", "chat=a:2"], "the fraction must be in (0, 1]"),
        (["--model", f"a={tiny_model_dir}", "--canary", "chat=a,speed=1"], "unknown setting 'speed=1'"),
        (["--model", f"a={tiny_model_dir}", "--admin-key", "k", "--api-key", "k"], "must differ from every"),
        ([], "give a MODEL_DIR or at least one --model"),
    ]:
        assert main(["serve", *argv]) != 0
        assert message in capsys.readouterr().err, argv
