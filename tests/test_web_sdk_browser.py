"""The browser SDK end to end: a real edge-server --http-port, Debian's chromium headless on /demo/?selftest=50,
driven over the DevTools protocol; its answers must be the Python device client's on the same sample frames."""

import asyncio
import json
import shutil
import subprocess
import time

import aiohttp
import numpy as np
import pytest
from conftest import free_port
from test_web_sdk import WEB, built  # noqa: F401 -- the fixture that builds clients/web

from splitserve.data.samples import load_sample
from splitserve.device_client import AsyncSplitClient, ClientOptions

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (make test installs it)"),
    pytest.mark.skipif(shutil.which("node") is None, reason="no node: the browser SDK is built with it"),
]
FRAMES = 50


async def _evaluate(port: int, url_part: str, expression: str, timeout: float) -> str:
    """Poll ``expression`` in the page whose URL contains ``url_part`` until it is a non-empty string."""
    end = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < end:
            targets = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            page = next((t for t in targets if url_part in t.get("url", "")), None)
            if page is not None:
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    for n in range(10**6):
                        await ws.send_json({"id": n, "method": "Runtime.evaluate",
                                            "params": {"expression": expression, "returnByValue": True}})  # fmt: skip
                        reply = await ws.receive_json(timeout=30)
                        value = reply.get("result", {}).get("result", {}).get("value")
                        if value:
                            return value
                        if time.monotonic() > end:
                            break
                        await asyncio.sleep(0.5)
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the page never produced {expression} in {timeout:.0f} s")


def run_selftest(url: str, tmp_path, timeout: float = 400, extra_args: list[str] = ()) -> dict:
    """Open ``url`` in headless chromium and return the JSON the demo writes into ``<pre id="selftest">``."""
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           # host candidates as addresses: the server's ICE agent cannot resolve the mDNS names Chrome hides them as
           "--disable-features=WebRtcHideLocalIpsWithMdns", f"--user-data-dir={profile}",
           "--remote-debugging-port=0", *extra_args, url]  # fmt: skip
    browser = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        active = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not active.is_file() or not active.read_text().strip():
            assert browser.poll() is None and time.monotonic() < end, browser.stderr.read()[-2000:]
            time.sleep(0.2)
        port = int(active.read_text().split()[0])
        text = asyncio.run(_evaluate(port, "/demo/", "document.getElementById('selftest').textContent", timeout))
        return json.loads(text)
    finally:
        browser.kill()
        browser.wait()


def python_predictions(address: str, model: str, n: int) -> list[int | None]:
    images, _ = load_sample({"fmnist-split": "fmnist-test", "lite0-imagenet": "photos-224"}[model])

    async def main():  # type: ignore[no-untyped-def]
        options = ClientOptions(runtime="onnx", deadline_ms=60_000)
        async with AsyncSplitClient(address, model, options) as client:
            return [await client.infer(images[i % len(images)]) for i in range(n)]

    predictions = asyncio.run(main())
    assert all(p.ok for p in predictions)
    return [p.index for p in predictions]


@pytest.mark.parametrize("model", ["fmnist-split", "lite0-imagenet"])
def test_the_demo_selftest_in_chromium_answers_as_the_python_client(built, start_server, tmp_path, model):  # noqa: F811
    http_port = free_port()
    server = start_server("--http-port", str(http_port), "--web-root", str(WEB / "dist"), models="all")
    # a deadline a busy machine cannot miss (the page's default is 1 s): the first frame runs the head
    # cold in WASM, and under make test two test processes share the two cores; this compares answers
    url = f"http://127.0.0.1:{http_port}/demo/?selftest={FRAMES}&model={model}&deadline=60000"
    report = run_selftest(url, tmp_path)
    assert "error" not in report, report
    assert report["frames"] == FRAMES and report["ok"] == FRAMES, report["statuses"]
    assert report["transport"] == "webrtc" and report["model"].startswith(model + ":")
    assert len(report["width_counts"]) == 1  # a fixed width (the widest), as the Python client here
    python = python_predictions(server.address, model, FRAMES)
    differ = sum(a != b for a, b in zip(report["predictions"], python, strict=True))
    assert differ <= 1, (report["predictions"], python)  # one frame per 50: decoders of the same JPEG may differ
    if report["accuracy"] is not None:
        images, labels = load_sample("fmnist-test")
        python_accuracy = np.mean([p == y for p, y in zip(python, labels[:FRAMES], strict=True)])
        assert abs(report["accuracy"] - python_accuracy) <= 1 / FRAMES
    assert report["bytes_mean"] > 0 and report["head_ms_p50"] > 0 and report["latency_ms_p95"] > 0
    # the head ran on two WASM threads (the demo is cross-origin isolated), warmed at connect
    assert report["cross_origin_isolated"] is True and report["wasm_threads"] == 2 and report["warmup_ms"] > 0
    # lite0's head (~6 ms) runs in the SDK's worker; fmnist's (~0.1 ms) on the page, under a worker's round trip
    assert report["head_in_worker"] is (model == "lite0-imagenet")
    # with a deadline the SDK opens the lane: every other piece (lite0) or the second copy (fmnist) went on it
    assert report["associations"] == 2
    assert server.proc.poll() is None
