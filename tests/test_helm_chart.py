"""The Helm chart renders with Helm's own template engine and yields valid Kubernetes objects.

Rendered through helm-python-sdk (a ctypes binding to Helm v4's Go SDK, shipped as a wheel
with the library inside: no helm binary, no Go toolchain), then each object is checked
against the Kubernetes OpenAPI schema by kubernetes-validate, strictly (unknown fields fail).
"""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk is not installed (pip install -e '.[test]'; wheels for x86-64 only)"
)
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

CHART = ROOT / "deploy" / "helm" / "splitserve"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the chart targets (grpc probes are GA since 1.27)


class _StrictLoader(yaml.SafeLoader):
    """YAML as the API server reads it: a key twice in one mapping is an error, not "last one wins"."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"mapping key(s) {sorted(dupes)} defined twice",
                                                node.start_mark)  # fmt: skip
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def render(values: dict) -> dict[str, dict]:
    """{kind/name: object} for the chart rendered with ``values``; every object schema-valid."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="edge", namespace="splitserve")
    objects: dict[str, dict] = {}
    for path, text in manifests.items():
        for obj in yaml.load_all(text, Loader=_StrictLoader):
            if not obj:
                continue
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                objects[f"{obj['kind']}/{obj['metadata']['name']}"] = obj  # a CRD: no upstream schema
                continue
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path}: {obj['kind']} is not a valid Kubernetes object: {exc.message} at {exc.path}")
            objects[f"{obj['kind']}/{obj['metadata']['name']}"] = obj
    return objects


def container(objects: dict[str, dict]) -> dict:
    (c,) = objects["Deployment/edge-edge-server"]["spec"]["template"]["spec"]["containers"]
    return c


def test_lint_finds_no_errors():
    report = helm.lint(str(CHART))
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] > 1], report  # warnings or worse


def test_default_values_cpu_plaintext_single_replica():
    objects = render({})
    assert set(objects) == {"Deployment/edge-edge-server", "Service/edge-edge-server",
                            "Service/edge-edge-server-headless"}  # fmt: skip
    c = container(objects)
    # the image installs CPU torch: no GPU by default
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "--device" not in c["args"]
    assert c["readinessProbe"]["grpc"] == {"port": 50051}
    assert "--drain-timeout" in c["args"]
    grace = objects["Deployment/edge-edge-server"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(c["args"][c["args"].index("--drain-timeout") + 1])
    assert objects["Service/edge-edge-server-headless"]["spec"]["clusterIP"] == "None"


def test_gpu_on_keeps_one_limits_map():
    c = container(render({"gpu": 1}))
    assert c["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/gpu": 1}
    assert c["args"][c["args"].index("--device") + 1] == "cuda"


def test_tls_probes_speak_tls():
    c = container(render({"tls": {"secret": "edge-tls"}}))
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert "grpc" not in probe, "kubelet's grpc probe is plaintext: it never passes against a TLS port"
        cmd = probe["exec"]["command"]
        assert cmd[:3] == ["python", "-m", "splitserve.edge_server.healthcheck"]
        assert cmd[cmd.index("--ca-cert") + 1] == "/secrets/tls/ca.crt"
        assert cmd[cmd.index("--server-name") + 1] == "edge-edge-server"
    assert {"--tls-cert", "--tls-key"} <= set(c["args"])
    assert {"name": "tls", "mountPath": "/secrets/tls", "readOnly": True} in c["volumeMounts"]


def test_tokens_mount_the_secret():
    objects = render({"auth": {"tokensSecret": "edge-tokens"}})
    c = container(objects)
    assert c["args"][c["args"].index("--tokens") + 1] == "/secrets/tokens/tokens"
    volumes = objects["Deployment/edge-edge-server"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tokens", "secret": {"secretName": "edge-tokens"}} in volumes
    assert "grpc" in c["readinessProbe"]  # health stays public: the plaintext probe needs no token


def test_scale_out_replicas_spread_and_autoscaler():
    objects = render({"replicas": 3, "serviceMonitor": True})
    spec = objects["Deployment/edge-edge-server"]["spec"]
    assert spec["replicas"] == 3
    assert spec["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert "ServiceMonitor/edge-edge-server" in objects

    objects = render({"autoscaling": {"enabled": True}, "gpu": 1, "tls": {"secret": "t"},
                      "auth": {"tokensSecret": "k"}})  # fmt: skip
    hpa = objects["HorizontalPodAutoscaler/edge-edge-server"]["spec"]
    assert "replicas" not in objects["Deployment/edge-edge-server"]["spec"]  # the HPA owns the count
    assert hpa["scaleTargetRef"]["name"] == "edge-edge-server"
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "splitserve_inflight_frames"
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_an_invalid_object_is_caught():
    """The validation above can fail: a misspelt field is refused."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    with pytest.raises(yaml.constructor.ConstructorError, match="defined twice"):
        yaml.load("resources:\n  limits: {a: 1}\n  limits: {b: 2}\n", Loader=_StrictLoader)
