"""deploy/ stays true to the server: dashboards query only metrics the server exports."""

import json
import re

import yaml
from conftest import ROOT

DEPLOY = ROOT / "deploy"


def server_metric_names() -> set[str]:
    from splitserve.edge_server.metrics import ServerMetrics

    names = set()
    for metric in ServerMetrics().registry.collect():
        base = metric.name
        kinds = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
        names.update(base + suffix for suffix in kinds.get(metric.type, [""]))
    return names


def test_dashboard_queries_use_exported_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "splitserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"]]
    used = {m for e in exprs for m in re.findall(r"splitserve_[a-z_]+", e)}
    known = server_metric_names()
    assert used and used <= known, f"dashboards use metrics the server does not export: {sorted(used - known)}"
    assert {"splitserve_frames_completed_total", "splitserve_server_latency_seconds_bucket"} <= used


def test_deploy_files_parse():
    helm = DEPLOY / "helm" / "splitserve"
    for path in [DEPLOY / "docker-compose.yml", DEPLOY / "prometheus" / "prometheus.yml",
                 *sorted((DEPLOY / "grafana" / "provisioning").rglob("*.yml")),
                 helm / "Chart.yaml", helm / "values.yaml"]:  # fmt: skip
        assert yaml.safe_load(path.read_text()), path
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"edge-server", "prometheus", "grafana"} <= set(compose["services"])
