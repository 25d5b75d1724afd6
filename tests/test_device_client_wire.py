"""What the client and the simulator plan with for a frame's size on the wire, against real Frames."""

import time

import pytest
import torch

from splitserve.codecs import CODEC_IDS, codec_kind
from splitserve.data.samples import load_sample
from splitserve.device_client.client import frame_overhead, status_name, wire_bytes
from splitserve.models.bundle import DevicePath
from splitserve.proto import edge_inference_pb2 as pb


@pytest.mark.parametrize("codec", CODEC_IDS)
def test_frame_overhead_plus_payload_is_what_the_frame_puts_on_the_wire(fmnist, codec):
    image = torch.from_numpy(load_sample(fmnist.manifest["sample"])[0][0])
    for width in range(fmnist.student.widths) if codec_kind(codec).has_widths else [0]:
        device = DevicePath(fmnist, codec, width)
        payload = device(image[None])[0]
        frame = pb.Frame(  # filled as AsyncSplitClient._send fills one, with a deadline as _pump sets it
            frame_id=12345, model=fmnist.name, version=fmnist.version, bundle_sha256=fmnist.sha256, codec=codec,
            width=width, payload=payload, shape=list(device.shape), capture_time_us=time.time_ns() // 1000,
            top_k=5, deadline_ms=150,
        )  # fmt: skip
        planned = len(payload) + frame_overhead(fmnist, codec, width)
        # the planned size is an upper bound within a few bytes (varint ids and lengths may be shorter)
        assert 0 <= planned - wire_bytes(frame) <= 8, (codec, width, planned, wire_bytes(frame))


def test_status_names_come_from_the_proto_and_unknown_numbers_stay_numbers():
    assert status_name(pb.Result.Status.OK) == "OK"
    assert status_name(pb.Result.Status.OVERLOADED) == "OVERLOADED"
    assert status_name(999) == "999"
