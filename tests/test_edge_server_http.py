"""edge-server --http-port: WHIP signalling and the bundles for browsers, on a real server process."""

import asyncio
import hashlib
import json
import urllib.error
import urllib.request

import grpc
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from conftest import free_port
from test_edge_server_webrtc import metric

from splitserve.data.samples import load_sample
from splitserve.datachannel import FRAMES_CHANNEL, RESULTS_CHANNEL
from splitserve.device_client import AsyncSplitClient, ClientOptions
from splitserve.device_client.channel import ChannelSettings
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
TOKEN = "http-test-token-0123456789abcdef"
ORIGIN = "https://app.example"


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request; an HTTP error status is an answer, not an exception."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


async def offer_sdp() -> str:
    """A real browser-shaped offer: the two datachannels a device opens."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel(FRAMES_CHANNEL, ordered=False)
    pc.createDataChannel(RESULTS_CHANNEL, ordered=False)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.fixture
def web(start_server, tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"browser {TOKEN}\n")
    http_port, metrics_port = free_port(), free_port()
    server = start_server("--http-port", str(http_port), "--tokens", str(tokens), "--cors-origin", ORIGIN,
                          "--max-streams", "6", "--metrics-port", str(metrics_port),
                          "--metrics-host", "127.0.0.1", models="all")  # fmt: skip
    server.base = f"http://127.0.0.1:{http_port}"
    server.metrics_port = metrics_port
    return server


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_a_device_signalling_over_whip_gets_every_frame_answered(web):
    images, labels = load_sample("fmnist-test")

    async def main():  # type: ignore[no-untyped-def]
        options = ClientOptions(transport="webrtc", deadline_ms=10_000, channel=ChannelSettings(target="", token=TOKEN),
                                transport_options={"whip": f"{web.base}/v1/whip"})  # fmt: skip
        async with AsyncSplitClient(web.address, "fmnist-split", options) as client:
            return await asyncio.gather(*(client.infer(images[i]) for i in range(20)))

    predictions = asyncio.run(main())
    assert [p.status for p in predictions] == ["OK"] * 20
    assert sum(p.index == int(y) for p, y in zip(predictions, labels[:20], strict=True)) >= 14
    assert metric(web.metrics_port, "splitserve_transport_frames_received_total", '{transport="webrtc"}') >= 20


def test_whip_refusals_are_clear_and_harmless(web):
    sdp = asyncio.run(offer_sdp()).encode()
    url = f"{web.base}/v1/whip"
    sdp_headers = {**AUTH, "Content-Type": "application/sdp"}
    cases = [
        ({"Content-Type": "application/sdp"}, sdp, 401, "bearer token"),
        ({**AUTH, "Content-Type": "application/sdp", "Authorization": "Bearer wrong"}, sdp, 401, "bearer token"),
        ({**AUTH, "Content-Type": "text/plain"}, sdp, 415, "application/sdp"),
        (sdp_headers, b"v=0\r\nnot an offer at all", 400, "no datachannel"),
        (sdp_headers, b"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\ngarbage=\xff", 400, "UTF-8"),
        (sdp_headers, b"v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=nonsense", 400, "cannot use"),
        (sdp_headers, b"m=application " + b"x" * 200_000, 413, ""),
    ]
    for headers, body, status, text in cases:
        got, _, answer = http("POST", url, body, headers)
        assert got == status and text.encode() in answer and b"Traceback" not in answer, (status, answer[:300])
    assert http("DELETE", f"{url}/no-such-peer", headers=AUTH)[0] == 404
    # CORS: a page from an allowed origin may call it, any other origin's preflight is refused
    status, headers, _ = http("OPTIONS", url, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = http("OPTIONS", url, headers={"Origin": "https://evil.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    # after all of it, one real offer is answered and the server still serves gRPC
    status, headers, answer = http("POST", url, sdp, {**sdp_headers, "Origin": ORIGIN})
    assert status == 201 and headers["Content-Type"].startswith("application/sdp") and b"m=application" in answer
    assert headers["Location"].startswith("/v1/whip/") and int(headers["X-Splitserve-Window"]) > 0
    assert headers["Access-Control-Allow-Origin"] == ORIGIN and "Location" in headers["Access-Control-Expose-Headers"]
    assert http("DELETE", web.base + headers["Location"], headers=AUTH)[0] == 200
    assert web.proc.poll() is None and "Traceback" not in web.stop()


async def whip_connect(pc: RTCPeerConnection, url: str, channels) -> dict:  # type: ignore[no-untyped-def]
    """POST ``pc``'s offer to ``url``, set the answer, wait until ``channels`` open; the response's headers."""
    opened = [asyncio.Event() for _ in channels]
    for channel, event in zip(channels, opened, strict=True):
        channel.on("open", event.set)
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer = await asyncio.to_thread(http, "POST", url, pc.localDescription.sdp.encode(),
                                                      {**AUTH, "Content-Type": "application/sdp"})  # fmt: skip
    assert status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.decode(), type="answer"))
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 15)
    return dict(headers)


def test_a_lane_carries_some_of_a_peers_pieces_and_ends_with_it(web, fmnist):
    """A browser's second association: its pieces and the peer's rebuild one frame, answered on the peer."""
    from helpers import good_frame

    from splitserve import parity

    sdp = asyncio.run(offer_sdp()).encode()
    sdp_headers = {**AUTH, "Content-Type": "application/sdp"}
    assert http("POST", f"{web.base}/v1/whip/no-such-peer/lane", sdp, sdp_headers)[0] == 404

    async def main():  # type: ignore[no-untyped-def]
        pc, lane = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
        try:
            frames = pc.createDataChannel(FRAMES_CHANNEL, ordered=False)
            results = pc.createDataChannel(RESULTS_CHANNEL, ordered=False)
            inbox: asyncio.Queue = asyncio.Queue()
            results.on("message", inbox.put_nowait)
            location = (await whip_connect(pc, f"{web.base}/v1/whip", [frames, results]))["Location"]
            lane_url = f"{web.base}{location}/lane"
            refused = [http("POST", lane_url, sdp, {"Content-Type": "application/sdp"}),
                       http("POST", lane_url, b"v=0\r\nno datachannel here", sdp_headers)]  # fmt: skip
            lane_frames = lane.createDataChannel(FRAMES_CHANNEL, ordered=False)
            stray = lane.createDataChannel(RESULTS_CHANNEL, ordered=False)  # a lane carries frames only
            await whip_connect(lane, lane_url, [lane_frames])
            second = await asyncio.to_thread(http, "POST", lane_url, sdp, sdp_headers)
            frame = good_frame(fmnist, 31)
            frame.deadline_ms = 5000
            pieces = parity.split(frame.SerializeToString(), group=3, body_bytes=64)
            assert len(pieces) >= 4
            for i, piece in enumerate(pieces[:-2] + pieces[-1:]):  # the last data piece lost
                (lane_frames if i % 2 else frames).send(piece)
            result = pb.Result.FromString(await asyncio.wait_for(inbox.get(), 10))
            for _ in range(50):  # the server closed the lane's other channel
                if stray.readyState == "closed":
                    break
                await asyncio.sleep(0.1)
            stray_state = stray.readyState
            assert http("DELETE", web.base + location, headers=AUTH)[0] == 200
            for _ in range(100):  # the lane ends with its peer
                if lane.connectionState == "closed" or lane_frames.readyState == "closed":
                    break
                await asyncio.sleep(0.1)
            return refused, second, result, lane_frames.readyState, lane.connectionState, stray_state
        finally:
            await pc.close()
            await lane.close()

    refused, second, result, lane_channel, lane_state, stray_state = asyncio.run(main())
    assert stray_state == "closed"
    assert [r[0] for r in refused] == [401, 400]
    assert second[0] == 409 and b"lane" in second[2]
    assert result.status == pb.Result.OK and result.frame_id == 31
    assert "closed" in (lane_channel, lane_state)
    assert metric(web.metrics_port, "splitserve_transport_frames_received_total", '{transport="webrtc"}') == 1
    assert web.proc.poll() is None and "Traceback" not in web.stop()


def test_a_burst_of_offers_stays_within_max_streams_on_both_signalling_paths(web):
    """Every offer is counted before anything is awaited: 30 at once against --max-streams 6 get 6 answers."""
    sdp = asyncio.run(offer_sdp())

    async def burst():  # type: ignore[no-untyped-def]
        async def post():  # type: ignore[no-untyped-def]
            return await asyncio.to_thread(http, "POST", f"{web.base}/v1/whip", sdp.encode(),
                                           {**AUTH, "Content-Type": "application/sdp"})  # fmt: skip

        async def signal(stub):  # type: ignore[no-untyped-def]
            try:
                await stub.Signal(pb.PeerOffer(sdp=sdp, type="offer"), metadata=(("authorization", f"Bearer {TOKEN}"),))
                return 201
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        async with grpc.aio.insecure_channel(web.address) as channel:
            stub = pb_grpc.EdgeInferenceStub(channel)
            return await asyncio.gather(*(post() for _ in range(15)), *(signal(stub) for _ in range(15)))

    results = asyncio.run(burst())
    answered = [r for r in results if r == 201 or (isinstance(r, tuple) and r[0] == 201)]
    refused = [r for r in results if isinstance(r, tuple) and r[0] == 503]
    assert len(answered) == 6, results
    assert len(refused) + results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 24
    assert all(b"streams open" in r[2] for r in refused)
    # the WHIP peers that never connect end with DELETE; the Signal ones when their channels never open
    for _, headers, _ in (r for r in results if isinstance(r, tuple) and r[0] == 201):
        assert http("DELETE", web.base + headers["Location"], headers=AUTH)[0] == 200
    assert web.proc.poll() is None


def test_bundle_files_are_served_verified_and_cached(web):
    status, _, body = http("GET", f"{web.base}/v1/models", headers=AUTH)
    assert status == 200
    manifests = {m["name"]: m for m in json.loads(body)["models"]}
    assert {"fmnist-split", "lite0-imagenet"} <= set(manifests) and "training" not in manifests["fmnist-split"]
    assert http("GET", f"{web.base}/v1/models")[0] == 401
    m = manifests["fmnist-split"]
    base = f"{web.base}/v1/bundles/fmnist-split/{m['version']}"
    for name in ("head-w0.onnx", "entropy.npz"):
        status, headers, body = http("GET", f"{base}/{name}", headers=AUTH)
        assert status == 200 and hashlib.sha256(body).hexdigest() == m["files"][name]["sha256"]
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        etag = headers["ETag"]
        assert http("GET", f"{base}/{name}", headers={**AUTH, "If-None-Match": etag})[0] == 304
    status, _, body = http("GET", f"{base}/manifest.json", headers=AUTH)
    assert status == 200 and json.loads(body)["name"] == "fmnist-split"
    for path in ("tail.pt", "..%2F..%2Fmanifest.json", "..", "%2e%2e", "nope.onnx"):
        status, _, body = http("GET", f"{base}/{path}", headers=AUTH)
        assert status == 404 and b"Traceback" not in body, path
    for path in ("/v1/bundles/../../etc/passwd", "/v1/bundles/fmnist-split/999/head-w0.onnx",
                 "/v1/bundles/no-model/1/head-w0.onnx", "/v1/bundles/fmnist-split/..%2F..%2F/etc"):  # fmt: skip
        assert http("GET", web.base + path, headers=AUTH)[0] == 404, path
    # the demo is cross-origin isolated (onnxruntime-web's threads need it), built here or not; the API is not
    _, headers, _ = http("GET", f"{web.base}/demo/", headers=AUTH)
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert "Cross-Origin-Embedder-Policy" not in http("GET", f"{web.base}/v1/models", headers=AUTH)[1]
    assert web.proc.poll() is None


def test_bad_http_settings_are_clear():
    from splitserve.edge_server.config import ServerConfigError, build_config

    for overrides, message in (
        ({"http_port": 70000}, "http_port must be within"),
        ({"cors_origins": ["app.example"]}, "is not an origin"),
        ({"cors_origins": ["https://app.example/path"]}, "is not an origin"),
        ({"max_offer_bytes": 10}, "max_offer_bytes must be"),
    ):
        with pytest.raises(ServerConfigError, match=message):
            build_config(None, dict(overrides))
