"""The frame payload codec interface.

An encoder turns one tensor (features or an image) into payload bytes; a decoder
turns payload bytes plus the shape the frame declares back into a tensor. Both
are built for one exact shape, taken from the model's manifest, so a decoder
refuses a declared shape it was not built for before it allocates anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # the codecs run without torch on a device; the server hands and gets tensors
    import torch


class CodecError(ValueError):
    """A payload could not be encoded or decoded. The message says what was wrong."""


class ShapeSource(Protocol):
    """Where the shapes a payload can take come from: a model bundle (``models.bundle.Bundle``)."""

    feature_shape: tuple[int, ...]

    def latent_shape(self, width: int) -> tuple[int, int, int]: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...


class PayloadKind(Enum):
    """What a codec's payload carries: everything a caller needs to know about a codec's kind.

    The device runs a network before the codec unless the payload is the image itself; the
    server groups frames by the tail that must run on them (one per width for bottleneck
    latents, one for the teacher's split features, one for whole images).
    """

    LATENT = "latent"  # the slimmable head's bottleneck at one width (entropic)
    FEATURES = "features"  # the teacher's features at the split point (fp16, int8)
    IMAGE = "image"  # the camera frame itself, for full offload (jpeg, webp, png)

    @property
    def has_device_stage(self) -> bool:
        """Whether the device runs a network before encoding (False: it encodes the raw frame)."""
        return self is not PayloadKind.IMAGE

    @property
    def has_widths(self) -> bool:
        """Whether the frame's width index selects anything (only the slimmable head has widths)."""
        return self is PayloadKind.LATENT

    @property
    def has_quality(self) -> bool:
        """Whether the encoder takes a ``quality`` (0..100): the lossy image codecs do (PNG ignores it)."""
        return self is PayloadKind.IMAGE

    @property
    def dtype(self) -> np.dtype:
        """The dtype a decoder returns: uint8 pixels for images, float features otherwise."""
        return np.dtype(np.uint8 if self is PayloadKind.IMAGE else np.float32)

    def payload_shape(self, source: ShapeSource, width: int = 0) -> tuple[int, ...]:
        """The shape a frame of this kind declares for a model (and width, for latents)."""
        if self is PayloadKind.LATENT:
            return source.latent_shape(width)
        if self is PayloadKind.FEATURES:
            return tuple(source.feature_shape)
        return source.image_shape

    def batch_key(self, width: int = 0) -> BatchKey:
        """Frames of one model version with equal keys share one tail, so they batch together."""
        return BatchKey(self, width if self.has_widths else 0)


@dataclass(frozen=True)
class BatchKey:
    """Which server stage (tail) of a model version a frame needs: built once, compared, never parsed."""

    kind: PayloadKind
    width: int = 0

    @property
    def label(self) -> str:
        """The metrics' width label: the width index for latents, else the kind ("features" / "image")."""
        return str(self.width) if self.kind.has_widths else self.kind.value

    def __str__(self) -> str:
        return f"w{self.width}" if self.kind.has_widths else self.kind.value


class Encoder(ABC):
    codec_id: str
    kind: PayloadKind

    @abstractmethod
    def encode(self, data: np.ndarray | torch.Tensor) -> bytes:
        """Encode one array or tensor (no batch dimension) into payload bytes."""


class Decoder(ABC):
    codec_id: str
    kind: PayloadKind

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)

    @abstractmethod
    def decode(self, payload: bytes, shape: Sequence[int]) -> torch.Tensor:
        """Decode payload bytes into a tensor of the declared shape, or raise CodecError."""

    def decode_batch(self, payloads: Sequence[bytes], out: np.ndarray) -> list[str]:
        """Decode frames of this decoder's shape into the rows of ``out`` (frames, *shape).

        Returns one problem per frame: "" where it decoded, else what a CodecError would say
        (that frame's row is then undefined). The server decodes a batch at a time; a codec
        that can do better than one frame after another overrides this.
        """
        problems = []
        for row, payload in zip(out, payloads, strict=True):
            try:
                row[...] = np.asarray(self.decode(payload, self.shape))
            except CodecError as exc:
                problems.append(str(exc))
            else:
                problems.append("")
        return problems

    def check_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        declared = tuple(int(s) for s in shape)
        if declared != self.shape:
            raise CodecError(
                f"{self.codec_id}: declared shape {list(declared)} does not match the model's "
                f"{list(self.shape)} for this codec and width"
            )
        return declared


def as_array(data: Any) -> np.ndarray:
    """What an encoder codes: a numpy array, from an array or a torch tensor on any device."""
    if hasattr(data, "detach"):  # a torch tensor; asking it keeps torch out of a device's imports
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A decoded payload as the torch tensor the server's tail takes.

    torch is imported here, not at the top: decoding happens on the server (which has torch),
    and a device without torch must still be able to import the codecs to encode.
    """
    import torch

    return torch.from_numpy(array)


def numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
