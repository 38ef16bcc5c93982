"""seekforge.llm_client against real endpoints: ``seekforge serve`` on the tiny model (preflight, cache,
usage) and a scripted ASGI server that fails on purpose (retries, concurrency, failures)."""

from __future__ import annotations

import argparse

import pytest

from seekforge.llm_client import (
    EndpointConfig,
    EndpointError,
    LLMClient,
    MinuteBudget,
    add_endpoint_args,
    endpoint_from_args,
    estimate_tokens,
    request_key,
)


def _client(endpoint, tmp_path=None, **kw) -> LLMClient:
    cfg = EndpointConfig(
        endpoint=endpoint.url,
        api_key=endpoint.api_key,
        model=endpoint.model,
        cache=str(tmp_path / "cache.sqlite") if tmp_path else None,
        **kw,
    )
    return LLMClient(cfg)


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_preflight_names_what_is_wrong(tiny_endpoint, monkeypatch):
    monkeypatch.delenv("SEEKFORGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ok = LLMClient(EndpointConfig(tiny_endpoint.url, api_key=tiny_endpoint.api_key))
    assert ok.preflight() == "tiny-chat"  # no --model: the first one listed
    with pytest.raises(EndpointError, match="refused the API key"):
        LLMClient(EndpointConfig(tiny_endpoint.url, api_key="sk-wrong")).preflight()
    with pytest.raises(EndpointError, match="refused the API key"):
        LLMClient(EndpointConfig(tiny_endpoint.url)).preflight()  # no key anywhere
    monkeypatch.setenv("SEEKFORGE_API_KEY", tiny_endpoint.api_key)  # the key from the environment
    assert LLMClient(EndpointConfig(tiny_endpoint.url)).preflight() == "tiny-chat"
    with pytest.raises(EndpointError, match=r"model 'gpt-9' is not served by .*it lists: tiny-chat"):
        LLMClient(EndpointConfig(tiny_endpoint.url, model="gpt-9")).preflight()
    with pytest.raises(EndpointError, match="cannot reach the endpoint"):
        LLMClient(EndpointConfig(f"http://127.0.0.1:{_unused_port()}/v1", timeout_s=5)).preflight()
    with pytest.raises(EndpointError, match="expected an http"):
        EndpointConfig("localhost:8000").validate()


def test_shared_flags_and_url_without_v1(monkeypatch):
    p = argparse.ArgumentParser()
    add_endpoint_args(p)
    add_endpoint_args(p, prefix="judge-")
    args = p.parse_args(
        [
            "--endpoint",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--api-key",
            "k",
            "--concurrency",
            "3",
            "--rpm",
            "60",
            "--judge-model",
            "j",
        ]
    )
    cfg = endpoint_from_args(args)
    assert (cfg.base_url, cfg.model, cfg.resolved_api_key(), cfg.concurrency, cfg.rpm) == (
        "http://127.0.0.1:9/v1",
        "m",
        "k",
        3,
        60,
    )
    judge = endpoint_from_args(args, prefix="judge-")  # same endpoint and key, its own model
    assert (judge.base_url, judge.model, judge.resolved_api_key()) == ("http://127.0.0.1:9/v1", "j", "k")
    with pytest.raises(EndpointError, match="--concurrency"):
        endpoint_from_args(p.parse_args(["--endpoint", "http://x", "--concurrency", "0"]))


def test_cache_makes_the_second_run_free(tiny_endpoint, tmp_path):
    requests = [
        ([{"role": "user", "content": f"count to {i}"}], {"max_tokens": 8, "temperature": 0})
        for i in range(5)
    ]
    with _client(tiny_endpoint, tmp_path, price_prompt=1.0, price_completion=2.0) as first:
        answers = first.chat_many(requests)
        report = first.report()
    assert all(a is not None and not a.cached for a in answers)
    assert report["requests"] == 5 and report["cache_hits"] == 0 and report["failed"] == 0
    assert report["prompt_tokens"] > 0 and report["completion_tokens"] > 0
    assert report["cost"] == pytest.approx((report["prompt_tokens"] + 2 * report["completion_tokens"]) / 1e6)
    with _client(tiny_endpoint, tmp_path) as second:
        again = second.chat_many(requests)
        report2 = second.report()
    assert report2["requests"] == 0 and report2["cache_hits"] == 5  # zero calls the second time
    assert [a.text for a in again] == [a.text for a in answers] and all(a.cached for a in again)
    # The key is the full request: another parameter is another request.
    assert request_key("m", {"messages": [], "seed": 1}) != request_key("m", {"messages": [], "seed": 2})
    assert request_key("m", {"a": 1, "b": 2}) == request_key("m", {"b": 2, "a": 1})


def test_completions_and_moderations_share_the_cache_and_report(tiny_endpoint, tmp_path):
    """``complete`` (eval's log-likelihood requests: token-id prompts, echo, logprobs) is cached and
    counted like chat; ``moderate`` is counted, never cached."""
    request = {"prompt": [[5, 6, 7, 8], [9, 10]], "max_tokens": 1, "logprobs": 1, "echo": True,
               "temperature": 0}
    with _client(tiny_endpoint, tmp_path) as first:
        reply = first.complete(request)
        report = first.report()
    lps = [c["logprobs"]["token_logprobs"] for c in sorted(reply["choices"], key=lambda c: c["index"])]
    assert [len(x) for x in lps] == [5, 3] and lps[0][0] is None and all(v < 0 for v in lps[0][1:])
    assert report["requests"] == 1 and report["prompt_tokens"] == 6
    with _client(tiny_endpoint, tmp_path) as second:
        assert second.complete(request) == reply and second.report()["requests"] == 0
    assert estimate_tokens(request) == 6 + 1 + 1  # token ids counted exactly, + the completion budget
    assert estimate_tokens({"input": ["abcdef"]}) == 3  # moderation: no completion budget


def test_retries_with_backoff_and_concurrency_limit(scripted_server):
    # Every request fails twice (429, then 500) and then succeeds.
    server, url = scripted_server(
        lambda body: "ok " + body["messages"][0]["content"],
        fail=lambda body, attempt: (429, 500)[attempt] if attempt < 2 else None,
        delay_s=0.05,
    )
    sleeps: list[float] = []
    client = LLMClient(EndpointConfig(url, concurrency=4, max_retries=3, backoff_s=0.01), sleep=sleeps.append)
    answers = client.chat_many([([{"role": "user", "content": str(i)}], {}) for i in range(12)])
    assert [a.text for a in answers] == [f"ok {i}" for i in range(12)]
    u = client.usage
    assert (u.requests, u.retries, u.succeeded, u.failed) == (36, 24, 12, 0)
    assert server.requests == 36
    assert len(sleeps) == 24 and all(0 <= s <= 0.02 for s in sleeps)  # full jitter within the cap
    assert server.max_in_flight == 4  # the limit is reached and never exceeded


def test_gives_up_after_max_retries_and_counts_failures(scripted_server):
    server, url = scripted_server(lambda body: "x", fail=lambda body, attempt: 503)
    client = LLMClient(EndpointConfig(url, concurrency=2, max_retries=2, backoff_s=0.0))
    assert client.chat_many([([{"role": "user", "content": str(i)}], {}) for i in range(3)]) == [None] * 3
    assert (client.usage.requests, client.usage.failed, client.usage.errors) == (9, 3, {"HTTP 503": 3})
    # a 4xx other than 429 is the request's fault: no retry
    server2, url2 = scripted_server(lambda body: "x", fail=lambda body, attempt: 400)
    c2 = LLMClient(EndpointConfig(url2, max_retries=5))
    assert c2.chat_many([([{"role": "user", "content": "a"}], {})]) == [None]
    assert (c2.usage.requests, c2.usage.failed) == (1, 1) and server2.requests == 1


def test_minute_budget_waits_for_the_window():
    now = [100.0]
    budget = MinuteBudget(rpm=2, tpm=1000, clock=lambda: now[0])
    budget.acquire(10)
    now[0] = 110.0
    ticket = budget.acquire(10)
    assert budget._wait_s(now[0], 10) == pytest.approx(50.0)  # a third request waits for the first to age out
    now[0] = 160.0
    assert budget._wait_s(now[0], 10) == 0.0
    budget.settle(ticket, 900)  # the real usage replaces the estimate
    assert budget._wait_s(now[0], 200) == pytest.approx(10.0)  # 900 + 200 > 1000 until t=170
    assert budget._wait_s(now[0], 5000) == pytest.approx(10.0)  # bigger than the budget: alone, when empty
    assert MinuteBudget(rpm=0, tpm=0).acquire(10**9)  # no budgets: never waits


def test_retry_after_is_honoured(scripted_server):
    _, url = scripted_server(lambda body: "ok", fail=lambda body, attempt: 429 if attempt == 0 else None,
                             retry_after="7")
    sleeps: list[float] = []
    client = LLMClient(EndpointConfig(url, backoff_s=0.01), sleep=sleeps.append)
    assert client.chat([{"role": "user", "content": "x"}]).text == "ok"
    assert sleeps == [7.0] and client.usage.retries == 1
