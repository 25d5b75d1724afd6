"""deploy/ stays true to the server: dashboards query only metrics the server exports."""

import json
import re

import pytest
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


def entrypoint_args() -> list[str]:
    """The edge-server flags deploy/Dockerfile's ENTRYPOINT passes before any command."""
    line = next(ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.startswith("ENTRYPOINT"))
    entry = json.loads(line.removeprefix("ENTRYPOINT"))
    assert entry[0] == "edge-server"
    return entry[1:]


def edge_server_flags(args: list[str]):
    """Parse args as the edge-server would: an unknown or malformed flag fails the test."""
    from splitserve.edge_server.cli import parser

    try:
        return parser().parse_args(args)
    except SystemExit:
        raise AssertionError(f"edge-server does not accept {args}") from None


def compose_file(*names: str) -> dict:
    """docker-compose.yml with override files layered as `docker compose -f a -f b` merges them:
    mappings merge key by key, scalars and sequences (command) from the later file win, and
    volumes / ports concatenate."""
    merged: dict = {}

    def merge(base: dict, extra: dict) -> dict:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            elif key in ("volumes", "ports") and isinstance(base.get(key), list):
                base[key] = base[key] + value
            else:
                base[key] = value
        return base

    for name in ("docker-compose.yml", *names):
        merge(merged, yaml.safe_load((DEPLOY / name).read_text()))
    return merged


COMPOSE_VARIANTS = [(), ("docker-compose.gpu.yml",), ("docker-compose.models.yml",),
                    ("docker-compose.gpu.yml", "docker-compose.models.yml")]  # fmt: skip


@pytest.mark.parametrize("overrides", COMPOSE_VARIANTS, ids=lambda o: "+".join(o) or "default")
def test_compose_variants_are_valid_compose_files(overrides):
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec not installed (pip install -e '.[test]')")
    spec = compose_file(*overrides)
    try:
        project = compose_spec.PyCompose.from_yaml(yaml.safe_dump(spec))  # the compose_spec crate's strict parser
        project.validate()
    except ValueError as exc:
        pytest.fail(f"deploy/docker-compose.yml + {overrides}: {exc}")
    assert set(project.service_names()) == {"edge-server", "prometheus", "grafana"}


def test_compose_default_serves_the_bundled_models_on_cpu():
    server = compose_file()["services"]["edge-server"]
    flags = edge_server_flags([*entrypoint_args(), *server["command"]])
    assert flags.models is None and "volumes" not in server  # nothing to mount: the bundled models
    assert "deploy" not in server and flags.device is None  # no GPU asked of a CPU-torch image
    assert (DEPLOY / server["build"]["context"] / server["build"]["dockerfile"]).is_file()
    # every file the default stack mounts is in the repository
    for name, service in compose_file()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), f"{name} mounts {source}, which deploy/ does not have"
    # Prometheus scrapes the port the image serves metrics on
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    port = edge_server_flags(entrypoint_args()).metrics_port
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"edge-server:{port}"]


def test_compose_gpu_and_models_variants():
    server = compose_file("docker-compose.gpu.yml")["services"]["edge-server"]
    assert edge_server_flags([*entrypoint_args(), *server["command"]]).device == "cuda"
    assert "cu" in server["build"]["args"]["TORCH_INDEX"].rsplit("/", 1)[-1]
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert server["build"]["dockerfile"] == "deploy/Dockerfile"  # the override keeps the base build

    server = compose_file("docker-compose.models.yml")["services"]["edge-server"]
    flags = edge_server_flags([*entrypoint_args(), *server["command"]])
    assert (flags.models, flags.poll_interval) == ("/models", 30.0)
    assert server["volumes"] == ["./models:/models:ro"]


def test_compose_validation_can_fail():
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec not installed (pip install -e '.[test]')")
    spec = compose_file()
    spec["services"]["edge-server"]["stop_grace"] = "30s"  # misspelt key
    with pytest.raises(ValueError, match="stop_grace"):
        compose_spec.PyCompose.from_yaml(yaml.safe_dump(spec))
