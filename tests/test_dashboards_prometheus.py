"""Every Grafana panel query returns data against a real Prometheus scraping a real edge-server.

Prometheus comes from Debian (`apt-get install prometheus`; `make test` installs it). The
dashboard's queries run as Grafana would send them, with $model set to "All" (.*).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from conftest import BIN, ROOT, free_port

pytestmark = pytest.mark.e2e
PROMETHEUS = shutil.which("prometheus")
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "splitserve.json"


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"].replace("$model", ".*")) for p in dashboard["panels"] for t in p["targets"]]


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    reply = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert reply["status"] == "success", (expr, reply)
    return reply["data"]["result"]


@pytest.fixture
def prometheus(tmp_path):
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary: apt-get install prometheus (make test installs it)")
    started = []

    def start(metrics_port: int) -> int:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs: [{{job_name: splitserve, static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]}}]\n"
        )
        port = free_port()
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(proc)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
                return port
            except OSError:
                assert proc.poll() is None, f"prometheus exited: {proc.stderr.read()}"
                assert time.time() < deadline, "prometheus not ready after 60 s"
                time.sleep(0.3)

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(30)


def test_every_panel_query_returns_a_series(start_server, prometheus):
    metrics_port = free_port()
    server = start_server("--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")
    port = prometheus(metrics_port)

    # Before any traffic: no errors reads 0 (not "No data"), and the load of each bundled model is counted
    deadline = time.time() + 30
    while not query(port, "splitserve_frames_completed_total"):
        assert time.time() < deadline, "Prometheus never scraped the edge-server"
        time.sleep(0.5)
    time.sleep(2.5)  # two more scrapes: rate() needs two samples
    non_ok = dict(panel_queries())["Non-OK results"]
    assert [float(s["value"][1]) for s in query(port, non_ok)] == [0.0]
    loads = query(port, 'splitserve_model_loads_total{status="ok"}')
    assert {s["metric"]["model"] for s in loads} >= {"fmnist-split"} and all(s["value"][1] == "1" for s in loads)

    # Traffic for a few scrapes, as a device would send it
    subprocess.run([str(BIN / "device-client"), "--server", server.address, "--model", "fmnist-split",
                    "--frames", "60", "--fps", "15"], check=True, capture_output=True, timeout=120)  # fmt: skip
    time.sleep(2)  # the last scrape after the traffic

    empty = {}
    for title, expr in panel_queries():
        series = query(port, expr)
        values = [float(s["value"][1]) for s in series]
        if not series or not all(math.isfinite(v) for v in values):
            empty[title] = (expr, values)
    assert not empty, f"panels without data: {empty}"
    assert [float(s["value"][1]) for s in query(port, non_ok)] == [0.0]
    ok = query(port, 'sum(splitserve_frames_completed_total{status="OK"})')
    assert float(ok[0]["value"][1]) == 60


def test_first_error_moves_the_error_rate(start_server, prometheus):
    """The status series exist at 0 before the first error, so rate() sees the very first one."""
    from helpers import Stream

    from splitserve.proto import edge_inference_pb2 as pb

    metrics_port = free_port()
    server = start_server("--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")
    port = prometheus(metrics_port)
    expr = 'sum(rate(splitserve_frames_completed_total{status="UNKNOWN_MODEL"}[1m]))'
    deadline = time.time() + 30
    while not query(port, expr):
        assert time.time() < deadline, "no UNKNOWN_MODEL series before the first error"
        time.sleep(0.5)
    assert float(query(port, expr)[0]["value"][1]) == 0.0
    stream = Stream(server.address)
    result = stream.send(pb.Frame(frame_id=1, model="no-such-model", codec="entropic"))
    assert result.status == pb.Result.Status.UNKNOWN_MODEL
    stream.close()
    deadline = time.time() + 30
    while float(query(port, expr)[0]["value"][1]) == 0.0:
        assert time.time() < deadline, "one error never showed in the rate"
        time.sleep(0.5)
