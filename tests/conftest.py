"""Shared test fixtures. Data from ../shared/data is read in place (never copied into the repo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (tinyshakespeare, wiki/c4 samples, Tang poems, SFT demo sets)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def _random_tiny_v4(seed: int = 0):
    """tiny-v4 in eval mode with the zero-initialised parts (attention sinks, block position biases,
    mHC biases, router biases) randomised, so that a wrong formula in any of them shows."""
    import torch

    from seekforge.model.v4 import build_v4
    from seekforge.model.v4_config import v4_preset

    torch.manual_seed(seed)
    model = build_v4(v4_preset("tiny-v4")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("sinks", "position_bias", ".base", "hc_base")):
                p.normal_(0, 0.5)
        for layer in model.moe_layers:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.1)
    return model


@pytest.fixture(scope="session")
def random_v4():
    """``random_v4(seed=0)``: a fresh tiny-v4 whose sinks and biases are random (see above)."""
    return _random_tiny_v4


def _tokenizer_corpus() -> list[str]:
    """~130 KB of English + Chinese text: shared samples if present, else generated sentences."""
    import json
    import random

    pretrain = SHARED_DATA / "pretrain"
    if (pretrain / "c4_demo.jsonl").is_file() and (pretrain / "tang_poems.jsonl").is_file():
        with open(pretrain / "c4_demo.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for _, line in zip(range(40), f)]
        with open(pretrain / "tang_poems.jsonl", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(200), f)]
        return texts
    rng = random.Random(0)
    en = "the model learns to predict the next token from data and code with 123 steps".split()
    zh = list("我们用数据训练一个语言模型它学会预测下一个词元中文和英文都要好")
    return [" ".join(rng.choices(en, k=40)) + ". " + "".join(rng.choices(zh, k=60)) + "。\n"
            for _ in range(400)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer dir, vocab 512 (the ``tiny`` preset), with the chat template.

    Trained once per test session in well under a second; load it with
    ``seekforge.tokenizer.load_tokenizer(tokenizer_dir)``. bos=0, eos=1, pad=2.
    """
    from seekforge.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer") / "tok512"
    return train_tokenizer(_tokenizer_corpus(), vocab_size=512, out_dir=out)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised ``tiny`` model (seed 0, float32, with its MTP layer) saved together with
    the ``tokenizer_dir`` tokenizer: a complete model directory for inference/serving tests."""
    import torch

    from seekforge.model import load_model, save_model
    from seekforge.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(tokenizer_dir)
    model = load_model("tiny", device="cpu", dtype=torch.float32)
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny-chat", tokenizer=tok)


# Runs before any test imports torch (conftest is loaded first; nothing above imports torch).
# PyTorch's OpenMP threads spin while they wait for each other; on a machine with more runnable
# threads than cores (parallel test runs, other jobs) a descheduled thread then stalls every small op:
# measured here with 2 threads under load 5, one 512x64 grouped matmul took 218 ms instead of 0.3 ms.
# PASSIVE makes waiting threads sleep (docs/LOG.md, trainer notes). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# --------------------------------------------------------------------------- OpenAI-compatible endpoints
# For the model client (seekforge.llm_client) and the commands that call a model (data augment/synth,
# distill): real HTTP servers on 127.0.0.1 in a thread, never a mocked transport.

TINY_API_KEY = "sk-tiny-test"


@dataclass
class TinyEndpoint:
    url: str  # the /v1 base URL
    api_key: str
    model: str


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_in_thread(app):
    """Start ``app`` with uvicorn on a free port; returns (base URL, stop function)."""
    import contextlib
    import threading
    import time

    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):  # bounded: 10 s
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v1/models", timeout=1, headers={"Authorization": f"Bearer {TINY_API_KEY}"}
                         ).status_code in (200, 401):
                break
        time.sleep(0.05)
    else:
        raise RuntimeError("test server did not start")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return url, stop


@pytest.fixture(scope="session")
def tiny_endpoint(tiny_model_dir):
    """``seekforge serve``'s app over the tiny model, behind an API key; yields a ``TinyEndpoint``."""
    from seekforge.infer import Engine, EngineConfig
    from seekforge.serve import ServerOptions, create_app

    engine = Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch=8, max_len=256, queue_size=64),
                                    name="tiny-chat")
    url, stop = _serve_in_thread(create_app(engine, ServerOptions(api_keys=[TINY_API_KEY])))
    try:
        yield TinyEndpoint(url + "/v1", TINY_API_KEY, "tiny-chat")
    finally:
        stop()
        engine.close()


class ScriptedServer:
    """A small OpenAI-compatible ASGI app whose answers and failures a test scripts.

    ``reply(body) -> str`` makes the answer of a chat request; ``fail(body, attempt) -> int | None``
    returns an HTTP status (429, 500, ...) to fail that attempt of that request with (attempts of
    one request body are counted from 0). It measures the requests in flight at once.
    """

    def __init__(self, reply, fail=None, delay_s: float = 0.0, model: str = "scripted",
                 retry_after: str | None = None):
        import threading

        self.reply, self.fail, self.delay_s, self.model = reply, fail, delay_s, model
        self.retry_after = retry_after  # sent as Retry-After with every failure
        self.requests = 0
        self.in_flight = self.max_in_flight = 0
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    def app(self):
        import asyncio
        import json

        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "test"}]})

        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            key = json.dumps(body, sort_keys=True)
            with self.lock:
                self.requests += 1
                attempt = self.attempts.get(key, 0)
                self.attempts[key] = attempt + 1
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s)
                status = self.fail(body, attempt) if self.fail else None
                if status:
                    headers = {"retry-after": self.retry_after} if self.retry_after else None
                    return JSONResponse({"error": {"message": f"scripted {status}", "type": "server_error",
                                                   "param": None, "code": None}}, status_code=status,
                                        headers=headers)
                text = self.reply(body)
                prompt = sum(len(m["content"]) for m in body["messages"])
                return JSONResponse({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": self.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": len(text),
                              "total_tokens": prompt + len(text)}})
            finally:
                with self.lock:
                    self.in_flight -= 1

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat,
                                                                     methods=["POST"])])


@pytest.fixture
def scripted_server():
    """``scripted_server(reply, fail=None, delay_s=0.0, retry_after=None)`` -> (ScriptedServer, its /v1 URL);
    stopped after the test."""
    stops = []

    def start(reply, fail=None, delay_s: float = 0.0, retry_after: str | None = None):
        server = ScriptedServer(reply, fail, delay_s, retry_after=retry_after)
        url, stop = _serve_in_thread(server.app())
        stops.append(stop)
        return server, url + "/v1"

    yield start
    for stop in stops:
        stop()
