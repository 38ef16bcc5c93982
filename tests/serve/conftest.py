"""A real uvicorn server on 127.0.0.1 (free port) in a thread, over the tiny model."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

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
def run_server(model_dir, engine_cfg: EngineConfig,
               options: ServerOptions | None = None) -> Iterator[RunningServer]:
    engine = Engine.from_pretrained(model_dir, engine_cfg, name="tiny-chat")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, options), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
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
        yield RunningServer(url, engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


@pytest.fixture(scope="session")
def server(tiny_model_dir) -> Iterator[RunningServer]:
    with run_server(tiny_model_dir, EngineConfig(max_batch=4, max_len=256, queue_size=16)) as s:
        yield s
