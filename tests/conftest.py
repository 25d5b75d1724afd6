from __future__ import annotations

import os

# Under pytest-xdist (make test) the test processes share the cores: one torch / OpenMP thread each,
# and in the servers and clients they start, rather than every process's thread pool contending for
# all of them (set before anything imports torch).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from splitserve.simulator.experiment import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0, **channel_kw) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"edge-server exited with {proc.returncode}:\n{out}")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            time.sleep(0.2)
    raise TimeoutError(f"edge-server on port {port} not healthy after {timeout} s")


class ServerProcess:
    def __init__(self, args: list[str], port: int, env: dict | None = None) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [str(BIN / "edge-server"), "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture(scope="session")
def fmnist_only(tmp_path_factory) -> Path:
    """A model repository holding only fmnist-split (a link to the bundled one)."""
    from splitserve.models.zoo import one_model_repository

    return one_model_repository("fmnist-split", tmp_path_factory.mktemp("fmnist-only"))


@pytest.fixture
def start_server(fmnist_only):
    """Starts edge-servers, stopped after the test. They serve fmnist-split alone unless the test passes
    ``models="all"``, ``--models`` or ``--config``: loading lite0-imagenet too costs each server ~0.6 s."""
    started: list[ServerProcess] = []

    def start(*args: str, wait: bool = True, env: dict | None = None, models: str = "fmnist-split") -> ServerProcess:
        if models != "all" and not {"--models", "--config"} & set(args):
            args = ("--models", str(fmnist_only), *args)
        port = free_port()
        server = ServerProcess(list(args), port, env)
        started.append(server)
        if wait:
            wait_healthy(port, server.proc)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Device clients cache downloaded bundles here, not in the user's ~/.cache: one cache per test
    process (pytest-xdist runs several), so that two processes never fetch into one directory at once."""
    path = tmp_path_factory.mktemp("model-cache")
    old = os.environ.get("SPLITSERVE_CACHE")
    os.environ["SPLITSERVE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SPLITSERVE_CACHE", None)
    else:
        os.environ["SPLITSERVE_CACHE"] = old


@pytest.fixture(scope="session")
def shared_server():
    """One edge-server with the default settings, for the tests that only need one running: starting
    a server costs ~6 s of CPU (torch, compressai, the bundles), so tests that neither configure, stop
    nor count on a fresh one share it. Each test process (pytest-xdist worker) has its own."""
    server = ServerProcess([], free_port())
    try:
        wait_healthy(server.port, server.proc)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fmnist():
    from splitserve.models import load

    return load("fmnist-split")


@pytest.fixture(scope="session")
def lite0():
    from splitserve.models import load

    return load("lite0-imagenet")


@pytest.fixture(scope="session")
def fmnist_half(fmnist, tmp_path_factory):
    """fmnist-split rewritten with its student's weights at half precision (manifest weights: float16)."""
    from splitserve.models.backbones import load_state_dict
    from splitserve.models.bundle import write_bundle

    manifest = {k: v for k, v in fmnist.manifest.items() if k not in ("format", "files", "onnx", "weights")}
    states = {name: load_state_dict(fmnist.path / name) for name in ("head.pt", "tail.pt", "teacher.pt")}
    tables = [fmnist.entropy_tables(w) for w in range(fmnist.student.widths)]
    out = tmp_path_factory.mktemp("half") / fmnist.name / fmnist.version
    return write_bundle(out, manifest, states, tables, weights="float16")


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """A test that starts an edge-server process is end-to-end, whether or not it says so (`make check` skips it)."""
    for item in items:
        if {"start_server", "shared_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
