"""A real uvicorn server on 127.0.0.1 (free port) in a thread, over the tiny model."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from seekforge.infer import Engine, EngineConfig
from seekforge.serve import ServerOptions, create_app


@dataclass
class RunningServer:
    url: str
    engine: Engine

    @property
    def api(self) -> str:
        return self.url + "/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # bounded: 10 s
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def run_server(model_dir, engine_cfg: EngineConfig,
               options: ServerOptions | None = None) -> Iterator[RunningServer]:
    engine = Engine.from_pretrained(model_dir, engine_cfg, name="tiny-chat")
    try:
        with serve_app(create_app(engine, options)) as url:
            yield RunningServer(url, engine)
    finally:
        engine.close()


@pytest.fixture(scope="session")
def server(tiny_model_dir) -> Iterator[RunningServer]:
    with run_server(tiny_model_dir, EngineConfig(max_batch=4, max_len=256, queue_size=16)) as s:
        yield s


@pytest.fixture(scope="session")
def other_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A second ``tiny`` model (seed 1) with the same tokenizer: another "version" to route to."""
    import torch

    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(1)
    model = load_model("tiny", device="cpu", dtype=torch.float32)
    out = tmp_path_factory.mktemp("models") / "tiny-b"
    return save_model(model, out, tokenizer=load_tokenizer(tokenizer_dir))
