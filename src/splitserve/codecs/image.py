"""Image codecs for full offload (the baseline split computing must beat): JPEG, WebP, PNG.

Tensors are uint8 images laid out (H, W, C) with C = 1 (grey) or 3 (RGB).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from splitserve.codecs.base import CodecError, Decoder, Encoder, PayloadKind, as_array, to_tensor

if TYPE_CHECKING:
    import torch

_MODES = {1: "L", 3: "RGB"}
# warnings.catch_warnings swaps process-wide state: decoder threads take turns around Image.open
# (it reads the header only; pixels are decoded outside the lock).
_HEADER_LOCK = threading.Lock()


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[2] not in _MODES:
        raise ValueError(f"image codecs take an (H, W, C) shape with C = 1 or 3, got {list(shape)}")
    return shape  # type: ignore[return-value]


class _ImageEncoder(Encoder):
    kind = PayloadKind.IMAGE
    pil_format: str

    def __init__(self, quality: int = 75) -> None:
        if not 0 <= quality <= 100:
            raise ValueError(f"{self.codec_id}: quality must be within 0..100, got {quality}")
        self.quality = quality

    def save_options(self) -> dict:
        return {"quality": self.quality}

    def encode(self, data: np.ndarray | torch.Tensor) -> bytes:
        arr = as_array(data)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in _MODES:
            raise CodecError(f"{self.codec_id}: expects a uint8 (H, W, 1|3) image, got {arr.dtype} {arr.shape}")
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, _MODES[arr.shape[2]])
        buf = io.BytesIO()
        img.save(buf, format=self.pil_format, **self.save_options())
        return buf.getvalue()


class _ImageDecoder(Decoder):
    kind = PayloadKind.IMAGE
    pil_format: str

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(_image_shape(shape))

    def decode(self, payload: bytes, shape: Sequence[int]) -> torch.Tensor:
        h, w, c = self.check_shape(shape)
        try:
            with _HEADER_LOCK, warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(payload), formats=[self.pil_format])
            # The header is read; check it before decoding any pixels.
            if img.size != (w, h):
                raise CodecError(f"{self.codec_id}: image is {img.size[0]}x{img.size[1]}, expected {w}x{h}")
            img = img.convert(_MODES[c])
            arr = np.asarray(img, dtype=np.uint8)
        except CodecError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Image.open read a header claiming more pixels than PIL will decode: refused unread
            raise CodecError(f"{self.codec_id}: the image header claims a huge size; expected {w}x{h}") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise CodecError(f"{self.codec_id}: cannot decode image ({exc})") from None
        return to_tensor(arr.reshape(h, w, c).copy())


class JpegEncoder(_ImageEncoder):
    codec_id = "jpeg"
    pil_format = "JPEG"


class JpegDecoder(_ImageDecoder):
    codec_id = "jpeg"
    pil_format = "JPEG"


class WebpEncoder(_ImageEncoder):
    codec_id = "webp"
    pil_format = "WEBP"

    def save_options(self) -> dict:
        return {"quality": self.quality, "method": 4}


class WebpDecoder(_ImageDecoder):
    codec_id = "webp"
    pil_format = "WEBP"


class PngEncoder(_ImageEncoder):
    codec_id = "png"
    pil_format = "PNG"

    def save_options(self) -> dict:
        return {"optimize": True}


class PngDecoder(_ImageDecoder):
    codec_id = "png"
    pil_format = "PNG"
