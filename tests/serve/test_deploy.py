"""The deployment files say true things: the Grafana queries use metrics the server exports, the
Kubernetes probes and arguments work with this server and this command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

from seekforge.cli import build_parser
from seekforge.serve.canary import CanaryPolicy
from seekforge.serve.routing import parse_route

REPO = Path(__file__).resolve().parents[2]


def test_grafana_dashboard_queries_exported_metrics(server) -> None:
    httpx.post(server.api + "/completions", json={"prompt": "hi", "max_tokens": 1}, timeout=60)
    exported = httpx.get(server.url + "/metrics").text
    dashboard = json.loads((REPO / "docs" / "grafana-serve.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {re.sub(r"_bucket$", "", n) for e in exprs for n in re.findall(r"seekforge_[a-z_]+", e)}
    assert len(names) >= 10
    missing = [n for n in sorted(names) if f"# TYPE {n} " not in exported]
    assert not missing, missing


def test_kubernetes_deployment_probes_and_args(server) -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "deployment.yaml").read_text(encoding="utf-8")))
    (container,) = docs[0]["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert httpx.get(server.url + path).status_code == 200, (probe, path)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    args = build_parser(["serve"]).parse_args(["serve", *container["args"]])
    assert [parse_route(r)[0] for r in args.route] == ["chat"]
    assert [CanaryPolicy.parse(c).version for c in args.canary] == ["v2"]
    assert {e["name"] for e in container["env"]} == {"SEEKFORGE_API_KEY", "SEEKFORGE_ADMIN_KEY"}


def test_dockerfiles_probe_health_and_run_serve() -> None:
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPO / "deploy" / name).read_text(encoding="utf-8")
        assert "http://127.0.0.1:8000/health" in text
        entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
        assert entry[:2] == ["seekforge", "serve"]
        build_parser(["serve"]).parse_args([*entry[1:], "--model", "v1=/models/x"])
