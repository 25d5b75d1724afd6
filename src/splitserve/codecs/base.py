"""The frame payload codec interface.

An encoder turns one tensor (features or an image) into payload bytes; a decoder
turns payload bytes plus the shape the frame declares back into a tensor. Both
are built for one exact shape, taken from the model's manifest, so a decoder
refuses a declared shape it was not built for before it allocates anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch


class CodecError(ValueError):
    """A payload could not be encoded or decoded. The message says what was wrong."""


class Encoder(ABC):
    codec_id: str

    @abstractmethod
    def encode(self, data: torch.Tensor) -> bytes:
        """Encode one tensor (no batch dimension) into payload bytes."""


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


def numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
