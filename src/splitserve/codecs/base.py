"""The frame payload codec interface.

An encoder turns one tensor (features or an image) into payload bytes; a decoder
turns payload bytes plus the shape the frame declares back into a tensor. Both
are built for one exact shape, taken from the model's manifest, so a decoder
refuses a declared shape it was not built for before it allocates anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the codecs run without torch on a device; the server hands and gets tensors
    import torch


class CodecError(ValueError):
    """A payload could not be encoded or decoded. The message says what was wrong."""


class Encoder(ABC):
    codec_id: str

    @abstractmethod
    def encode(self, data: np.ndarray | torch.Tensor) -> bytes:
        """Encode one array or tensor (no batch dimension) into payload bytes."""


class Decoder(ABC):
    codec_id: str

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)

    @abstractmethod
    def decode(self, payload: bytes, shape: Sequence[int]) -> torch.Tensor:
        """Decode payload bytes into a tensor of the declared shape, or raise CodecError."""

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
