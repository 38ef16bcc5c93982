"""``seekforge serve`` as a real command: flags reach the engine and the server, then it stops cleanly."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import httpx

from .conftest import free_port


def test_serve_command(tiny_model_dir) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "seekforge", "serve", str(tiny_model_dir), "--port", str(port),
           "--max-batch", "2", "--max-len", "96", "--api-key", "k1,k2", "--set", "queue_size=3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # bounded: 30 s
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k2"}).json()
        assert models["data"][0]["id"] == "tiny-chat" and models["data"][0]["max_model_len"] == 96
        assert httpx.get(url + "/v1/models").status_code == 401
        metrics = httpx.get(url + "/metrics").text
        assert "seekforge:queue_capacity 3" in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_and_chat_ask_for_huge_pages_before_torch_loads(monkeypatch) -> None:
    import os

    from seekforge.cli import _modules_for

    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "x")  # records the original value for teardown
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    _modules_for(["train", "cfg.yaml"])
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ
    _modules_for(["-v", "serve", "model_dir"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # the user's own setting wins
    _modules_for(["chat", "model_dir"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    # The flag must be set before torch is imported: nothing on the way to the serve module may import it.
    code = "import sys, seekforge.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_serve_refuses_a_bad_safety_policy_before_loading_the_model(tmp_path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("categories: {insult: {terms: [idiot], severity: extreme}}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "seekforge", "serve", str(tmp_path / "no-model"), "--safety", str(bad)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "seekforge serve: error:" in r.stderr and str(bad) in r.stderr
    assert "categories.insult.severity" in r.stderr
