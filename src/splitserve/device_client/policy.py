"""Per-frame choice of how to run a frame: which width of the split, or locally.

A policy sees the link estimate and what each width costs, and returns a
Decision for the next frame. Policies are named: ``fixed:W``, ``adaptive``,
``local`` (see ``make_policy``).

``adaptive`` picks the widest width whose predicted latency fits the frame's
deadline:

    head time at that width + bytes / bandwidth + RTT + server time

with hysteresis: it steps down at once when the current width stops fitting,
but steps up only after several frames in a row predict the wider width fits
with a margin, so a noisy estimate does not make it flap. If no width fits it
sends the narrowest, or runs locally when that is predicted to be faster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from splitserve.device_client.bandwidth import LinkEstimate


@dataclass(frozen=True)
class Decision:
    local: bool
    width: int = 0
    predicted_ms: float | None = None


@dataclass
class WidthCost:
    """What one width costs, learned online (initialized from the manifest)."""

    bytes: float
    head_ms: float

    def update(self, nbytes: int, head_ms: float, alpha: float = 0.2) -> None:
        self.bytes += alpha * (nbytes - self.bytes)
        self.head_ms += alpha * (head_ms - self.head_ms)


class Policy(ABC):
    name: str

    @abstractmethod
    def decide(self, link: LinkEstimate, deadline_ms: float, connected: bool = True) -> Decision:
        """How to run the next frame."""


class FixedPolicy(Policy):
    def __init__(self, width: int) -> None:
        self.width = width
        self.name = f"fixed:{width}"

    def decide(self, link: LinkEstimate, deadline_ms: float, connected: bool = True) -> Decision:
        return Decision(local=False, width=self.width)


class LocalPolicy(Policy):
    name = "local"

    def decide(self, link: LinkEstimate, deadline_ms: float, connected: bool = True) -> Decision:
        return Decision(local=True)


class AdaptivePolicy(Policy):
    name = "adaptive"

    def __init__(
        self,
        costs: Sequence[WidthCost],
        server_ms: float = 2.0,
        local_ms: float | None = None,
        headroom: float = 0.9,
        up_margin: float = 0.75,
        up_after: int = 3,
        probe_every: int = 10,
    ) -> None:
        self.costs = list(costs)
        self.server_ms = server_ms
        self.local_ms = local_ms  # None: this bundle has no device model to fall back on
        self.headroom = headroom  # use at most this share of the deadline
        self.up_margin = up_margin  # a wider width must fit within this share to step up
        self.up_after = up_after
        # Local frames measure nothing about the link: every probe_every-th of a run of them goes out at
        # the narrowest width instead, so the estimate follows a link that recovers (0: never probe).
        self.probe_every = probe_every
        self.current = len(self.costs) - 1
        self._fits_wider = 0
        self._local_run = 0

    def predict_ms(self, width: int, link: LinkEstimate) -> float | None:
        if link.bandwidth_bps is None:
            return None
        cost = self.costs[width]
        return cost.head_ms + cost.bytes * 8 / link.bandwidth_bps * 1e3 + (link.rtt_ms or 0.0) + self.server_ms

    def observe_server(self, server_ms: float, alpha: float = 0.2) -> None:
        self.server_ms += alpha * (server_ms - self.server_ms)

    def decide(self, link: LinkEstimate, deadline_ms: float, connected: bool = True) -> Decision:
        if not connected:
            if self.local_ms is not None:
                return Decision(local=True, predicted_ms=self.local_ms)
            return Decision(local=False, width=0)
        if link.bandwidth_bps is None or deadline_ms <= 0:
            return Decision(local=False, width=self.current)  # nothing measured yet: stay
        budget = deadline_ms * self.headroom
        fits = [w for w in range(len(self.costs)) if (self.predict_ms(w, link) or 0.0) <= budget]
        best = max(fits) if fits else None
        if best is None:
            self.current, self._fits_wider = 0, 0
            narrow = self.predict_ms(0, link)
            if self.local_ms is not None and narrow is not None and self.local_ms < narrow:
                self._local_run += 1
                if not (self.probe_every and self._local_run % self.probe_every == 0):
                    return Decision(local=True, predicted_ms=self.local_ms)
            return Decision(local=False, width=0, predicted_ms=narrow)
        self._local_run = 0  # a width fits: any run of local frames is over
        if best < self.current:  # step down at once
            self.current, self._fits_wider = best, 0
        elif best > self.current:  # step up one width, only after it fits with margin for a while
            wider = self.current + 1
            if (self.predict_ms(wider, link) or 0.0) <= deadline_ms * self.up_margin:
                self._fits_wider += 1
                if self._fits_wider >= self.up_after:
                    self.current, self._fits_wider = wider, 0
            else:
                self._fits_wider = 0
        else:
            self._fits_wider = 0
        return Decision(local=False, width=self.current, predicted_ms=self.predict_ms(self.current, link))


def make_policy(spec: str, costs: Sequence[WidthCost], local_ms: float | None = None) -> Policy:
    """``fixed:W`` | ``adaptive`` | ``local``."""
    if spec == "adaptive":
        return AdaptivePolicy(costs, local_ms=local_ms)
    if spec == "local":
        return LocalPolicy()
    if spec.startswith("fixed:"):
        try:
            width = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"policy {spec!r}: width must be an integer") from None
        if not 0 <= width < len(costs):
            raise ValueError(f"policy {spec!r}: widths are 0..{len(costs) - 1}")
        return FixedPolicy(width)
    raise ValueError(f"unknown policy {spec!r}; use fixed:W, adaptive or local")
