"""WebRTC peers on a real edge-server process: signaling over gRPC, frames and results on datachannels."""

import asyncio
import json
import re
import signal
import subprocess
import time
import urllib.request

import grpc
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from conftest import BIN, free_port
from helpers import good_frame

from splitserve.datachannel import FRAMES_CHANNEL, RESULTS_CHANNEL, Duplicates
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
TOKEN = "webrtc-test-token-0123456789"


class RawPeer:
    """A device's peer connection driven by hand: any bytes on the frames channel, results back.

    Like the device client it drops the server's redundant copy of a result (see splitserve.datachannel).
    """

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames = self.pc.createDataChannel(FRAMES_CHANNEL, ordered=False)
        self.results = self.pc.createDataChannel(RESULTS_CHANNEL, ordered=False)
        self.inbox: asyncio.Queue = asyncio.Queue()
        for channel in (self.frames, self.results):
            channel.on("message", self.inbox.put_nowait)
        self.answer: pb.PeerAnswer | None = None
        self.duplicates = Duplicates()

    async def connect(self, address: str, metadata=()) -> None:
        opened = asyncio.Event()
        self.results.on("open", opened.set)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with grpc.aio.insecure_channel(address) as channel:
            offer = pb.PeerOffer(sdp=self.pc.localDescription.sdp, type="offer")
            self.answer = await pb_grpc.EdgeInferenceStub(channel).Signal(offer, metadata=metadata, timeout=10)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer.sdp, type=self.answer.type))
        await asyncio.wait_for(opened.wait(), 15)

    async def ask(self, message: bytes | str) -> pb.Result:
        self.frames.send(message)
        while True:
            message = await asyncio.wait_for(self.inbox.get(), 10)
            if not self.duplicates.seen(message):
                break
        result = pb.Result()
        result.ParseFromString(message)
        return result

    async def close(self) -> None:
        await self.pc.close()


def metric(port: int, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def server(start_server):
    metrics_port = free_port()
    s = start_server("--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")
    s.metrics_port = metrics_port
    return s


def device_client(address: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "device-client"), "--server", address, "--model", "fmnist-split", "--transport", "webrtc", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_device_client_over_webrtc_answers_every_frame_once(server, tmp_path):
    records = tmp_path / "frames.jsonl"
    out = device_client(server.address, "--frames", "40", "--concurrency", "4", "--deadline-ms", "5000",
                        "--records", str(records), "--json", str(tmp_path / "s.json"))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert sorted(r["i"] for r in rows) == list(range(40))
    assert all(r["status"] == "OK" and r["attempts"] == 1 for r in rows)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["transport"] == "webrtc" and summary["accuracy"] > 0.6
    # every frame crossed the datachannel exactly once and got exactly one result
    m = server.metrics_port
    assert metric(m, "splitserve_transport_frames_received_total", '{transport="webrtc"}') == 40
    assert metric(m, "splitserve_transport_frames_received_total", '{transport="grpc"}') == 0
    completed = re.findall(r'^splitserve_frames_completed_total\{.*status="OK".*\} (\S+)$',
                           urllib.request.urlopen(f"http://127.0.0.1:{m}/metrics").read().decode(), re.M)  # fmt: skip
    assert sum(float(v) for v in completed) == 40


def test_signaling_requires_the_token_when_the_server_has_tokens(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"phone {TOKEN}\n")
    s = start_server("--tokens", str(tokens))

    async def signal_without_token() -> grpc.StatusCode:
        peer = RawPeer()
        try:
            await peer.connect(s.address)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            await peer.close()
        return grpc.StatusCode.OK

    assert asyncio.run(signal_without_token()) == grpc.StatusCode.UNAUTHENTICATED
    refused = device_client(s.address, "--frames", "3", "--deadline-ms", "1500")
    assert refused.returncode == 1 and "OK" not in refused.stdout.split("statuses:")[-1]
    allowed = device_client(s.address, "--frames", "3", "--deadline-ms", "5000", "--token", TOKEN)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_malformed_datachannel_messages_get_clear_errors_and_the_peer_goes_on(server, fmnist):
    async def main() -> list[pb.Result]:
        peer = RawPeer()
        try:
            await peer.connect(server.address)
            assert peer.answer.max_inflight > 0
            garbage = await peer.ask(b"\xff\xff\xff\xff not a protobuf")
            text = await peer.ask("a text message")
            good = await peer.ask(good_frame(fmnist, 7).SerializeToString())
            return [garbage, text, good]
        finally:
            await peer.close()

    garbage, text, good = asyncio.run(main())
    assert garbage.status == pb.Result.INVALID_FRAME and "not a splitserve.v1.Frame" in garbage.error
    assert text.status == pb.Result.INVALID_FRAME and "text message" in text.error
    assert good.status == pb.Result.OK and good.frame_id == 7 and good.top_k
    assert server.proc.poll() is None


def test_a_bad_offer_is_refused_without_harm(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EdgeInferenceStub(channel)
        for offer in (pb.PeerOffer(sdp="v=0\r\nnonsense", type="offer"), pb.PeerOffer(sdp="", type="answer")):
            with pytest.raises(grpc.RpcError) as err:
                stub.Signal(offer, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert metric(server.metrics_port, "splitserve_active_streams", '{transport="webrtc"}') == 0
    assert server.proc.poll() is None


def wait_for_no_peers(server, timeout: float) -> float:
    end = time.time() + timeout
    while time.time() < end:
        left = metric(server.metrics_port, "splitserve_active_streams", '{transport="webrtc"}')
        if left == 0:
            return 0
        time.sleep(0.5)
    return left


@pytest.mark.slow
def test_no_peer_connections_leak_after_100_connect_disconnect_cycles(server, fmnist):
    frame = good_frame(fmnist, 1).SerializeToString()

    async def cycles(n: int) -> int:
        answered = 0
        for _ in range(n):
            peer = RawPeer()
            try:
                await peer.connect(server.address)
                answered += (await peer.ask(frame)).status == pb.Result.OK
            finally:
                await peer.close()
        return answered

    assert asyncio.run(cycles(100)) == 100
    assert wait_for_no_peers(server, 30) == 0
    assert server.proc.poll() is None


@pytest.mark.slow
def test_a_vanished_device_is_cleaned_up(server):
    """A device killed mid-run says no goodbye: ICE consent checks fail and the server closes its peer."""
    proc = subprocess.Popen([str(BIN / "device-client"), "--server", server.address, "--model", "fmnist-split",
                             "--transport", "webrtc", "--frames", "100000", "--fps", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        end = time.time() + 60
        while metric(server.metrics_port, "splitserve_transport_frames_received_total", '{transport="webrtc"}') < 5:
            assert time.time() < end and proc.poll() is None, "the device never got frames through"
            time.sleep(0.2)
        assert metric(server.metrics_port, "splitserve_active_streams", '{transport="webrtc"}') == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_for_no_peers(server, 90) == 0  # aioice: 6 failed consent checks, 5 s apart
    assert server.proc.poll() is None


def test_the_redundant_copy_of_a_frame_is_answered_once(server, fmnist):
    """The device sends small frames twice; the server computes and answers the frame once (twice on the wire)."""

    async def main() -> list[bytes]:
        peer = RawPeer()
        try:
            await peer.connect(server.address)
            frame = good_frame(fmnist, 11)
            frame.deadline_ms = 5000
            data = frame.SerializeToString()
            peer.frames.send(data)
            peer.frames.send(data)
            got = [await asyncio.wait_for(peer.inbox.get(), 10)]
            try:
                while True:
                    got.append(await asyncio.wait_for(peer.inbox.get(), 1.5))
            except TimeoutError:
                return got
        finally:
            await peer.close()

    got = asyncio.run(main())
    assert len(got) == 2 and got[0] == got[1]  # one result, and its redundant copy
    result = pb.Result.FromString(got[0])
    assert result.status == pb.Result.OK and result.frame_id == 11
    assert metric(server.metrics_port, "splitserve_transport_frames_received_total", '{transport="webrtc"}') == 1


def test_a_frame_in_pieces_is_rebuilt_from_any_k_and_answered_once(server, fmnist):
    """A frame larger than a packet comes as k pieces and their XOR; one piece lost costs nothing."""
    from splitserve import parity

    async def main() -> tuple[list[bytes], pb.Result]:
        peer = RawPeer()
        try:
            await peer.connect(server.address)
            frame = good_frame(fmnist, 21)
            frame.deadline_ms = 5000
            pieces = parity.split(frame.SerializeToString(), group=7, body_bytes=64)
            assert len(pieces) >= 4  # k >= 3 data pieces and the parity piece
            for piece in [pieces[-1], *pieces[2:-1], pieces[0]]:  # out of order, data piece 1 lost
                peer.frames.send(piece)
            got = [await asyncio.wait_for(peer.inbox.get(), 10)]
            peer.frames.send(pieces[1])  # arrives after the frame was rebuilt: spare
            try:
                while True:
                    got.append(await asyncio.wait_for(peer.inbox.get(), 1.5))
            except TimeoutError:
                pass
            bad = await peer.ask(pieces[0][:5])
            return got, bad
        finally:
            await peer.close()

    got, bad = asyncio.run(main())
    assert len(got) == 2 and got[0] == got[1]  # one result, and its redundant copy
    result = pb.Result.FromString(got[0])
    assert result.status == pb.Result.OK and result.frame_id == 21
    assert bad.status == pb.Result.INVALID_FRAME and "malformed frame piece" in bad.error
    assert metric(server.metrics_port, "splitserve_transport_frames_received_total", '{transport="webrtc"}') == 1
    assert server.proc.poll() is None
