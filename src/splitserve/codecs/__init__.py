"""Frame payload codecs, by codec id: the registry.

    encoder = get_encoder("jpeg", quality=75)
    decoder = get_decoder("jpeg", shape=(224, 224, 3))
    codec_kind("jpeg")  # PayloadKind.IMAGE: no device stage, the image's shape, one batch per model

Each codec lives in its own module; ``base`` holds the interface. This is the one
place that maps a codec id to what it is: callers ask ``codec_kind`` and never
compare codec ids themselves.
"""

from __future__ import annotations

from typing import Any

from splitserve.codecs.base import BatchKey, CodecError, Decoder, Encoder, PayloadKind
from splitserve.codecs.entropic import EntropicDecoder, EntropicEncoder, EntropyTables
from splitserve.codecs.image import (
    JpegDecoder,
    JpegEncoder,
    PngDecoder,
    PngEncoder,
    WebpDecoder,
    WebpEncoder,
)
from splitserve.codecs.tensor import Fp16Decoder, Fp16Encoder, Int8Decoder, Int8Encoder

_CODECS: dict[str, tuple[type[Encoder], type[Decoder]]] = {
    "entropic": (EntropicEncoder, EntropicDecoder),
    "fp16": (Fp16Encoder, Fp16Decoder),
    "int8": (Int8Encoder, Int8Decoder),
    "jpeg": (JpegEncoder, JpegDecoder),
    "webp": (WebpEncoder, WebpDecoder),
    "png": (PngEncoder, PngDecoder),
}

# Every codec id, in the order manifests and help texts list them.
CODEC_IDS: tuple[str, ...] = tuple(_CODECS)


def _lookup(codec_id: str) -> tuple[type[Encoder], type[Decoder]]:
    try:
        return _CODECS[codec_id]
    except KeyError:
        raise ValueError(f"unknown codec {codec_id!r}; known codecs: {', '.join(sorted(_CODECS))}") from None


def get_encoder(codec_id: str, **params: Any) -> Encoder:
    return _lookup(codec_id)[0](**params)


def get_decoder(codec_id: str, **params: Any) -> Decoder:
    return _lookup(codec_id)[1](**params)


def codec_kind(codec_id: str) -> PayloadKind:
    """What a codec's payload carries: its shape, whether the device runs a network first, its batch key."""
    return _lookup(codec_id)[0].kind


__all__ = [
    "BatchKey",
    "CODEC_IDS",
    "CodecError",
    "Decoder",
    "Encoder",
    "EntropyTables",
    "PayloadKind",
    "codec_kind",
    "get_decoder",
    "get_encoder",
]
