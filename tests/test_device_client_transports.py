"""The client's transports: the registry, and the WebRTC datachannel's pacing and deadlines against a real server."""

import asyncio

import numpy as np
import pytest

from splitserve.data.samples import load_sample
from splitserve.device_client.channel import ChannelSettings
from splitserve.device_client.client import AsyncSplitClient, ClientError, SplitClient
from splitserve.device_client.transports import TRANSPORTS, make_transport
from splitserve.device_client.transports.webrtc import WebRTCTransport


def test_registry_names_its_transports_and_refuses_others():
    settings = ChannelSettings(target="127.0.0.1:1")
    assert TRANSPORTS == ("grpc", "webrtc")
    with pytest.raises(ValueError, match="unknown transport 'pigeon'; one of grpc, webrtc"):
        make_transport("pigeon", None, settings, lambda: None)
    with pytest.raises(ValueError, match="takes no options"):
        make_transport("grpc", None, settings, lambda: None, deadline_ms=100)
    with pytest.raises(ValueError, match="not both"):
        make_transport("webrtc", None, settings, lambda: None, frame_lifetime_ms=100, frame_retransmits=0)
    webrtc = make_transport("webrtc", None, settings, lambda: None, deadline_ms=150)
    assert isinstance(webrtc, WebRTCTransport) and webrtc.frame_reliability["maxPacketLifeTime"] == 150
    assert make_transport("webrtc", None, settings, lambda: None, frame_retransmits=0).frame_reliability == {
        "maxPacketLifeTime": None, "maxRetransmits": 0}  # fmt: skip


def test_unknown_transport_is_a_client_error(shared_server):
    server = shared_server

    async def main() -> None:
        client = AsyncSplitClient(server.address, "fmnist-split", transport="carrier-pigeon")
        with pytest.raises(ClientError, match="unknown transport"):
            await client.connect()

    asyncio.run(main())


@pytest.mark.e2e
def test_split_client_over_webrtc(shared_server):
    server = shared_server
    images, labels = load_sample("fmnist-test")
    with SplitClient(server.address, "fmnist-split", transport="webrtc", deadline_ms=5000) as client:
        assert client.client.transport.name == "webrtc"
        predictions = [client.infer(images[i]) for i in range(12)]
    assert all(p.ok and p.attempts == 1 for p in predictions)
    assert np.mean([p.index == labels[i] for i, p in enumerate(predictions)]) > 0.5


@pytest.mark.e2e
def test_webrtc_paces_to_the_estimate_and_drops_frames_that_would_miss_their_deadline(shared_server):
    """At the estimated rate frames 3 and 4 could only leave after their deadline: never sent, one outcome each."""
    server = shared_server
    images, _ = load_sample("fmnist-test")

    async def main():  # type: ignore[no-untyped-def]
        client = AsyncSplitClient(server.address, "fmnist-split", transport="webrtc", width=3)
        await client.connect()
        try:
            assert client.connected
            warm = await client.infer(images[0], deadline_ms=5000)  # the first result tells the frame's size
            wire = client.transport.wire_bytes(client_frame(client, warm))
            rate = 8.0 * 2 * client.transport.copies * wire / 1.25  # 0.5 s per frame (and its redundant copy)
            client.supervisor.conn.rate = lambda: rate  # as if the bandwidth monitor estimated this rate
            return warm, await asyncio.gather(*(client.infer(images[i], deadline_ms=1200) for i in range(1, 5)))
        finally:
            await client.close()

    warm, paced = asyncio.run(main())
    assert warm.ok
    first, second, third, fourth = paced
    assert first.ok and first.attempts == 1
    assert second.ok and second.attempts == 1 and second.latency_ms >= 450  # waited for the pacer
    # the pacer would let them go at about 1.0 s and 1.5 s, too late for their 1.2 s budget from the start
    assert fourth.status == "DEADLINE_EXCEEDED" and fourth.attempts == 0 and "never sent" in fourth.error
    assert third.status in ("OK", "DEADLINE_EXCEEDED")  # on the edge of its budget: sent or dropped, once


def client_frame(client, prediction):  # type: ignore[no-untyped-def]
    """A Frame the size of ``prediction``'s, for the wire-size arithmetic."""
    from splitserve.proto import edge_inference_pb2 as pb

    return pb.Frame(frame_id=prediction.frame_id, model=client.bundle.name, version=client.bundle.version,
                    bundle_sha256=client.bundle.sha256, codec=prediction.codec, width=prediction.width,
                    payload=b"x" * prediction.payload_bytes, shape=[1, 1, 1], capture_time_us=1 << 50, top_k=5,
                    deadline_ms=1000)  # fmt: skip


def test_device_client_flags_for_the_transport():
    from splitserve.device_client.cli import check_args, parser, transport_options

    def problem(*argv: str) -> str:
        return check_args(parser().parse_args(["--server", "x:1", *argv]))

    assert problem("--transport", "webrtc", "--frame-retransmits", "0", "--frame-copies", "1") == ""
    assert "unknown transport" in problem("--transport", "quic")
    assert "webrtc only" in problem("--frame-retransmits", "0")
    assert "webrtc only" in problem("--frame-copies", "1")
    args = parser().parse_args(["--server", "x:1", "--transport", "webrtc", "--frame-copies", "1"])
    assert transport_options(args) == {"copies": 1}
