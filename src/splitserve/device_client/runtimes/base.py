"""The head runtime interface: what the device computes before a codec encodes a frame."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from splitserve.models.coding import CodingBundle


class RuntimeUnavailable(RuntimeError):
    """The chosen runtime cannot run here (a package is missing); the message says what to install."""


class HeadRuntime(ABC):
    """Runs a bundle's device-side networks on uint8 camera frames. Not thread-safe: one per device thread.

    ``bundle`` is what the client codes with: the torch runtime puts the full ``Bundle`` there.
    """

    name: ClassVar[str]

    def __init__(self, bundle: CodingBundle) -> None:
        self.bundle = bundle

    @abstractmethod
    def features(self, frame: np.ndarray, codec: str, width: int) -> np.ndarray:
        """uint8 (H, W, C) frame -> the float32 tensor the feature codec encodes (no batch dimension)."""

    @abstractmethod
    def logits(self, frame: np.ndarray) -> np.ndarray:
        """uint8 (H, W, C) frame -> the whole model's logits, for local-only inference."""

    @abstractmethod
    def runs_locally(self) -> bool:
        """Whether ``logits`` can run here: the bundle has what this runtime needs for the whole model."""

    def supports(self, codec: str) -> bool:
        """Whether frames of this codec can be encoded with this runtime."""
        return True

    def cannot(self, codec: str, local: bool = False) -> str:
        """What this runtime cannot do of what is asked (a codec, local inference); "" when it can."""
        if not self.supports(codec):
            return f"the {self.name} runtime cannot encode the {codec} codec: use the torch runtime"
        if local and not self.runs_locally():
            return f"the {self.name} runtime cannot run this model locally: use the torch runtime"
        return ""
