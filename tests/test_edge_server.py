"""A real edge-server process under bad input: each bad frame fails alone, the stream goes on."""

import json
import threading

import grpc
import numpy as np
import pytest
from helpers import Stream, good_frame

from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
S = pb.Result.Status


def bad_frames(bundle):
    good = good_frame(bundle, 0)
    narrow = bundle.latent_shape(0)
    cases = {
        "unknown model": (pb.Frame(frame_id=1, model="no-such-model", codec="entropic"), S.UNKNOWN_MODEL),
        "unknown version": (pb.Frame(frame_id=2, model=bundle.name, version="999", codec="entropic"), S.UNKNOWN_MODEL),
        "unknown codec": (pb.Frame(frame_id=3, model=bundle.name, codec="h265", payload=b"x"), S.INVALID_FRAME),
        "unknown width": (pb.Frame(frame_id=4, model=bundle.name, codec="entropic", width=99), S.INVALID_FRAME),
        "corrupt payload": (
            pb.Frame(frame_id=5, model=bundle.name, codec="entropic", width=good.width,
                     payload=bytes(reversed(good.payload)) + b"\x07\x00\x00\x00", shape=good.shape),
            S.INVALID_FRAME,
        ),
        "wrong shape": (
            pb.Frame(frame_id=6, model=bundle.name, codec="entropic", width=0, payload=good.payload,
                     shape=[narrow[0], 4096, 4096]),
            S.INVALID_FRAME,
        ),
        "shape for another width": (
            pb.Frame(frame_id=7, model=bundle.name, codec="entropic", width=0, payload=good.payload, shape=good.shape),
            S.INVALID_FRAME,
        ),
        "garbage image": (
            pb.Frame(frame_id=8, model=bundle.name, codec="jpeg", payload=b"\xff\xd8 not a jpeg",
                     shape=list(bundle.input.image_shape)),
            S.INVALID_FRAME,
        ),
        "wrong bundle": (
            pb.Frame(frame_id=9, model=bundle.name, bundle_sha256="0" * 64, codec="entropic"), S.UNKNOWN_MODEL
        ),
    }  # fmt: skip
    return cases


def test_each_bad_frame_gets_its_status_and_the_stream_goes_on(shared_server, fmnist):
    server = shared_server
    stream = Stream(server.address)
    try:
        for name, (frame, status) in bad_frames(fmnist).items():
            result = stream.send(frame)
            assert result.frame_id == frame.frame_id, name
            assert result.status == status, f"{name}: {S.Name(result.status)} {result.error}"
            assert result.error, f"{name}: no error message"
            ok = stream.send(good_frame(fmnist, 100 + frame.frame_id))
            assert ok.status == S.OK, f"stream broken after {name}: {ok.error}"
            assert ok.top_k and ok.top_k[0].label in fmnist.labels
    finally:
        stream.close()


def test_other_clients_are_unaffected_by_a_bad_one(shared_server, fmnist):
    server = shared_server
    errors = []

    def good_client() -> None:
        s = Stream(server.address)
        try:
            for i in range(30):
                r = s.send(good_frame(fmnist, i))
                if r.status != S.OK:
                    errors.append(r.error)
        finally:
            s.close()

    t = threading.Thread(target=good_client)
    t.start()
    bad = Stream(server.address)
    rng = np.random.default_rng(0)
    for i in range(60):
        garbage = rng.integers(0, 256, size=int(rng.integers(0, 500)), dtype=np.uint8).tobytes()
        r = bad.send(pb.Frame(frame_id=i, model=fmnist.name, codec="entropic", width=0, payload=garbage,
                              shape=list(fmnist.latent_shape(0))))  # fmt: skip
        assert r.status in (S.INVALID_FRAME, S.OK)
    bad.close()
    t.join(60)
    assert not errors


def test_unary_infer_and_model_listing(shared_server, fmnist):
    server = shared_server
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.EdgeInferenceStub(ch)
        r = stub.Infer(good_frame(fmnist, 3))
        assert r.status == S.OK and r.timings.total_ms > 0 and r.model == fmnist.name
        models = stub.ListModels(pb.ListModelsRequest())
        names = [m.name for m in models.models]
        assert fmnist.name in names and "lite0-imagenet" in names
        # the listing leaves the labels (1,000 for lite0-imagenet) and the full manifest to GetModel
        assert all(not m.labels and not m.manifest_json and m.widths and m.bundle_sha256 for m in models.models)
        assert models.ByteSize() < 8_000
        full = stub.ListModels(pb.ListModelsRequest(include_labels=True))
        assert {len(m.labels) for m in full.models if m.name == "lite0-imagenet"} == {1000}
        m = stub.GetModel(pb.GetModelRequest(name=fmnist.name))
        assert m.bundle_sha256 == fmnist.sha256 and len(m.widths) == fmnist.student.widths
        assert list(m.labels) == fmnist.labels and json.loads(m.manifest_json)["labels"] == fmnist.labels
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModel(pb.GetModelRequest(name="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection(shared_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = shared_server
    with grpc.insecure_channel(server.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="splitserve.v1.EdgeInference")
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for r in responses for s in r.list_services_response.service}
        assert "splitserve.v1.EdgeInference" in services


def test_decompression_bombs_are_invalid_frames_with_a_short_log(start_server, fmnist):
    from helpers import jpeg_bomb, png_bomb

    server = start_server()
    shape = list(fmnist.input.image_shape)
    bombs = [("png", png_bomb()), ("jpeg", jpeg_bomb()), ("png", png_bomb(10000, 10000))]
    frames = [pb.Frame(frame_id=i, model=fmnist.name, codec=c, payload=p, shape=shape) for i, (c, p) in
              enumerate(bombs * 10)]  # fmt: skip
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.EdgeInferenceStub(ch)
        for frame in frames[:3]:
            r = stub.Infer(frame)
            assert r.status == S.INVALID_FRAME and "huge size" in r.error, (S.Name(r.status), r.error)
    stream = Stream(server.address)
    try:
        for frame in frames:
            r = stream.send(frame)
            assert r.status == S.INVALID_FRAME and "huge size" in r.error, (S.Name(r.status), r.error)
        assert stream.send(good_frame(fmnist, 1)).status == S.OK
    finally:
        stream.close()
    log = server.stop()
    assert "Traceback" not in log and "DecompressionBomb" not in log
    assert len(log.splitlines()) < 10, log  # start-up and shutdown lines, nothing per frame
