"""Frame payload codecs, by codec id: the registry.

    encoder = get_encoder("jpeg", quality=75)
    decoder = get_decoder("jpeg", shape=(224, 224, 3))

Each codec lives in its own module; ``base`` holds the interface.
"""

from __future__ import annotations

from typing import Any

from splitserve.codecs.base import CodecError, Decoder, Encoder
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

FEATURE_CODECS = ("entropic", "fp16", "int8")
IMAGE_CODECS = ("jpeg", "webp", "png")


def _lookup(codec_id: str) -> tuple[type[Encoder], type[Decoder]]:
    try:
        return _CODECS[codec_id]
    except KeyError:
        raise ValueError(f"unknown codec {codec_id!r}; known codecs: {', '.join(sorted(_CODECS))}") from None


def get_encoder(codec_id: str, **params: Any) -> Encoder:
    return _lookup(codec_id)[0](**params)


def get_decoder(codec_id: str, **params: Any) -> Decoder:
    return _lookup(codec_id)[1](**params)


def codec_ids() -> list[str]:
    return sorted(_CODECS)


__all__ = [
    "CodecError",
    "Decoder",
    "Encoder",
    "EntropyTables",
    "FEATURE_CODECS",
    "IMAGE_CODECS",
    "codec_ids",
    "get_decoder",
    "get_encoder",
]
