"""Raw feature codecs, the split-computing baselines: fp16, and int8 + zlib or zstd.

They carry a teacher's features at the split point as they are, with no learned
bottleneck, to show what the entropic codec saves.

int8 payload layout (little-endian):
    byte 0   format version (1)
    byte 1   flags: bit 0 = per-channel scales, bits 4-7 = compressor (0 zlib, 1 zstd)
    then     float32 (minimum, step) per channel, or one pair per tensor
    then     the compressed uint8 codes, C*H*W of them
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from splitserve.codecs.base import CodecError, Decoder, Encoder, PayloadKind, as_array, numel, to_tensor

if TYPE_CHECKING:
    import torch

_COMPRESSORS = {"zlib": 0, "zstd": 1}
_VERSION = 1


def _zstd():  # type: ignore[no-untyped-def]
    """zstandard, imported on first use: only the int8 codec's zstd mode needs it, and a device
    install (splitserve[device], which runs the entropic head) leaves its 24 MB out."""
    try:
        import zstandard
    except ModuleNotFoundError:
        raise CodecError("int8: the zstd compressor needs zstandard: pip install 'splitserve[server]'") from None
    return zstandard


def _finite(x: np.ndarray, codec_id: str) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise CodecError(f"{codec_id}: payload holds NaN or infinite values")
    return x


class Fp16Encoder(Encoder):
    codec_id = "fp16"
    kind = PayloadKind.FEATURES

    def encode(self, data: np.ndarray | torch.Tensor) -> bytes:
        return np.ascontiguousarray(as_array(data).astype("<f2")).tobytes()


class Fp16Decoder(Decoder):
    codec_id = "fp16"
    kind = PayloadKind.FEATURES

    def decode(self, payload: bytes, shape: Sequence[int]) -> torch.Tensor:
        self.check_shape(shape)
        n = numel(self.shape)
        if len(payload) != 2 * n:
            raise CodecError(f"fp16: payload is {len(payload)} bytes, {list(self.shape)} needs {2 * n}")
        x = np.frombuffer(payload, dtype="<f2").astype(np.float32)
        return to_tensor(_finite(x, self.codec_id).reshape(self.shape))


class Int8Encoder(Encoder):
    codec_id = "int8"
    kind = PayloadKind.FEATURES

    def __init__(self, compressor: str = "zstd", per_channel: bool = True, level: int | None = None) -> None:
        if compressor not in _COMPRESSORS:
            raise ValueError(f"int8: unknown compressor {compressor!r}; use one of {sorted(_COMPRESSORS)}")
        self.compressor = compressor
        self.per_channel = per_channel
        self.level = level

    def encode(self, data: np.ndarray | torch.Tensor) -> bytes:
        x = as_array(data).astype(np.float32, copy=False)
        rows = x.reshape(x.shape[0], -1) if self.per_channel else x.reshape(1, -1)
        lo = rows.min(axis=1)
        step = (rows.max(axis=1) - lo) / 255.0
        step = np.where(step > 0, step, 1.0).astype(np.float32)
        codes = np.clip(np.rint((rows - lo[:, None]) / step[:, None]), 0, 255).astype(np.uint8)
        if self.compressor == "zlib":
            body = zlib.compress(codes.tobytes(), 9 if self.level is None else self.level)
        else:
            body = _zstd().ZstdCompressor(level=12 if self.level is None else self.level).compress(codes.tobytes())
        flags = int(self.per_channel) | (_COMPRESSORS[self.compressor] << 4)
        scales = np.stack([lo, step], axis=1).astype("<f4").tobytes()
        return struct.pack("<BB", _VERSION, flags) + scales + body


class Int8Decoder(Decoder):
    codec_id = "int8"
    kind = PayloadKind.FEATURES

    def decode(self, payload: bytes, shape: Sequence[int]) -> torch.Tensor:
        self.check_shape(shape)
        n = numel(self.shape)
        if len(payload) < 2:
            raise CodecError("int8: payload too short for its header")
        version, flags = struct.unpack_from("<BB", payload)
        if version != _VERSION or flags & ~0x31:
            raise CodecError(f"int8: unknown payload format (version {version}, flags {flags:#x})")
        per_channel, compressor = bool(flags & 1), flags >> 4
        rows = self.shape[0] if per_channel else 1
        header = 2 + 8 * rows
        if len(payload) < header:
            raise CodecError(f"int8: payload of {len(payload)} bytes is shorter than its {header}-byte header")
        scales = np.frombuffer(payload, dtype="<f4", count=2 * rows, offset=2).reshape(rows, 2)
        _finite(scales, self.codec_id)
        body = payload[header:]
        zstd_error = _zstd().ZstdError if compressor else zlib.error
        try:
            if compressor == 0:
                d = zlib.decompressobj()
                codes = d.decompress(body, n + 1)  # bounded: never inflates past what the shape needs
                complete = d.eof and not d.unconsumed_tail and not d.unused_data
            else:
                with _zstd().ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
                    codes = reader.read(n + 1)  # bounded, as for zlib
                    complete = len(codes) == n and reader.read(1) == b""
        except (zlib.error, zstd_error) as exc:
            raise CodecError(f"int8: corrupt compressed data ({exc})") from None
        if len(codes) != n or not complete:
            raise CodecError(f"int8: compressed data does not hold exactly {n} codes for {list(self.shape)}")
        q = np.frombuffer(codes, dtype=np.uint8).astype(np.float32).reshape(rows, -1)
        x = q * scales[:, 1:2] + scales[:, 0:1]
        return to_tensor(_finite(x, self.codec_id).reshape(self.shape))
