"""Every setting of a split client, in one typed object.

    options = ClientOptions(policy="adaptive", deadline_ms=150, runtime="onnx")
    async with AsyncSplitClient("edge:50051", "lite0-imagenet", options) as client: ...

The defaults are what a device wants when it knows nothing else: the widest width over
gRPC, the head in torch where it is installed (onnxruntime otherwise), no deadline (a
frame then gives up after ``give_up_s``).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from splitserve.device_client.channel import ChannelSettings

if TYPE_CHECKING:
    from splitserve.device_client.policy import Policy


@dataclass
class ClientOptions:
    # -- which model ----------------------------------------------------------------------------
    #: bundle version ("" : the newest this device has, or the server's with ``fetch``)
    version: str = ""
    #: download the head from the server (GetHead) instead of using a bundle installed here
    fetch: bool = False
    # -- how frames are made -------------------------------------------------------------------
    #: payload codec: entropic (the split), fp16 / int8 (raw features), jpeg / webp / png (the image)
    codec: str = "entropic"
    #: width for codecs with widths when no policy chooses (-1: the widest)
    width: int = -1
    #: None (fixed width) | "fixed:W" | "adaptive" | "local" | a Policy object
    policy: str | Policy | None = None
    #: per-frame deadline in ms (0: none; a frame then waits up to give_up_s)
    deadline_ms: int = 0
    top_k: int = 5
    #: JPEG / WebP quality for the image codecs
    image_quality: int = 75
    #: the head's runtime: torch | onnx | auto (torch where installed)
    runtime: str = "auto"
    head_threads: int | None = None
    #: emulate a slower device: head and local compute take this many times as long
    slowdown: float = 1.0
    # -- how the link is kept ------------------------------------------------------------------
    #: grpc | webrtc
    transport: str = "grpc"
    #: the transport's own options (e.g. webrtc: frame_retransmits, copies)
    transport_options: dict[str, Any] = field(default_factory=dict)
    #: TLS, token, certificates (the target is the client's server argument)
    channel: ChannelSettings | None = None
    connect_timeout: float = 15.0
    #: reconnect backoff cap, seconds (the backoff doubles from 0.1 s, with jitter)
    max_backoff_s: float = 5.0
    #: how long a frame without a deadline waits for its result
    give_up_s: float = 30.0

    def __post_init__(self) -> None:
        self.slowdown = max(1.0, float(self.slowdown))
        self.transport_options = dict(self.transport_options or {})


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(ClientOptions))


def options_from(options: ClientOptions | None, keywords: dict[str, Any], caller: str) -> ClientOptions:
    """The options object, with the keyword arguments of the older API (deprecated) applied to it."""
    unknown = sorted(set(keywords) - OPTION_NAMES)
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword arguments {unknown}; "
                        f"ClientOptions has {sorted(OPTION_NAMES)}")
    options = dataclasses.replace(options) if options is not None else ClientOptions()
    if keywords:
        warnings.warn(
            f"{caller}(..., {', '.join(f'{k}=' for k in keywords)}) is deprecated: "
            f"pass ClientOptions({', '.join(f'{k}=...' for k in keywords)}) instead",
            DeprecationWarning,
            stacklevel=3,
        )
        options = dataclasses.replace(options, **keywords)
    return options
