"""The edge server as operators run it: auth, TLS, limits, metrics, drain, new model versions.

Every test starts a real edge-server process on loopback.
"""

import json
import shutil
import signal
import time

import grpc
import pytest
from certs import make_pki
from conftest import free_port
from helpers import Stream, good_frame, metrics_text, parse_samples

from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
S = pb.Result.Status
TOKEN = "s3cret-token-for-device-7"


@pytest.fixture
def repo(tmp_path, fmnist):
    """A model repository holding a copy of the bundled fmnist model as version 1."""
    root = tmp_path / "models"
    dest = root / fmnist.name / "1"
    shutil.copytree(fmnist.path, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = "1"  # whatever version is shipped, the tests below count from 1
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return root


def add_version(repo, fmnist, version: str, tamper: bool = False):
    dest = repo / fmnist.name / version
    tmp = repo / f".{version}.tmp"
    shutil.copytree(fmnist.path, tmp)
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["version"] = version
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    if tamper:
        (tmp / "head.pt").write_bytes(b"not the weights the manifest promised")
    tmp.rename(dest)  # appear atomically, as a deploy would


def test_tokens_are_required(start_server, tmp_path, fmnist):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# devices\nphone-7 {TOKEN}\n")
    server = start_server("--tokens", str(tokens))
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.EdgeInferenceStub(ch)
        for metadata in ((), (("authorization", "Bearer wrong-token-xxxxxxxx"),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Infer(good_frame(fmnist, 1), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Stream(iter([good_frame(fmnist, 1)]), metadata=metadata))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.Infer(good_frame(fmnist, 1), metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert ok.status == S.OK
    # the health check stays reachable without a token (wait_healthy used none)


def test_tls_and_mutual_tls(start_server, tmp_path, fmnist):
    pki = make_pki(tmp_path / "pki")
    server = start_server(
        "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server-key"]), "--tls-client-ca", str(pki["ca"]),
        wait=False,
    )  # fmt: skip

    def channel(client: str | None):
        creds = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"].read_bytes(),
            private_key=pki[f"{client}-key"].read_bytes() if client else None,
            certificate_chain=pki[client].read_bytes() if client else None,
        )
        return grpc.secure_channel(server.address, creds)

    deadline = time.time() + 60
    while True:
        try:
            with channel("client") as ch:
                r = pb_grpc.EdgeInferenceStub(ch).Infer(good_frame(fmnist, 2), timeout=5)
            break
        except grpc.RpcError:
            if time.time() > deadline or server.proc.poll() is not None:
                raise
            time.sleep(0.5)
    assert r.status == S.OK
    for client in ("rogue", None):  # a certificate from another CA, and none at all
        with channel(client) as ch, pytest.raises(grpc.RpcError) as err:
            pb_grpc.EdgeInferenceStub(ch).Infer(good_frame(fmnist, 3), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.address) as ch, pytest.raises(grpc.RpcError):
        pb_grpc.EdgeInferenceStub(ch).Infer(good_frame(fmnist, 4), timeout=5)


def test_tls_without_client_certificates(start_server, tmp_path, fmnist):
    from splitserve.device_client.channel import ChannelSettings, sync_channel

    pki = make_pki(tmp_path / "pki")
    server = start_server("--tls-cert", str(pki["server"]), "--tls-key", str(pki["server-key"]), wait=False)
    settings = ChannelSettings(target=server.address, tls=True, ca_cert=str(pki["ca"]))
    deadline = time.time() + 60
    while True:
        try:
            with sync_channel(settings) as ch:
                assert pb_grpc.EdgeInferenceStub(ch).Infer(good_frame(fmnist, 5), timeout=5).status == S.OK
            break
        except grpc.RpcError:
            if time.time() > deadline or server.proc.poll() is not None:
                raise
            time.sleep(0.5)


def test_oversized_frames_and_messages(start_server, fmnist):
    server = start_server("--max-frame-bytes", "100000", "--max-message-bytes", "200000")
    stream = Stream(server.address)
    big = good_frame(fmnist, 1)
    big.payload = b"\x00" * 150_000
    r = stream.send(big)
    assert r.status == S.INVALID_FRAME and "exceeds this server's limit" in r.error
    assert stream.send(good_frame(fmnist, 2)).status == S.OK  # same stream goes on
    stream.close()
    # over the gRPC message cap the transport ends that stream; the server and other streams go on
    huge = good_frame(fmnist, 3)
    huge.payload = b"\x00" * 300_000
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.EdgeInferenceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(huge)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Infer(good_frame(fmnist, 4)).status == S.OK


def test_stream_and_inflight_limits(start_server, fmnist):
    # A batch runs only when 5 frames fill it (its timer is far away), so the 4 frames s1 may have in
    # flight stay in flight, however slow the machine, until s2's frame completes the batch.
    server = start_server("--max-streams", "2", "--max-inflight-per-stream", "4", "--max-delay-ms", "600000",
                          "--max-batch", "5")  # fmt: skip
    s1, s2 = Stream(server.address), Stream(server.address)
    for i in range(10):
        s1.put(good_frame(fmnist, i))
    refused = [s1.receive() for _ in range(6)]
    assert [S.Name(r.status) for r in refused] == ["OVERLOADED"] * 6
    assert s2.send(good_frame(fmnist, 20)).status == S.OK  # the fifth frame: the batch runs
    accepted = [s1.receive() for _ in range(4)]
    assert [S.Name(r.status) for r in accepted] == ["OK"] * 4
    assert sorted(r.frame_id for r in refused + accepted) == list(range(10))
    third = Stream(server.address)
    third.put(good_frame(fmnist, 30))
    with pytest.raises(grpc.RpcError) as err:
        third.receive()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for s in (s1, s2):
        s.close()


def test_deadlines_are_enforced_before_compute(start_server, fmnist):
    server = start_server("--max-delay-ms", "200", "--max-batch", "64")
    stream = Stream(server.address)
    late = good_frame(fmnist, 1)
    late.deadline_ms = 5
    r = stream.send(late)
    assert r.status == S.DEADLINE_EXCEEDED and "not computed" in r.error
    relaxed = good_frame(fmnist, 2)
    relaxed.deadline_ms = 5000
    assert stream.send(relaxed).status == S.OK
    stream.close()


def test_metrics_after_traffic(start_server, fmnist):
    port = free_port()
    server = start_server("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    stream = Stream(server.address)
    for i in range(12):
        assert stream.send(good_frame(fmnist, i)).status == S.OK
    bad = pb.Frame(frame_id=99, model="made-up-model-name", codec="entropic")
    assert stream.send(bad).status == S.UNKNOWN_MODEL
    stream.close()
    text = metrics_text(port)
    samples = parse_samples(text)
    width = str(fmnist.student.widths - 1)
    v = fmnist.version
    ok = f'splitserve_frames_completed_total{{model="fmnist-split",status="OK",version="{v}",width="{width}"}}'
    assert samples[ok] == 12
    assert samples[f'splitserve_frames_received_total{{model="fmnist-split",version="{v}",width="{width}"}}'] == 12
    assert any(k.startswith("splitserve_bytes_received_total") and v > 0 for k, v in samples.items())
    for hist in ("server_latency_seconds", "queue_seconds", "decode_seconds", "tail_seconds", "batch_size"):
        assert any(k.startswith(f"splitserve_{hist}_count") and v > 0 for k, v in samples.items()), hist
    assert 'splitserve_active_streams{transport="grpc"}' in samples and "splitserve_inflight_frames" in samples
    assert any(k.startswith("splitserve_model_loads_total") and 'status="ok"' in k for k in samples)
    # a made-up model name never becomes a label value
    assert "made-up-model-name" not in text
    assert (
        samples[
            'splitserve_frames_completed_total{model="unknown",status="UNKNOWN_MODEL",version="unknown",width="unknown"}'
        ]
        == 1
    )


def test_sigterm_drains_every_frame_in_flight(start_server, fmnist):
    server = start_server("--max-delay-ms", "400", "--max-batch", "256", "--drain-timeout", "20")
    stream = Stream(server.address)
    n = 40
    for i in range(n):
        stream.put(good_frame(fmnist, i))
    time.sleep(0.15)  # frames are read and waiting for their batch
    server.proc.send_signal(signal.SIGTERM)
    results = [stream.receive() for _ in range(n)]
    assert sorted(r.frame_id for r in results) == list(range(n))
    assert all(r.status == S.OK for r in results), [S.Name(r.status) for r in results]
    with pytest.raises(StopIteration):  # the server ends the stream once everything is answered
        stream.receive()
    assert server.proc.wait(30) == 0
    log = server.stop()
    assert "draining" in log and "stopped" in log


def test_new_version_appears_without_dropping_open_streams(start_server, repo, fmnist):
    server = start_server("--models", str(repo), "--poll-interval", "0.3")
    stream = Stream(server.address)
    assert stream.send(good_frame(fmnist, 1)).version == "1"
    add_version(repo, fmnist, "3", tamper=True)  # corrupt: refused, the rest keeps serving
    add_version(repo, fmnist, "2")
    deadline = time.time() + 30
    while True:
        r = stream.send(good_frame(fmnist, 2))
        assert r.status == S.OK
        if r.version == "2":
            break
        assert time.time() < deadline, "version 2 never appeared"
        time.sleep(0.2)
    pinned = good_frame(fmnist, 3)
    pinned.version = "1"
    assert stream.send(pinned).version == "1"  # older versions stay servable on request
    stream.close()
    log = server.stop()
    assert "refusing model bundle" in log and "/3" in log


def test_unusable_settings_fail_fast_with_a_clear_message(tmp_path):
    import subprocess

    from conftest import BIN

    for args, message in (
        (["--max-batch", "0"], "max_batch must be >= 1"),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", "x"], "file not found"),
        (["--models", str(tmp_path / "nowhere")], "no such directory"),
    ):
        proc = subprocess.run([str(BIN / "edge-server"), "--port", "0", *args], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_config_file(start_server, tmp_path, fmnist):
    cfg = tmp_path / "server.toml"
    cfg.write_text(
        'max_inflight_per_stream = 2\nlog_format = "json"\n[batching]\nmax_batch = 8\nmax_delay_ms = 300.0\n'
    )
    server = start_server("--config", str(cfg))
    stream = Stream(server.address)
    for i in range(4):
        stream.put(good_frame(fmnist, i))
    statuses = sorted(S.Name(stream.receive().status) for _ in range(4))
    assert statuses == ["OK", "OK", "OVERLOADED", "OVERLOADED"]
    stream.close()
    first = server.stop().splitlines()[0]
    assert json.loads(first)["logger"].startswith("splitserve")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def add_pickled_version(repo, fmnist, version: str, marker, file: str = "head.pt") -> None:
    """A version whose ``file`` is a pickled object (not weights), with a matching sha256 in its manifest."""
    import hashlib
    import pickle

    dest = repo / fmnist.name / version
    tmp = repo / f".{version}.tmp"
    shutil.copytree(fmnist.path, tmp)
    data = pickle.dumps(_RunsCodeWhenUnpickled(marker))
    (tmp / file).write_bytes(data)
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["version"] = version
    manifest["files"][file] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    tmp.rename(dest)


def test_a_bundle_holding_a_pickled_object_is_refused_alone(start_server, repo, fmnist, tmp_path):
    marker = tmp_path / "code-ran"
    add_pickled_version(repo, fmnist, "2", marker)  # there at start-up: the server must still start
    server = start_server("--models", str(repo), "--poll-interval", "0.2")
    stream = Stream(server.address)
    try:
        r = stream.send(good_frame(fmnist, 1))
        assert r.status == S.OK and r.version == "1"
        add_pickled_version(repo, fmnist, "4", marker, "tail.pt")  # a later bad one does not stop newer ones
        add_version(repo, fmnist, "5")
        deadline = time.time() + 60
        while True:
            r = stream.send(good_frame(fmnist, 2))
            assert r.status == S.OK, r.error
            if r.version == "5":
                break
            assert time.time() < deadline, "version 5 never appeared"
            time.sleep(0.2)
        pinned = good_frame(fmnist, 3)
        pinned.version = "2"
        assert stream.send(pinned).status == S.UNKNOWN_MODEL
    finally:
        stream.close()
    log = server.stop()
    refused = [line for line in log.splitlines() if "refusing model bundle" in line]
    assert len(refused) == 2 and any("/2:" in x for x in refused) and any("/4:" in x for x in refused), log
    assert "Traceback" not in log
    assert not marker.exists()  # weights_only loading never ran the pickled code


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class CountingFrames:
    """A request iterator that counts how many frames the transport has taken from it."""

    def __init__(self, frames) -> None:
        self.frames, self.taken = iter(frames), 0

    def __iter__(self):
        return self

    def __next__(self):
        frame = next(self.frames)
        self.taken += 1
        return frame


def settle(counter: CountingFrames, total: int, quiet_s: float = 5.0) -> int:
    """Wait until the transport took every frame or took none for quiet_s; how many it took."""
    last, since = -1, time.time()
    while counter.taken < total:
        if counter.taken != last:
            last, since = counter.taken, time.time()
        elif time.time() - since > quiet_s:
            break
        time.sleep(0.1)
    return counter.taken


def test_a_stream_that_never_reads_holds_bounded_memory(start_server, fmnist):
    server = start_server("--max-inflight-per-stream", "8")
    before = rss_mib(server.proc.pid)
    tags = {"blob": "x" * 1_000_000}  # ~1 MB of tags on each frame, echoed in its result if accepted
    frames = CountingFrames(pb.Frame(frame_id=i, model="no-such-model", tags=tags) for i in range(400))
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
        responses = pb_grpc.EdgeInferenceStub(ch).Stream(frames)  # written, never read (for now)
        settle(frames, 400)
        grown = rss_mib(server.proc.pid) - before
        # meanwhile another client is served
        other = Stream(server.address)
        assert other.send(good_frame(fmnist, 1)).status == S.OK
        other.close()
        results = [next(responses) for _ in range(frames.taken)]
        responses.cancel()
    assert grown < 150, f"the server grew by {grown:.0f} MiB holding one unread stream"
    assert {S.Name(r.status) for r in results} == {"INVALID_FRAME"}
    assert all("tags of" in r.error and not r.tags and not r.model for r in results)


def test_a_stream_that_never_reads_is_pushed_back(start_server, fmnist):
    metrics_port = free_port()
    server = start_server("--max-inflight-per-stream", "4", "--max-tags-bytes", "300000",
                          "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")  # fmt: skip
    tags = {"note": "y" * 200_000}  # allowed, and echoed: each result is ~200 KB, more than transports buffer
    total = 200
    frames = CountingFrames(pb.Frame(frame_id=i, model="no-such-model", tags=tags) for i in range(total))
    # without BDP probing the device's receive window stays at its default, so the results the server can
    # write ahead are few: how far it reads is then its own doing, not how large gRPC grew the window
    with grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        responses = pb_grpc.EdgeInferenceStub(ch).Stream(frames)
        settle(frames, total)
        # What the server read, not what the client handed to gRPC: frames also wait in both ends' HTTP/2
        # windows and the kernel's loopback buffers, which vary with the machine (the client handed over 27-42
        # of 200 here, 125 once in CI, while the server read 5 each time)
        samples = parse_samples(metrics_text(metrics_port))
        read = samples['splitserve_transport_frames_received_total{transport="grpc"}']
        assert read <= 2 * 4, f"the server read {read:.0f} of {total} frames from a stream that reads nothing"
        # once the device reads, the stream goes on: every frame gets exactly its one result
        ids = [next(responses).frame_id for _ in range(total)]
        responses.cancel()
    assert sorted(ids) == list(range(total))
