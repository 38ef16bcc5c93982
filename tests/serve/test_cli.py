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
