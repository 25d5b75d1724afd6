"""The interface every training frame source implements (kept apart so sources in other modules need
not import the data loaders that use them)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch


class FrameSource(ABC):
    """An epoch of (frames uint8 (B, H, W, C), labels int64 (B,)) batches; labels -1 when unknown."""

    @abstractmethod
    def __len__(self) -> int:
        """Frames per epoch."""

    @abstractmethod
    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented batches."""
