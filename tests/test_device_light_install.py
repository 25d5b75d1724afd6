"""The light install, as a Pi would get it: pip install "splitserve[device]" into a fresh venv, no torch.

Installs from the working tree (dependencies from the package index; pip's wheel cache is kept
in pytest's cache directory, so a second run downloads nothing), checks that torch is not
there, runs ``device-client --runtime onnx`` against a real edge-server started from the full
install, and compares with the torch runtime on the same frames.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, ROOT
from test_e2e import run_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def index_reachable() -> bool:
    """Whether pip can reach its index (PyPI, or the one PIP_INDEX_URL names)."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple")
    if url.scheme == "file":
        return True
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def light_venv(request, tmp_path_factory) -> Path:
    if not index_reachable():
        pytest.skip("the light install needs the package index (PyPI) for onnxruntime, grpcio, numpy, ...")
    cache = getattr(request.config, "cache", None)
    pip_cache = cache.mkdir("light-install-pip") if cache is not None else tmp_path_factory.mktemp("pip-cache")
    venv = tmp_path_factory.mktemp("light") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--cache-dir", str(pip_cache),
         f"{ROOT}[device]"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


def light_env() -> dict:
    """The light venv's own view: no PYTHONPATH pointing at this checkout's src/."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_light_install_has_no_torch(light_venv):
    proc = subprocess.run(
        [str(light_venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True, env=light_env()
    )
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    proc = subprocess.run(
        [str(light_venv / "bin" / "python"), "-c",
         "import splitserve, splitserve.device_client, onnxruntime; print(splitserve.__file__)"],
        capture_output=True, text=True, env=light_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert str(light_venv) in proc.stdout  # the installed copy, not this checkout


def test_a_server_command_in_the_light_install_names_its_extra(light_venv):
    proc = subprocess.run(
        [str(light_venv / "bin" / "edge-server"), "--port", "0"], capture_output=True, text=True, env=light_env(),
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    line = proc.stderr.strip()  # one line, no traceback
    assert re.fullmatch(r"edge-server: needs the server extra \(\w+ is not installed\): "
                        r"pip install 'splitserve\[server\]'", line), line  # fmt: skip


def test_light_device_client_matches_the_torch_runtime(light_venv, shared_server, tmp_path):
    server = shared_server
    args = ("--model", "fmnist-split", "--frames", "200", "--concurrency", "4")
    out = tmp_path / "light.json"
    proc = subprocess.run(
        [str(light_venv / "bin" / "device-client"), "--server", server.address, *args, "--runtime", "onnx",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=light_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    light = json.loads(out.read_text())
    full = run_client(server.address, tmp_path, *args, "--runtime", "torch")
    assert light["runtime"] == "onnx" and full["runtime"] == "torch"
    assert light["ok"] == full["ok"] == 200
    assert light["accuracy"] == full["accuracy"] and light["accuracy"] > 0.8
    assert light["predictions"] == full["predictions"]
    assert abs(light["bytes_per_frame"] - full["bytes_per_frame"]) < 1.0  # the same payloads, give or take one
    assert BIN != light_venv / "bin"
