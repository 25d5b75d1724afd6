"""Transports between the device client and the edge server; the registry is the one place that picks one.

    transport = make_transport("webrtc", stub, settings, rate=monitor_rate)

Like aiortc's codecs: one module per transport, each behind the small interface in ``base``.
"""

from __future__ import annotations

from typing import Any

from splitserve.device_client.channel import ChannelSettings
from splitserve.device_client.transports.base import Connection, RateSource, Transport, TransportError
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

TRANSPORTS = ("grpc", "webrtc")


def make_transport(
    name: str, stub: pb_grpc.EdgeInferenceStub, settings: ChannelSettings, rate: RateSource, **options: Any
) -> Transport:
    """The transport called ``name``, signalling (or streaming) through ``stub``; ValueError for an unknown one."""
    if name == "grpc":
        from splitserve.device_client.transports.grpc import GrpcTransport

        if options:
            raise ValueError(f"the grpc transport takes no options (got {', '.join(sorted(options))})")
        return GrpcTransport(stub, settings)
    if name == "webrtc":
        # imported here: aiortc (and its native libraries) load only for clients that use it
        try:
            from splitserve.device_client.transports.webrtc import WebRTCTransport
        except ModuleNotFoundError as exc:
            raise ValueError(
                f"the webrtc transport needs {exc.name}: pip install 'splitserve[webrtc]'"
            ) from None

        return WebRTCTransport(stub, settings, rate, **options)
    raise ValueError(f"unknown transport {name!r}; one of {', '.join(TRANSPORTS)}")


__all__ = ["TRANSPORTS", "Connection", "Transport", "TransportError", "make_transport"]
