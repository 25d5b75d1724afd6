"""Per-frame choice of how to run a frame: which width of the split, or locally.

A policy sees the link estimate and what each width costs, and returns a
Decision for the next frame. Policies are named: ``fixed:W``, ``adaptive``,
``local`` (see ``make_policy``). ``FramePlanner`` is the one adaptive loop: it
asks the policy for each frame's decision and feeds back what the frame cost
and how long its result took. The device client and the analytic simulator
both drive it, so the simulator models the decisions the client makes.

``adaptive`` maximizes expected accuracy subject to the deadline. For width w,
with head time h, bytes b (plus the bytes still queued ahead of it), RTT and
server time s, the frame makes the deadline D when the link rate is at least

    need(w) = b * 8 / (D * headroom - h - RTT - s)

The estimate gives log(rate) ~ N(log median, sigma), so ``P(make it) = Phi((log
median - log need) / sigma)``. A width is feasible when that probability is at
least ``confidence``; among the feasible widths the policy takes the one with
the highest ``accuracy(w) * P(make it)`` (accuracy from the bundle's manifest:
labelled accuracy where there is one, else agreement with the teacher). A
noisier link (larger sigma) makes the same median rate carry narrower widths.
Hysteresis against flapping: a step down is immediate, a step up needs the
wider width to be feasible for ``up_after`` frames in a row.

When no width is feasible the frame runs locally (if the device has the whole
model), else at the narrowest width. Local frames measure nothing about the
link, so every ``probe_every``-th local frame also sends a narrowest-width
probe of the same frame, with no deadline: the result the device uses is the
local one (the probe cannot make the frame late), and the probe's round trip
tells the bandwidth monitor when the link has recovered. Local inference is the
fallback, not a competitor: when a width fits, the frame is offloaded, since
running the whole model costs the device its compute and energy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from splitserve.device_client.bandwidth import BandwidthMonitor, LinkEstimate


@dataclass(frozen=True)
class Decision:
    local: bool
    width: int = 0
    predicted_ms: float | None = None
    probe: bool = False  # local frame that also sends a narrowest-width probe to measure the link


@dataclass
class WidthCost:
    """What one width costs, learned online (initialized from the manifest), and what it is worth."""

    bytes: float
    head_ms: float
    accuracy: float | None = None  # manifest accuracy (or teacher agreement); None: unknown

    def update(self, nbytes: int, head_ms: float, alpha: float = 0.2) -> None:
        self.bytes += alpha * (nbytes - self.bytes)
        self.head_ms += alpha * (head_ms - self.head_ms)


def manifest_accuracy(width: dict) -> float | None:
    """A manifest width's worth: top-1 accuracy where labels existed, else agreement with the teacher."""
    for key in ("accuracy", "agreement"):
        if width.get(key) is not None:
            return float(width[key])
    return None


class Policy(ABC):
    name: str

    @abstractmethod
    def decide(self, link: LinkEstimate, deadline_ms: float, connected: bool = True) -> Decision:
        """How to run the next frame."""

    def observe_frame(self, width: int, nbytes: int, head_ms: float) -> None:
        """A frame at this width was encoded: what it cost (policies that learn costs override this)."""
        return None

    def observe_server(self, server_ms: float) -> None:
        """A result came back after this much server time."""
        return None


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


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


class AdaptivePolicy(Policy):
    name = "adaptive"

    def __init__(
        self,
        costs: Sequence[WidthCost],
        server_ms: float = 2.0,
        local_ms: float | None = None,
        headroom: float = 0.9,
        confidence: float = 0.9,
        up_after: int = 2,
        probe_every: int = 5,
    ) -> None:
        self.costs = list(costs)
        self.server_ms = server_ms
        self.local_ms = local_ms  # None: this bundle has no device model to fall back on
        self.headroom = headroom  # plan to use at most this share of the deadline
        self.confidence = confidence  # a width is feasible when it makes the deadline with this probability
        self.up_after = up_after
        self.probe_every = probe_every  # 0: never probe
        # A session starts at the narrowest width: the safest guess, and a small frame beside the wider
        # ones that follow lets the monitor separate RTT from rate (frames of one size cannot).
        self.current = 0
        self._fits_wider = 0
        self._local_run = 0

    def _worth(self, width: int) -> float:
        acc = self.costs[width].accuracy
        return acc if acc is not None else (width + 1) / len(self.costs)  # unknown: wider is better

    def predict_ms(self, width: int, link: LinkEstimate) -> float | None:
        """Latency at the median rate: head + (queued + own bytes) / rate + RTT + server."""
        if link.bandwidth_bps is None:
            return None
        cost = self.costs[width]
        wire = (cost.bytes + link.backlog_bytes) * 8 / link.bandwidth_bps * 1e3
        return cost.head_ms + wire + (link.rtt_ms or 0.0) + self.server_ms

    def p_on_time(self, width: int, link: LinkEstimate, deadline_ms: float) -> float:
        """Probability that a frame at this width makes the deadline, under the estimate's uncertainty."""
        assert link.bandwidth_bps is not None
        cost = self.costs[width]
        slack_ms = deadline_ms * self.headroom - cost.head_ms - (link.rtt_ms or 0.0) - self.server_ms
        if slack_ms <= 0:
            return 0.0
        need = (cost.bytes + link.backlog_bytes) * 8 / (slack_ms / 1e3)
        margin = math.log(link.bandwidth_bps / need)
        if link.sigma <= 0:
            return 1.0 if margin >= 0 else 0.0
        return _normal_cdf(margin / link.sigma)

    def observe_frame(self, width: int, nbytes: int, head_ms: float) -> None:
        if 0 <= width < len(self.costs):
            self.costs[width].update(nbytes, head_ms)

    def observe_server(self, server_ms: float, alpha: float = 0.2) -> None:
        self.server_ms += alpha * (server_ms - self.server_ms)

    def decide(self, link: LinkEstimate, deadline_ms: float, connected: bool = True) -> Decision:
        if not connected:
            if self.local_ms is not None:
                return Decision(local=True, predicted_ms=self.local_ms)
            return Decision(local=False, width=0)
        if link.bandwidth_bps is None or deadline_ms <= 0:
            return Decision(local=False, width=self.current)  # nothing measured yet: stay (narrowest at first)
        p = [self.p_on_time(w, link, deadline_ms) for w in range(len(self.costs))]
        feasible = [w for w in range(len(self.costs)) if p[w] >= self.confidence]
        if not feasible:
            return self._none_fits(link)
        self._local_run = 0  # a width fits: any run of local frames is over
        best = max(feasible, key=lambda w: (self._worth(w) * p[w], w))
        if best <= self.current or self.current not in feasible:
            # step down at once (or to wherever is best, when the current width does not fit)
            self.current, self._fits_wider = best, 0
        else:
            self._fits_wider += 1  # a better width fits: take it once it has for up_after frames
            if self._fits_wider >= self.up_after:
                self.current, self._fits_wider = best, 0
        return Decision(local=False, width=self.current, predicted_ms=self.predict_ms(self.current, link))

    def _none_fits(self, link: LinkEstimate) -> Decision:
        self.current, self._fits_wider = 0, 0
        narrow = self.predict_ms(0, link)
        if self.local_ms is not None and narrow is not None and self.local_ms < narrow:
            self._local_run += 1
            probe = bool(self.probe_every) and self._local_run % self.probe_every == 0
            return Decision(local=True, width=0, predicted_ms=self.local_ms, probe=probe)
        return Decision(local=False, width=0, predicted_ms=narrow)


class FramePlanner:
    """The adaptive loop: a decision per frame from the link estimate, and the feedback that updates both.

    SplitClient and the analytic simulator drive the same planner: ``plan`` before a
    frame, ``encoded`` when its head ran, ``result`` when its result came back.
    """

    def __init__(self, policy: Policy, monitor: BandwidthMonitor) -> None:
        self.policy = policy
        self.monitor = monitor

    def plan(self, deadline_ms: float, connected: bool = True,
             pending: Iterable[tuple[int, float]] = ()) -> tuple[Decision, LinkEstimate]:  # fmt: skip
        """The next frame's decision, and the estimate it was made from (pending: bytes, send time in flight)."""
        estimate = self.monitor.estimate(pending)
        return self.policy.decide(estimate, deadline_ms, connected), estimate

    def encoded(self, width: int, nbytes: int, head_ms: float) -> None:
        self.policy.observe_frame(width, nbytes, head_ms)

    def result(self, nbytes: int, elapsed_ms: float, server_ms: float) -> None:
        """A result came back ``elapsed_ms`` after its ``nbytes`` were sent."""
        self.monitor.add(nbytes, elapsed_ms, server_ms)
        self.policy.observe_server(server_ms)


def make_policy(spec: str, costs: Sequence[WidthCost], local_ms: float | None = None,
                server_ms: float = 2.0) -> Policy:  # fmt: skip
    """``fixed:W`` | ``adaptive`` | ``local``."""
    if spec == "adaptive":
        return AdaptivePolicy(costs, server_ms=server_ms, local_ms=local_ms)
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


def policy_for_bundle(spec: str | Policy | None, widths: Sequence[dict], overheads: Sequence[int],
                      slowdown: float = 1.0, local_ms: float | None = None) -> Policy | None:  # fmt: skip
    """The policy a client runs: ``spec`` as given (None, a Policy), or built from the manifest's widths.

    ``overheads``: each width's bytes on the link besides its payload (the Frame around it).
    """
    if spec is None or isinstance(spec, Policy):
        return spec
    costs = [
        WidthCost(
            bytes=float(w.get("bytes_mean") or 1000.0) + overhead,
            head_ms=float(w.get("head_ms") or 1.0) * slowdown,
            accuracy=manifest_accuracy(w),
        )
        for w, overhead in zip(widths, overheads, strict=True)
    ]
    return make_policy(spec, costs, local_ms)
