"""The shape of an Entropic Student, as its bundle's manifest stores it (no torch needed to read it).

A device that runs the head in onnxruntime reads this from the manifest without building a
network; ``models.bottleneck`` builds the networks from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field


def channel_counts(values: Iterable[int]) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if not values or any(v <= 0 for v in values) or list(values) != sorted(values):
        raise ValueError(f"channel counts per width must be positive and non-decreasing, got {list(values)}")
    return values


def width_channels(full: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Channel count at each width fraction of a layer that has ``full`` channels at 1.0."""
    return channel_counts(max(1, round(full * f)) for f in fractions)


@dataclass
class StudentConfig:
    """Shape of an Entropic Student; stored in the bundle manifest to rebuild it."""

    in_channels: int
    # (channels at full width, kernel, stride) per encoder stage
    stages: list[tuple[int, int, int]]
    bottleneck: int  # bottleneck channels at full width
    feature_channels: int  # the teacher's channels at the split, restored by the decoder
    fractions: list[float] = field(default_factory=lambda: [1.0])
    decoder_hidden: int = 64
    # Optional: the teacher's own first layers, up to and including this one, run
    # (frozen) before the slimmable stages; ``in_channels`` is then their output's.
    # Lets a large pretrained teacher's student converge on little data and compute.
    prefix: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        d = dict(d)
        d["stages"] = [tuple(s) for s in d["stages"]]
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        return d

    @property
    def widths(self) -> int:
        return len(self.fractions)

    def bottleneck_channels(self) -> tuple[int, ...]:
        return width_channels(self.bottleneck, self.fractions)
