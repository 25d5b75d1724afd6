"""The device half: camera frame -> head at a width -> codec -> payload.

Switching width is just a different argument on the next frame: every width's
weights are the same tensors, nothing is reloaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from splitserve.models.bundle import Bundle, DevicePath


@dataclass
class EncodedFrame:
    codec: str
    width: int
    payload: bytes
    shape: tuple[int, ...]
    head_ms: float  # head compute + encoding on this device


class HeadRunner:
    """Runs a bundle's device side. Not thread-safe: one runner per device thread."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        self.bundle = bundle
        if threads:
            torch.set_num_threads(threads)

    def check_image(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        frame = torch.as_tensor(image)
        expected = self.bundle.input.image_shape
        if frame.dim() == 2 and expected[2] == 1:
            frame = frame.unsqueeze(-1)
        if tuple(frame.shape) != expected or frame.dtype != torch.uint8:
            raise ValueError(
                f"{self.bundle.name} takes uint8 frames of shape {list(expected)} (H, W, C); "
                f"got {frame.dtype} {list(frame.shape)}"
            )
        return frame

    def encode(self, image: np.ndarray | torch.Tensor, codec: str = "entropic", width: int = -1, quality: int = 75):
        """One frame -> EncodedFrame. ``width`` -1 means the widest (for codecs with widths)."""
        frame = self.check_image(image)
        width = self.bundle.student.widths - 1 if width < 0 else width
        path = DevicePath(self.bundle, codec, width, quality=quality)
        t0 = time.perf_counter()
        payload = path(frame.unsqueeze(0))[0]
        head_ms = (time.perf_counter() - t0) * 1e3
        return EncodedFrame(codec, path.width, payload, path.shape, head_ms)

    @torch.inference_mode()
    def infer_whole(self, image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, float]:
        """Local-only inference with the whole, unsplit model: (softmax scores, compute ms)."""
        frame = self.check_image(image)
        t0 = time.perf_counter()
        logits = self.bundle.whole_model()(frame.unsqueeze(0))[0]
        return torch.softmax(logits, 0), (time.perf_counter() - t0) * 1e3
