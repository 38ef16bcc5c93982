"""Operator tools of a real server: unloading a version (DELETE /admin/versions/NAME), request-log
rotation under concurrent writers (and ``seekforge ab-report`` over the rotated files), and the remote
safety classifier's call counters in ``/metrics``."""

from __future__ import annotations

import gc
import json
import random
import socket
import threading
import weakref

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seekforge.cli import main
from seekforge.infer import EngineConfig
from seekforge.serve import ServerOptions
from seekforge.serve.abreport import report
from seekforge.serve.ops import JsonlLog
from seekforge.serve.routing import Shadow
from seekforge.serve.safety import SafetyPolicy

from .conftest import run_server
from .test_ops import MSGS, make_engine, ops_server, read_log, wait_for

ADMIN = {"Authorization": "Bearer adm"}


def test_delete_version_drains_frees_and_refuses_what_is_in_use(tiny_model_dir, other_model_dir,
                                                                tmp_path) -> None:
    gate = threading.Event()  # holds a's decode steps: the stream to a stays in flight
    log = tmp_path / "r.jsonl"
    engines = {"a": make_engine(tiny_model_dir, "a", gate=gate), "b": make_engine(other_model_dir, "b")}
    with ops_server(engines, api_keys=["user"], routes={"chat": {"a": 1, "b": 1}}, default_model="chat",
                    admin_key="adm", request_log=str(log)) as (url, state):
        engines.clear()  # from here on only the server holds the engines
        def admin(method: str, path: str, key: str = "adm", **kw) -> httpx.Response:
            return httpx.request(method, url + path, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                 **kw)

        # the admin key, as for the other admin calls
        for key, status in [("user", 403), ("guess", 401)]:
            r = admin("DELETE", "/admin/versions/a", key)
            assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = admin("DELETE", "/admin/versions/zz")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        # a stream to a, routed there by the route (pick a user the route sends to a)
        user = next(f"u{i}" for i in range(100) if state.ops.routes["chat"].pick(f"u{i}") == "a")
        client = openai.OpenAI(base_url=url + "/v1", api_key="user", max_retries=0, timeout=60)
        started, result = threading.Event(), {}

        def stream() -> None:
            chunks = client.chat.completions.create(
                model="chat", messages=MSGS, max_tokens=12, temperature=0, stream=True, user=user,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            text, finish, tokens = "", None, 0
            for c in chunks:
                started.set()
                if c.choices:
                    text += c.choices[0].delta.content or ""
                    finish = c.choices[0].finish_reason or finish
                if c.usage:
                    tokens = c.usage.completion_tokens
            result["out"] = (finish, tokens)

        thread = threading.Thread(target=stream)
        thread.start()
        assert started.wait(30) and state.models["a"].inflight == 1
        r = admin("DELETE", "/admin/versions/a")  # a route still sends traffic to a
        assert r.status_code == 409 and "route 'chat' (weight 1)" in r.json()["error"]["message"]
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert admin("PUT", "/admin/routes/chat", json={"weights": {"b": 1}}).status_code == 200
        # shadow and canary hold a version too
        state.ops.routes["chat"].shadow = Shadow("a", 1.0)
        r = admin("DELETE", "/admin/versions/a")
        assert r.status_code == 409 and "(its shadow)" in r.json()["error"]["message"]
        state.ops.routes["chat"].shadow = None
        state.ops.routes["chat"].canary = "a"
        r = admin("DELETE", "/admin/versions/a")
        assert r.status_code == 409 and "(its canary)" in r.json()["error"]["message"]
        state.ops.routes["chat"].canary = None
        assert state.models["a"].inflight == 1  # refusals touched nothing
        model_ref = weakref.ref(state.models["a"].engine.model)
        r = admin("DELETE", "/admin/versions/a")
        assert r.status_code == 200, r.text
        assert r.json() == {"id": "a", "object": "model", "deleted": True, "draining": 1}
        assert [v["name"] for v in admin("GET", "/admin/versions").json()["data"]] == ["b"]
        ids = [m["id"] for m in httpx.get(url + "/v1/models", headers={"Authorization": "Bearer user"}).json()
               ["data"]]
        assert ids == ["chat", "b"]
        r = httpx.post(url + "/v1/completions", headers={"Authorization": "Bearer user"},
                       json={"model": "a", "prompt": "hi", "max_tokens": 1}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"
        assert [m.name for m in state.ops.draining] == ["a"] and thread.is_alive()
        gate.set()  # the stream finishes on the unloaded engine, then the engine is closed and freed
        thread.join(60)
        assert result["out"] == ("length", 12)
        wait_for(lambda: any(e["event"] == "drained" for e in state.ops.events))
        assert state.ops.draining == []
        # the model's weights are gone once the drain task has returned (it ends just after the event)
        wait_for(lambda: gc.collect() >= 0 and model_ref() is None, 10)
        # the last version cannot go
        r = admin("DELETE", "/admin/versions/b")
        assert r.status_code == 409 and "last version" in r.json()["error"]["message"]
    events = [e for e in read_log(log) if "event" in e and e["event"] != "request"]
    assert [e["event"] for e in events] == ["weights", "unload", "drained"]
    assert events[1]["version"] == "a" and events[1]["draining"] == 1 and events[2]["cut_off"] == 0


def test_delete_refuses_the_default_and_a_stable_version(tiny_model_dir, other_model_dir) -> None:
    engines = {"a": make_engine(tiny_model_dir, "a"), "b": make_engine(other_model_dir, "b"),
               "c": make_engine(other_model_dir, "c")}
    with ops_server(engines, routes={"chat": {"b": 0, "c": 1}}, default_model="a",
                    admin_key="adm") as (url, state):
        r = httpx.delete(url + "/admin/versions/a", headers=ADMIN, timeout=60)
        assert r.status_code == 409 and "the default model" in r.json()["error"]["message"]
        state.ops.routes["chat"].stable = "b"  # weight 0, but a rollback would send everything there
        r = httpx.delete(url + "/admin/versions/b", headers=ADMIN, timeout=60)
        assert r.status_code == 409 and "(its stable version)" in r.json()["error"]["message"]
        state.ops.routes["chat"].stable = "c"
        r = httpx.delete(url + "/admin/versions/b", headers=ADMIN, timeout=60)
        assert r.status_code == 200 and r.json()["draining"] == 0
        assert state.ops.routes["chat"].weights == {"c": 1}  # the weight-0 entry went with it


def test_rotation_under_concurrent_writers_keeps_every_line(tmp_path) -> None:
    path = tmp_path / "requests.jsonl"
    log = JsonlLog(path, max_bytes=4000, keep=3)
    n_threads, per_thread = 8, 400

    def writer(t: int) -> None:
        for i in range(per_thread):  # lines of varying length, Chinese included
            log.write({"event": "request", "writer": t, "i": i, "text": "你好" * (i % 7) + "x" * (i % 50)})

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["requests.jsonl", "requests.jsonl.1", "requests.jsonl.2",
                                       "requests.jsonl.3"]  # at most K backups
    assert all(f.stat().st_size <= 4000 for f in files)
    records = [json.loads(line) for f in log.files() for line in f.read_text(encoding="utf-8").splitlines()]
    # the files keep the last lines written: of each writer, a suffix of its lines, in order
    assert sum(f.stat().st_size for f in files) > 3 * 4000 * 0.8
    for t in range(n_threads):
        mine = [r["i"] for r in records if r["writer"] == t]
        assert mine == list(range(per_thread - len(mine), per_thread))
    # without dropping old files (enough backups), every line written is there exactly once
    big = JsonlLog(tmp_path / "all" / "requests.jsonl", max_bytes=4000, keep=1000)
    log = big
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    big.close()
    files = big.files()
    assert len(files) > 20 and all(f.stat().st_size <= 4000 for f in files)
    lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == n_threads * per_thread
    seen = {(r["writer"], r["i"]) for r in map(json.loads, lines)}
    assert len(seen) == n_threads * per_thread


def test_ab_report_over_rotated_files_equals_the_unrotated_log(tmp_path) -> None:
    rng = random.Random(0)
    records = []
    for i in range(600):
        version = rng.choice(["a", "b"])
        if i % 10 == 0:
            records.append({"event": "feedback", "version": version, "route": "chat",
                            "rating": rng.choice(["up", "down"])})
        else:
            records.append({"event": "request", "version": version, "route": "chat",
                            "status": rng.choice([200] * 8 + [500, 400]), "latency_s": rng.uniform(0.1, 3),
                            "ttft_s": rng.uniform(0.01, 0.2), "completion_tokens": rng.randint(1, 50)})
    whole = JsonlLog(tmp_path / "whole" / "requests.jsonl")
    rotated = JsonlLog(tmp_path / "rot" / "requests.jsonl", max_bytes=5000, keep=100)
    for rec in records:
        whole.write(rec)
        rotated.write(rec)
    whole.close()
    rotated.close()
    files = rotated.files()
    assert len(files) > 5
    for metric in ("error_rate", "latency", "feedback"):
        want = report([whole.path], metric=metric, baseline="a", route="chat")
        assert report(files, metric=metric, baseline="a", route="chat") == want
        assert report(sorted(files), metric=metric, baseline="a", route="chat") == want  # a glob's order
    out = tmp_path / "ab.json"
    assert main(["ab-report", *map(str, files), "--baseline", "a", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["versions"] == report([whole.path], baseline="a")["versions"]


def test_server_rotates_its_request_log(tiny_model_dir, tmp_path) -> None:
    log = tmp_path / "requests.jsonl"
    with ops_server({"a": make_engine(tiny_model_dir, "a")}, request_log=str(log),
                    request_log_max_bytes=700, request_log_keep=2) as (url, state):
        for _ in range(12):
            r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1}, timeout=60)
            assert r.status_code == 200
        wait_for(lambda: sum(len(read_log(f)) for f in state.ops.request_log.files()) >= 6)
        files = state.ops.request_log.files()
    assert [f.name for f in files] == ["requests.jsonl.2", "requests.jsonl.1", "requests.jsonl"]
    assert all(f.stat().st_size <= 700 for f in files)
    assert all(r["event"] == "request" and r["status"] == 200 for f in files for r in read_log(f))


@pytest.mark.parametrize("flags, message", [
    (["--request-log-max-mb", "0"], "--request-log-max-mb must be > 0"),
    (["--request-log-max-mb", "-1"], "--request-log-max-mb must be > 0"),
    (["--request-log-keep", "3"], "--request-log-keep needs --request-log-max-mb"),
    (["--request-log-max-mb", "1", "--request-log-keep", "0"], "--request-log-keep must be >= 1"),
])
def test_rotation_flags_are_checked(tiny_model_dir, tmp_path, capsys, flags, message) -> None:
    args = ["serve", str(tiny_model_dir), "--request-log", str(tmp_path / "r.jsonl"), *flags]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "seekforge serve: error:" in err and message in err
    assert not (tmp_path / "r.jsonl").exists()


def _counters(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("seekforge_safety_classifier_")}


def test_classifier_calls_are_counted_in_metrics(tiny_model_dir) -> None:
    cfg = EngineConfig(max_batch=2, max_len=128)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    policy = SafetyPolicy.from_dict({"categories": {"insult": ["idiot"]}, "classifier": {"url": dead}})
    with run_server(tiny_model_dir, cfg, ServerOptions(safety=policy)) as a:
        assert _counters(a.url) == {"seekforge_safety_classifier_requests_total": 0,
                                    "seekforge_safety_classifier_failures_total": 0,
                                    "seekforge_safety_classifier_retries_total": 0}
        r = httpx.post(a.api + "/moderations", json={"input": "hi"}, timeout=60)
        assert r.status_code == 503
        assert _counters(a.url) == {"seekforge_safety_classifier_requests_total": 2,  # one retry
                                    "seekforge_safety_classifier_failures_total": 1,
                                    "seekforge_safety_classifier_retries_total": 1}
    remote = SafetyPolicy.from_dict({"categories": {"violence": ["kill yourself"]}})
    with run_server(tiny_model_dir, cfg, ServerOptions(safety=remote)) as b:
        local = SafetyPolicy.from_dict({"categories": {"insult": ["idiot"]}, "classifier": {"url": b.api}})
        with run_server(tiny_model_dir, cfg, ServerOptions(safety=local)) as a:
            c = openai.OpenAI(base_url=a.api, api_key="x", max_retries=0, timeout=60)
            c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=2)
            counts = _counters(a.url)
            assert counts["seekforge_safety_classifier_requests_total"] >= 1
            assert counts["seekforge_safety_classifier_failures_total"] == 0
            assert counts["seekforge_safety_classifier_retries_total"] == 0
            usage = local.classifier.client.usage
            assert counts["seekforge_safety_classifier_requests_total"] == usage.requests
    # a server without a remote classifier exports no such counters
    with run_server(tiny_model_dir, cfg, ServerOptions(safety=remote)) as b:
        assert _counters(b.url) == {}
