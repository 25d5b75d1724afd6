"""``edge-server --workers 2``: two real server processes on one port, under their supervisor.

Every test starts a real edge-server process on loopback and talks to it over real
connections; each test stream gets its own TCP connection so the kernel spreads them
over the workers.
"""

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from conftest import free_port
from helpers import Stream, good_frame, metric_samples

from splitserve.edge_server.workers import START_METHOD_ENV, default_workers, start_method
from splitserve.proto import edge_inference_pb2 as pb

pytestmark = pytest.mark.e2e
S = pb.Result.Status
STREAMS = 16  # connections: the chance that all land on one of two workers is 2^-15


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def own_connection(address: str) -> grpc.Channel:
    """A channel with its own TCP connection (gRPC shares one per target unless told otherwise)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port`` (workers listen once their models loaded)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # 0A: LISTEN
                inodes.add(cols[9])
    try:
        fds = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return any(link == f"socket:[{inode}]" for link in fds for inode in inodes)


def wait_workers(server, n: int, timeout: float = 120) -> list[int]:
    """The worker pids once all ``n`` are serving (spawn's resource tracker is a child too, listening nowhere)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [pid for pid in children(server.proc.pid) if listening(pid, server.port)]
        if len(pids) == n:
            return pids
        time.sleep(0.1)
    raise TimeoutError(f"expected {n} listening worker processes, found {children(server.proc.pid)}")


def test_workers_setting_is_checked():
    from splitserve.edge_server.config import ServerConfigError, build_config

    assert build_config(None, {"workers": 3}).workers == 3
    with pytest.raises(ServerConfigError, match="workers must be >= 0"):
        build_config(None, {"workers": -1})


def test_default_workers_follow_the_core_count():
    assert default_workers(1) == 1 and default_workers(2) == 1 and default_workers(4) == 1
    assert default_workers(16) == 4 and default_workers(256) == 8


def test_workers_are_forked_on_a_cpu_and_spawned_where_cuda_may_be_used(monkeypatch):
    import torch

    monkeypatch.delenv(START_METHOD_ENV, raising=False)
    assert start_method("cpu") == "fork"
    assert start_method("cuda") == start_method("cuda:1") == "spawn"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert start_method("auto") == "fork"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert start_method("auto") == "spawn"
    monkeypatch.setenv(START_METHOD_ENV, "forkserver")
    assert start_method("cuda") == "forkserver"
    monkeypatch.setenv(START_METHOD_ENV, "vfork")
    with pytest.raises(ValueError, match="SPLITSERVE_WORKER_START='vfork': not a start method here"):
        start_method("cpu")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_two_workers_answer_every_frame_once_and_share_one_metrics_port(start_server, fmnist, method):
    mport = free_port()
    server = start_server(
        "--workers", "2", "--metrics-port", str(mport), "--metrics-host", "127.0.0.1", env={START_METHOD_ENV: method}
    )
    pids = wait_workers(server, 2)
    ticks = {pid: cpu_ticks(pid) for pid in pids}
    streams = [Stream(server.address, own_connection(server.address)) for _ in range(STREAMS)]
    per_stream = 6
    for s, stream in enumerate(streams):
        for i in range(per_stream):
            stream.put(good_frame(fmnist, s * per_stream + i))
    results = [stream.receive() for stream in streams for _ in range(per_stream)]
    for stream in streams:
        stream.close()
    ids = sorted(r.frame_id for r in results)
    assert ids == list(range(STREAMS * per_stream))  # every frame answered, none twice
    assert all(r.status == S.OK for r in results), [S.Name(r.status) for r in results]
    busy = [pid for pid in pids if cpu_ticks(pid) > ticks[pid]]
    assert busy == pids, "both workers should have served some of the 16 connections"
    samples = metric_samples(mport)  # one port, the workers' counts summed
    width = str(fmnist.student.widths - 1)
    ok = (
        f'splitserve_frames_completed_total{{model="fmnist-split",status="OK",version="{fmnist.version}",'
        f'width="{width}"}}'
    )
    assert samples[ok] == STREAMS * per_stream
    assert samples["splitserve_inflight_frames"] == 0
    assert any(k.startswith("splitserve_model_loads_total") and v == 2 for k, v in samples.items())
    assert f"starting 2 workers ({method})" in server.stop()


def test_sigterm_drains_every_worker(start_server, fmnist):
    mport = free_port()
    server = start_server(
        "--workers", "2", "--max-delay-ms", "2000", "--max-batch", "256", "--drain-timeout", "20",
        "--metrics-port", str(mport), "--metrics-host", "127.0.0.1",
    )  # fmt: skip
    pids = wait_workers(server, 2)
    streams = [Stream(server.address, own_connection(server.address)) for _ in range(STREAMS)]
    per_stream = 3
    for s, stream in enumerate(streams):
        for i in range(per_stream):
            stream.put(good_frame(fmnist, s * per_stream + i))
    # SIGTERM once every frame is accepted (a frame that arrives during the drain is answered
    # UNAVAILABLE, as it should be); they wait up to 2 s for their batches, so most are in flight
    accepted = 0
    deadline = time.time() + 60
    while accepted < STREAMS * per_stream and time.time() < deadline:
        samples = metric_samples(mport)
        done = sum(v for k, v in samples.items() if k.startswith("splitserve_frames_completed_total{"))
        accepted = samples.get("splitserve_inflight_frames", 0) + done
        time.sleep(0.02)
    assert accepted == STREAMS * per_stream, accepted
    server.proc.send_signal(signal.SIGTERM)
    results = [stream.receive() for stream in streams for _ in range(per_stream)]
    assert sorted(r.frame_id for r in results) == list(range(STREAMS * per_stream))
    assert all(r.status == S.OK for r in results), [S.Name(r.status) for r in results]
    for stream in streams:
        with pytest.raises(StopIteration):  # each worker ends its streams once everything is answered
            stream.receive()
    assert server.proc.wait(40) == 0
    log = server.stop()
    assert "stopping 2 workers" in log and log.count("edge-server stopped") == 3, log
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_worker_that_dies_is_replaced(start_server, fmnist):
    server = start_server("--workers", "2")
    pids = wait_workers(server, 2)
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.time() + 120
    while time.time() < deadline:
        now = children(server.proc.pid)
        if len(now) == 2 and pids[0] not in now and all(listening(pid, server.port) for pid in now):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {pids[0]} was not replaced: {children(server.proc.pid)}")
    for i in range(8):  # fresh connections reach the old and the new worker alike
        with own_connection(server.address) as ch:
            stream = Stream(server.address, ch)
            assert stream.send(good_frame(fmnist, i)).status == S.OK
            stream.close()
    log = server.stop()
    assert f"worker 0 (pid {pids[0]}) exited" in log and "starting a replacement" in log


def test_a_worker_that_cannot_start_stops_the_server(tmp_path):
    import subprocess

    from conftest import BIN

    proc = subprocess.run(
        [str(BIN / "edge-server"), "--host", "127.0.0.1", "--port", "0", "--workers", "2",
         "--models", str(tmp_path / "nothing-here")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no such directory" in proc.stderr


def test_a_bad_start_method_is_a_clear_error():
    import subprocess

    from conftest import BIN

    proc = subprocess.run(
        [str(BIN / "edge-server"), "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
        capture_output=True, text=True, timeout=120, env={**os.environ, START_METHOD_ENV: "thread"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "edge-server: SPLITSERVE_WORKER_START='thread': not a start method here" in proc.stderr


def test_start_up_log_says_where_the_seconds_went(start_server):
    server = start_server("--workers", "1")
    log = server.stop()
    line = next(line for line in log.splitlines() if "SERVING" in line and "after the process started" in line)
    assert "interpreter and imports" in line and "loading and warming up models" in line
    assert "loaded and warmed up in" in log  # one line per model


def test_a_metrics_port_in_use_is_a_clear_error(tmp_path):
    import socket
    import subprocess

    from conftest import BIN

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [str(BIN / "edge-server"), "--host", "127.0.0.1", "--port", "0", "--workers", "2",
             "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in proc.stderr
