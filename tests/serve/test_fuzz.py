"""Schema fuzzing with schemathesis: requests generated from the server's own ``/openapi.json``, both
valid per the schema and deliberately invalid, against a real server with a content-safety policy.

The checks: no response is a 5xx, and every 4xx is in OpenAI's error shape. The run is bounded
(small context, few examples per operation) to stay under a minute here; set
``SEEKFORGE_FUZZ_EXAMPLES=500`` for a longer local run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from seekforge.infer import EngineConfig
from seekforge.serve import ServerOptions
from seekforge.serve.safety import SafetyPolicy

from .conftest import run_server

schemathesis = pytest.importorskip("schemathesis")  # the dev extra
GenerationMode = schemathesis.GenerationMode

EXAMPLES = int(os.environ.get("SEEKFORGE_FUZZ_EXAMPLES", "8"))


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir):
    # A short context bounds every generation (max_tokens beyond it is a 400), so examples stay fast.
    policy = SafetyPolicy.from_dict({"categories": {"insult": ["idiot", "白痴"]},
                                     "hold_chars": 4})
    opts = ServerOptions(safety=policy, ping_seconds=5.0)
    with run_server(tiny_model_dir, EngineConfig(max_batch=4, max_len=48, queue_size=64), opts) as s:
        yield s


def check_openai_shape(response, case) -> None:
    status = response.status_code
    assert status < 500, f"{case.method} {case.path} -> {status}: {response.text[:500]}"
    if status >= 400:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, response.text[:500]
        assert isinstance(err["message"], str) and err["message"]


def test_fuzz_openapi(fuzz_server) -> None:
    # (schemathesis' own pytest integration needs a pytest private attribute that pytest 9 removed, so
    # the strategies are driven with hypothesis directly.)
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/moderations"}
    for op in operations:
        # Valid requests, and for the operations with a body also schema-breaking ones.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if op.method.upper() == "POST" else [])
        for mode in modes:

            @given(op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def one(case) -> None:
                check_openai_shape(case.call(base_url=fuzz_server.url, timeout=60), case)

            one()
