"""The spine, end to end: a real edge-server and a real device-client, as processes on loopback."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import BIN

from splitserve.models.bundle import DevicePath

pytestmark = pytest.mark.e2e


def reference_predictions(bundle, images: np.ndarray, codec: str = "entropic", width: int = -1) -> np.ndarray:
    """head + codec + tail in one process, one frame at a time, through the real payload bytes."""
    width = bundle.student.widths - 1 if width < 0 else width
    device = DevicePath(bundle, codec, width)
    dec, tail = bundle.decoder_for(codec, device.width), bundle.server_stage(codec, device.width)
    out = []
    with torch.inference_mode():
        for img in images:
            payload = device(torch.from_numpy(img)[None])[0]
            out.append(int(tail(dec.decode(payload, device.shape)[None]).argmax(1)))
    return np.array(out)


def run_client(address: str, tmp_path, *args: str, env: dict | None = None) -> dict:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [str(BIN / "device-client"), "--server", address, "--json", str(out), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_200_frames_match_the_in_process_split(shared_server, tmp_path, fmnist):
    from splitserve.data.samples import load_sample

    server = shared_server
    summary = run_client(server.address, tmp_path, "--model", "fmnist-split", "--frames", "200")
    assert summary["frames"] == 200 and summary["ok"] == 200
    images, labels = load_sample("fmnist-test")
    expected = reference_predictions(fmnist, images[:200])
    assert summary["predictions"] == expected.tolist()
    assert summary["accuracy"] == pytest.approx(float((expected == labels[:200]).mean()))
    # bytes/frame are the real payloads': the widest width's measured size, give or take the sample
    widest = fmnist.widths[-1]["bytes_mean"]
    assert 0.5 * widest < summary["bytes_per_frame"] < 2 * widest
    assert summary["latency_ms"]["p50"] > 0


def test_head_fetched_from_the_server_gives_the_same_results(shared_server, tmp_path, fmnist, monkeypatch):
    from splitserve.data.samples import load_sample

    server = shared_server
    cache = tmp_path / "cache"  # empty: the head can only come from GetHead
    summary = run_client(server.address, tmp_path, "--model", "fmnist-split", "--frames", "40", "--fetch",
                         env={"SPLITSERVE_CACHE": str(cache)})  # fmt: skip
    fetched = cache / "splitserve" / "models" / fmnist.name / fmnist.version
    assert (fetched / "head.pt").read_bytes() == (fmnist.path / "head.pt").read_bytes()
    assert (fetched / "manifest.json").read_bytes() == (fmnist.path / "manifest.json").read_bytes()
    images, _ = load_sample("fmnist-test")
    assert summary["predictions"] == reference_predictions(fmnist, images[:40]).tolist()


@pytest.mark.parametrize("codec", ["png", "int8"])
def test_baseline_codecs_run_the_teacher(shared_server, tmp_path, fmnist, codec):
    from splitserve.data.samples import load_sample
    from splitserve.training.evaluate import predict_local

    server = shared_server
    summary = run_client(server.address, tmp_path, "--frames", "30", "--codec", codec, "--concurrency", "4")
    images, _ = load_sample("fmnist-test")
    if codec == "png":  # lossless: exactly the unsplit teacher
        assert summary["predictions"] == predict_local(fmnist, images[:30]).tolist()
    else:
        assert summary["ok"] == 30
