"""Transform widths: the teacher's own split features, decorrelated, quantized and entropy-coded.

A student width sends a learned latent that its decoder turns back into the teacher's
features; however many bits it is given, it reproduces them only as well as its encoder
and decoder learned to. A transform width sends the features themselves: rotated onto
their principal components (an orthogonal 1x1 convolution fitted on photos, no labels),
divided by a step and rounded. The decoder is the same rotation back. Nothing is learned
from labels, so nothing can overfit the training images, and a finer step goes as close
to the teacher as the bytes allow. Every transform width shares the one basis; each has
its own step and its own coding tables, fitted on the same photos.

In a bundle, transform widths come after the student's widths (their ``kind`` in the
manifest is ``"transform"``) and look like any other width to the codecs, the SDKs and
the server: a head that outputs features, tables that code them, a decoder per width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from splitserve.codecs.entropic import EntropyTables

KIND = "transform"
STATE_PREFIX = "transform."


class FeatureTransform(nn.Module):
    """An orthogonal basis over the feature channels, their mean, and one step per transform width."""

    def __init__(self, channels: int, steps: Sequence[float]) -> None:
        super().__init__()
        if not steps or any(not s > 0 for s in steps):
            raise ValueError(f"transform steps must be positive, got {list(steps)}")
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("basis", torch.eye(channels))  # columns: components by decreasing variance
        self.register_buffer("steps", torch.tensor([float(s) for s in steps]))

    @property
    def widths(self) -> int:
        return len(self.steps)

    def fit(self, features: np.ndarray) -> FeatureTransform:
        """Principal components of features (N, C, H, W) over every position of every frame."""
        c = features.shape[1]
        x = np.moveaxis(np.asarray(features, dtype=np.float64), 1, -1).reshape(-1, c)
        mean = x.mean(0)
        x -= mean
        values, vectors = np.linalg.eigh(x.T @ x / len(x))
        order = np.argsort(values)[::-1]
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(mean))
            self.basis.copy_(torch.from_numpy(vectors[:, order]))
        return self

    def encode(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Features (B, C, H, W) -> the components in steps (what the codec rounds)."""
        weight = (self.basis.t() / self.steps[index]).unsqueeze(-1).unsqueeze(-1)
        return F.conv2d(x - self.mean.view(1, -1, 1, 1), weight)

    def decode(self, z: torch.Tensor, index: int) -> torch.Tensor:
        weight = (self.basis * self.steps[index]).unsqueeze(-1).unsqueeze(-1)
        return F.conv2d(z, weight) + self.mean.view(1, -1, 1, 1)

    def tables(self, features: np.ndarray, index: int, margin: int = 2) -> EntropyTables:
        """Coding tables for one width: each component's histogram of rounded values on ``features``.

        Every value in range keeps a count of at least one (the photos never saw it, a frame
        may), and the range reaches ``margin`` steps past the photos' extremes; beyond it the
        codec clamps.
        """
        with torch.no_grad():
            z = torch.round(self.encode(torch.as_tensor(features, dtype=torch.float32), index))
        z = z.transpose(0, 1).reshape(z.shape[1], -1).numpy().astype(np.int64)
        lows = z.min(1) - margin
        freqs = tuple(np.bincount(row - low, minlength=int(row.max() - low) + 1 + margin) + 1 for row, low in
                      zip(z, lows, strict=True))  # fmt: skip
        return EntropyTables(
            medians=np.zeros(len(z), dtype=np.float32), offsets=lows.astype(np.int32), freqs=freqs
        )


class WidthsEncoder(nn.Module):
    """The device's encoder over every width of a bundle: the student's, then the transform's.

    Same interface as ``SlimmableEncoder`` (``prefix``, ``forward(x, width, prefixed)``), so
    export, evaluation and the runtimes treat a transform width as any other.
    """

    def __init__(self, student: nn.Module, transform: FeatureTransform) -> None:
        super().__init__()
        if student.prefix is None:
            raise ValueError("transform widths code the teacher's features: the student needs a [student] prefix")
        self.student = student
        self.transform = transform
        self.first = student.cfg.widths

    @property
    def prefix(self) -> nn.Module:
        return self.student.prefix

    def forward(self, x: torch.Tensor, width: int, prefixed: bool = False) -> torch.Tensor:
        if width < self.first:
            return self.student(x, width, prefixed)
        return self.transform.encode(x if prefixed else self.prefix(x), width - self.first)


class WidthsDecoder(nn.Module):
    """The server's decoder over every width: the student's learned one, then the transform's inverse."""

    def __init__(self, student: nn.Module, transform: FeatureTransform, first: int) -> None:
        super().__init__()
        self.student = student
        self.transform = transform
        self.first = first

    def forward(self, y_hat: torch.Tensor, width: int) -> torch.Tensor:
        if width < self.first:
            return self.student(y_hat, width)
        return self.transform.decode(y_hat, width - self.first)


def transform_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transform's buffers out of a head.pt or tail.pt state (empty if the bundle has none)."""
    return {k[len(STATE_PREFIX) :]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
