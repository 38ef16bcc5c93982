"""Several versions behind one real server: routes, shadow, canary rollback, admin API, hot swap, logs.

Faults (errors, slowness) are injected into a real model's decode step, so the server, the engine and
the HTTP client all run as in production; nothing of the server is replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import torch

from seekforge.infer import Engine, EngineConfig, SamplingParams
from seekforge.model import load_model
from seekforge.serve import ServerOptions, create_app
from seekforge.serve.canary import CanaryPolicy
from seekforge.serve.ops import OpsOptions
from seekforge.serve.routing import Route, Shadow
from seekforge.tokenizer import load_tokenizer

from .conftest import serve_app

CFG = EngineConfig(max_batch=4, max_len=256, queue_size=32)
MSGS = [{"role": "user", "content": "你好, tell me a story"}]


def make_engine(model_dir: Path, name: str, step_delay: float = 0.0, fail: bool = False,
                gate: threading.Event | None = None) -> Engine:
    """An engine over ``model_dir``; ``step_delay`` slows every decode step, ``fail`` makes it raise,
    ``gate`` holds every decode step until it is set."""
    model = load_model(str(model_dir), device="cpu", dtype=torch.float32)
    if step_delay or fail or gate is not None:
        decode = model.decode_step

        def faulty(*args, **kwargs):
            if fail:
                raise RuntimeError("injected fault")
            if gate is not None:
                gate.wait(60)
            time.sleep(step_delay)
            return decode(*args, **kwargs)

        model.decode_step = faulty
    return Engine(model, load_tokenizer(model_dir), dataclasses.replace(CFG), name=name)


def loader(spec) -> Engine:
    return Engine.from_pretrained(spec.model_dir, dataclasses.replace(CFG), name=spec.name)


@contextlib.contextmanager
def ops_server(engines: dict[str, Engine], api_keys: list[str] | None = None,
               **ops: object) -> Iterator[tuple[str, object]]:
    app = create_app(engines, ServerOptions(api_keys=api_keys or [], ops=OpsOptions(loader=loader, **ops)))
    try:
        with serve_app(app) as url:
            yield url, app.state.server
    finally:
        app.state.server.ops.close()
        for m in list(app.state.server.models.values()) + list(app.state.server.ops.draining):
            m.engine.close()


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_for(condition, seconds: float = 20.0) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < seconds, "timed out"
        time.sleep(0.02)


def test_route_pick_is_weighted_and_moves_only_the_moved_share() -> None:
    route = Route("chat", {"a": 90, "b": 10})
    users = [f"user-{i}" for i in range(20000)]
    before = {u: route.pick(u) for u in users}
    assert abs(sum(v == "a" for v in before.values()) / len(users) - 0.9) < 0.01
    route.set_weights({"a": 80, "b": 20})
    after = {u: route.pick(u) for u in users}
    assert all(after[u] == "b" for u in users if before[u] == "b")  # nobody leaves b
    assert abs(sum(before[u] != after[u] for u in users) / len(users) - 0.1) < 0.01
    assert Route("chat", {"a": 90, "b": 10}).pick("user-7") == before["user-7"]  # stable across objects


def test_routes_are_sticky_weighted_logged_and_measured(tiny_model_dir, other_model_dir, tmp_path) -> None:
    log = tmp_path / "requests.jsonl"
    keys = [f"key-{i}" for i in range(12)]
    engines = {"a": make_engine(tiny_model_dir, "a"), "b": make_engine(other_model_dir, "b")}
    routes = {"chat": {"a": 70, "b": 30}}
    with ops_server(engines, api_keys=keys, routes=routes, request_log=str(log)) as (url, _):
        auth = {"Authorization": f"Bearer {keys[0]}"}
        models = httpx.get(url + "/v1/models", headers=auth).json()["data"]
        assert [m["id"] for m in models] == ["chat", "a", "b"]  # the default (first route) first
        assert models[0]["route"]["weights"] == {"a": 70, "b": 30}
        client = openai.OpenAI(base_url=url + "/v1", api_key=keys[0], max_retries=0, timeout=60)
        want = Route("chat", {"a": 70, "b": 30})
        seen: dict[str, str] = {}
        for i in range(40):
            user = f"user-{i}"
            raw = client.completions.with_raw_response.create(model="chat", prompt="hi", max_tokens=1,
                                                              user=user)
            chat = client.chat.completions.with_raw_response.create(model="chat", messages=MSGS, max_tokens=1,
                                                                    user=user)
            version = raw.headers["x-seekforge-model"]
            assert chat.headers["x-seekforge-model"] == version == want.pick(user)  # sticky, stable hash
            assert raw.parse().model == version
            seen[user] = version
        assert 0.5 <= sum(v == "a" for v in seen.values()) / len(seen) <= 0.9
        for key in keys:  # no `user`: the API key decides
            r = httpx.post(url + "/v1/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "chat", "prompt": "hi", "max_tokens": 1})
            assert r.headers["x-seekforge-model"] == want.pick(key)
        r = httpx.post(url + "/v1/completions", headers=auth,
                       json={"model": "b", "prompt": "hi", "max_tokens": 1})
        assert r.headers["x-seekforge-model"] == "b"  # a version by name
        bad = httpx.post(url + "/v1/completions", headers=auth, json={"model": "nope", "prompt": "hi"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "model_not_found"
        assert "'chat'" in bad.json()["error"]["message"]
        assert httpx.get(url + "/admin/routes", headers=auth).status_code == 403  # no --admin-key: off
        # feedback (the chat page's thumbs) is tied to the version that answered
        answer = client.chat.completions.with_raw_response.create(model="chat", messages=MSGS, max_tokens=2,
                                                                  user="user-1")
        fb = httpx.post(url + "/v1/feedback", headers=auth, json={"id": answer.parse().id, "rating": "up"})
        assert fb.status_code == 200 and fb.json()["version"] == seen["user-1"]
        assert httpx.post(url + "/v1/feedback", headers=auth, json={"id": "chatcmpl-x", "rating": "up"}
                          ).status_code == 404
        assert httpx.post(url + "/v1/feedback", headers=auth, json={"id": answer.parse().id, "rating": 5}
                          ).json()["error"]["param"] == "rating"
        metrics = httpx.get(url + "/metrics").text
        n_a = sum(v == "a" for v in seen.values()) * 2 + sum(want.pick(k) == "a" for k in keys) + (
            seen["user-1"] == "a")
        assert f'seekforge_requests_total{{route="chat",status="200",version="a"}} {n_a:.1f}' in metrics
        assert 'seekforge_version_cache_slots{version="b"} 4.0' in metrics
        assert 'seekforge_route_weight{route="chat",version="a"} 0.7' in metrics
        assert "# TYPE seekforge_blocked_requests_total counter" in metrics
        assert httpx.get(url + "/ready").json()["status"] == "ready"
    records = read_log(log)
    requests = [r for r in records if r["event"] == "request"]
    assert len(requests) == 40 * 2 + len(keys) + 2  # the unknown-model 400 has no version: not logged
    assert all(r["status"] == 200 and r["completion_tokens"] >= 1 and r["ttft_s"] > 0 for r in requests)
    assert {r["route"] for r in requests} == {"chat", None}
    assert [r["rating"] for r in records if r["event"] == "feedback"] == ["up"]


def test_shadow_is_logged_never_returned_and_never_waited_for(tiny_model_dir, other_model_dir,
                                                              tmp_path) -> None:
    shadow_log = tmp_path / "shadow.jsonl"
    engines = {"a": make_engine(tiny_model_dir, "a"), "s": make_engine(other_model_dir, "s", step_delay=0.3)}
    with ops_server(engines, routes={"chat": {"a": 1}}, shadows={"chat": Shadow("s", 1.0)},
                    shadow_log=str(shadow_log)) as (url, state):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        extra = {"ignore_eos": True}
        answers, elapsed = [], []
        for stream in (False, True, False):
            t0 = time.perf_counter()
            if stream:
                raw = client.chat.completions.with_raw_response.create(
                    model="chat", messages=MSGS, max_tokens=8, temperature=0, stream=True, extra_body=extra)
                chunks = list(raw.parse())
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                model = chunks[0].model
            else:
                raw = client.chat.completions.with_raw_response.create(
                    model="chat", messages=MSGS, max_tokens=8, temperature=0, extra_body=extra)
                text, model = raw.parse().choices[0].message.content, raw.parse().model
            elapsed.append(time.perf_counter() - t0)
            assert raw.headers["x-seekforge-model"] == model == "a"
            answers.append(text)
        wait_for(lambda: shadow_log.is_file() and len(shadow_log.read_text().splitlines()) == 3)
        shadow_engine = state.models["s"].engine
    shadow_text = shadow_engine.tokenizer.decode(
        make_engine(other_model_dir, "s2").generate(
            [shadow_engine.chat_prompt(MSGS)], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
        )[0].token_ids)
    records = read_log(shadow_log)
    assert [r["live"] for r in records] == answers
    for r, live_seconds in zip(records, elapsed):
        assert r["live_version"] == "a" and r["shadow_version"] == "s" and r["shadow_error"] is None
        assert r["shadow"] == shadow_text and r["request"]["messages"] == MSGS
        assert live_seconds < r["shadow_latency_s"]  # 7 decode steps of >= 0.3 s: live never waited


def _call(url: str, user: str, stream: bool) -> tuple[str, bool]:
    """(version, ok) of one chat request."""
    body = {"model": "chat", "messages": MSGS, "max_tokens": 6, "ignore_eos": True, "user": user,
            "stream": stream}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    ok = r.status_code == 200 and (not stream or '"error"' not in r.text and r.text.endswith("[DONE]\n\n"))
    return r.headers["x-seekforge-model"], ok


def test_canary_rolls_back_on_errors(tiny_model_dir, other_model_dir, tmp_path) -> None:
    log = tmp_path / "requests.jsonl"
    engines = {"a": make_engine(tiny_model_dir, "a"), "b": make_engine(other_model_dir, "b", fail=True)}
    canary = CanaryPolicy("chat", "b", min_requests=4, max_error_rate=0.25)
    with ops_server(engines, routes={"chat": {"a": 50, "b": 50}}, canaries=[canary], request_log=str(log),
                    admin_key="adm") as (url, _):
        results = [_call(url, f"u{i}", stream=i % 2 == 1) for i in range(40)]
        failed = [i for i, (v, ok) in enumerate(results) if not ok]
        assert all(results[i][0] == "b" for i in failed) and len(failed) == 4  # the 4th b request tripped it
        assert all(v == "a" for v, _ in results[failed[-1] + 1:])
        assert any(Route("chat", {"a": 50, "b": 50}).pick(f"u{i}") == "b" for i in range(failed[-1] + 1, 40))
        routes = httpx.get(url + "/admin/routes", headers={"Authorization": "Bearer adm"}).json()["data"]
        assert routes[0]["weights"] == {"a": 1.0} and routes[0]["rolled_back"]
        metrics = httpx.get(url + "/metrics").text
        assert 'seekforge_rollbacks_total{reason="error_rate",route="chat"} 1.0' in metrics
    events = [r for r in read_log(log) if r["event"] == "rollback"]
    assert len(events) == 1 and events[0]["to"] == "a" and "error_rate 1 crossed 0.25" in events[0]["detail"]


def test_canary_rolls_back_on_latency(tiny_model_dir, other_model_dir) -> None:
    engines = {"a": make_engine(tiny_model_dir, "a"), "b": make_engine(other_model_dir, "b", step_delay=0.1)}
    canary = CanaryPolicy("chat", "b", min_requests=2, max_p95_latency_s=0.3)
    routes = {"chat": {"a": 50, "b": 50}}
    with ops_server(engines, routes=routes, canaries=[canary], admin_key="adm") as (url, _):
        results = [_call(url, f"u{i}", stream=False) for i in range(30)]
        assert all(ok for _, ok in results)
        b_calls = [i for i, (v, _) in enumerate(results) if v == "b"]
        assert len(b_calls) == 2 and all(v == "a" for v, _ in results[b_calls[-1] + 1:])
        events = httpx.get(url + "/admin/events", headers={"Authorization": "Bearer adm"}).json()["data"]
        assert [e["reason"] for e in events if e["event"] == "rollback"] == ["p95_latency_s"]


def test_quality_probe_scores_versions_and_rolls_back(tiny_model_dir, other_model_dir, tmp_path) -> None:
    probe = tmp_path / "probe.jsonl"
    probe.write_text("\n".join(json.dumps({"prompt": p, "reference": r}, ensure_ascii=False) for p, r in
                               [("1+1=", "2"), ("春眠不觉晓", "处处闻啼鸟")]) + "\n", encoding="utf-8")
    log = tmp_path / "requests.jsonl"
    engines = {"a": make_engine(tiny_model_dir, "a"), "b": make_engine(other_model_dir, "b")}
    canary = CanaryPolicy("chat", "b", probe=str(probe), probe_every_s=3600, probe_max_tokens=4,
                          min_probe_score=101.0)  # above the scale's 100: the probe must fail
    with ops_server(engines, routes={"chat": {"a": 50, "b": 50}}, canaries=[canary],
                    request_log=str(log)) as (_, state):
        scores = state.ops.probe_once(state.ops.canaries["chat"])
        assert set(scores) == {"a", "b"} and all(0 <= s <= 100 for s in scores.values())
        assert state.ops.routes["chat"].weights == {"a": 1.0}
    records = read_log(log)
    assert [(r["version"], r["metric"]) for r in records if r["event"] == "probe"] == [("a", "rougeL"),
                                                                                        ("b", "rougeL")]
    assert [r["reason"] for r in records if r["event"] == "rollback"] == ["probe_rougeL"]


def test_admin_api_needs_the_admin_key_and_changes_routes(tiny_model_dir, other_model_dir) -> None:
    engines = {"a": make_engine(tiny_model_dir, "a"), "b": make_engine(other_model_dir, "b")}
    with ops_server(engines, api_keys=["user-key"], routes={"chat": {"a": 50, "b": 50}},
                    admin_key="admin-key") as (url, _):
        def admin(method: str, path: str, key: str | None = "admin-key", **kw) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.request(method, url + path, headers=headers, timeout=60, **kw)

        for key, status, code in [(None, 401, "invalid_api_key"), ("user-key", 403, "admin_key_required"),
                                  ("guess", 401, "invalid_api_key")]:
            r = admin("GET", "/admin/routes", key)
            assert r.status_code == status and r.json()["error"]["code"] == code, r.text
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert admin("PUT", "/admin/routes/chat", "user-key", json={"weights": {"b": 1}}).status_code == 403
        # the admin key is not a user key either
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer admin-key"}).status_code == 401
        assert admin("GET", "/admin/routes").json()["data"][0]["weights"] == {"a": 50, "b": 50}
        user = {"Authorization": "Bearer user-key"}

        def version_for(user_id: str, model: str = "chat") -> str:
            body = {"model": model, "prompt": "hi", "max_tokens": 1, "user": user_id}
            r = httpx.post(url + "/v1/completions", headers=user, json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.headers["x-seekforge-model"]

        assert admin("PUT", "/admin/routes/chat", json={"weights": {"a": 0, "b": 1}}).status_code == 200
        assert {version_for(f"u{i}") for i in range(8)} == {"b"}
        assert admin("POST", "/admin/routes/chat/promote", json={"version": "a"}).json()["stable"] == "a"
        assert {version_for(f"u{i}") for i in range(8)} == {"a"}
        both = admin("PUT", "/admin/routes/chat", json={"weights": "a:1,b:1"})
        assert both.json()["weights"] == {"a": 1, "b": 1}
        assert admin("POST", "/admin/routes/chat/rollback").json()["weights"] == {"a": 1.0}
        bad = admin("PUT", "/admin/routes/chat", json={"weights": {"zz": 1}})
        assert bad.status_code == 400 and "zz" in bad.json()["error"]["message"]
        assert admin("POST", "/admin/routes/none/rollback").status_code == 404
        # new route, new version
        assert admin("PUT", "/admin/routes/exp", json={"weights": {"b": 1}}).status_code == 200
        r = admin("POST", "/admin/versions", json={"name": "c", "model": str(other_model_dir)})
        assert r.status_code == 200, r.text
        assert version_for("u1", "c") == "c" and version_for("u1", "exp") == "b"
        assert admin("POST", "/admin/versions", json={"name": "c", "model": str(other_model_dir)}
                     ).status_code == 409
        r = admin("POST", "/admin/versions", json={"name": "d", "model": "/no/such/dir"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        ids = [m["id"] for m in httpx.get(url + "/v1/models", headers=user).json()["data"]]
        assert ids == ["chat", "a", "b", "c", "exp"]
        kinds = [e["event"] for e in admin("GET", "/admin/events").json()["data"]]
        assert kinds == ["weights", "promote", "weights", "rollback", "weights", "load"]


def test_hot_swap_drains_in_flight_requests(tiny_model_dir, other_model_dir, tmp_path) -> None:
    gate = threading.Event()  # holds the old engine's decode steps: its requests stay in flight
    gate.set()
    old = make_engine(tiny_model_dir, "a", gate=gate)
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    old_text = old.generate([old.chat_prompt(MSGS)], params)[0].text
    gate.clear()
    with ops_server({"a": old}, admin_key="adm", request_log=str(tmp_path / "r.jsonl")) as (url, state):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        started = [threading.Event() for _ in range(4)]
        results: list[tuple[str, str | None, int] | None] = [None] * 4

        def stream(i: int) -> None:
            chunks = client.chat.completions.create(
                model="a", messages=MSGS, max_tokens=24, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            text, finish, tokens = "", None, 0
            for c in chunks:
                started[i].set()
                if c.choices:
                    text += c.choices[0].delta.content or ""
                    finish = c.choices[0].finish_reason or finish
                if c.usage:
                    tokens = c.usage.completion_tokens
            results[i] = (text, finish, tokens)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for e in started:
            assert e.wait(30)
        assert state.models["a"].inflight == 4
        r = httpx.post(url + "/admin/versions/a/swap", headers={"Authorization": "Bearer adm"},
                       json={"model": str(other_model_dir)}, timeout=60)
        assert r.status_code == 200 and r.json()["draining"] == 1, r.text
        assert state.models["a"].engine is not old and old.is_alive()  # the old one still answers
        new = client.chat.completions.create(model="a", messages=MSGS, max_tokens=24, temperature=0,
                                             extra_body={"ignore_eos": True})
        want_new = state.models["a"].engine.generate([old.chat_prompt(MSGS)], params)[0].text
        assert new.choices[0].message.content == want_new != old_text
        assert state.models["a"].inflight == 0 and len(state.ops.draining) == 1
        gate.set()
        for t in threads:
            t.join(60)
        assert results == [(old_text, "length", 24)] * 4  # nothing truncated, nothing cut over mid-answer
        # the engine closes first, then the drain is recorded: wait for the record
        wait_for(lambda: any(e["event"] == "drained" for e in state.ops.events))
        assert not old.is_alive()
        drained = [e for e in state.ops.events if e["event"] == "drained"]
        assert len(drained) == 1 and drained[0]["cut_off"] == 0


def test_client_disconnect_is_logged_and_releases_the_version(tiny_model_dir, tmp_path) -> None:
    log = tmp_path / "requests.jsonl"
    engine = make_engine(tiny_model_dir, "a", step_delay=0.05)
    with ops_server({"a": engine}, request_log=str(log)) as (url, state):
        body = {"model": "a", "messages": MSGS, "max_tokens": 100, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.headers["x-seekforge-model"] == "a"
            next(r.iter_raw())  # the first event, then hang up
        wait_for(lambda: state.models["a"].inflight == 0 and engine.num_running() == 0)
        wait_for(lambda: log.is_file() and log.read_text())
    (record,) = read_log(log)
    assert record["status"] == 499 and record["version"] == "a" and record["completion_tokens"] < 100
