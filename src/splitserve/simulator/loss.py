"""Packet loss models: independent (Bernoulli) and bursty (Gilbert-Elliott)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class LossModel(ABC):
    @abstractmethod
    def lost(self) -> bool:
        """Whether the next packet is lost."""

    @property
    @abstractmethod
    def mean_loss(self) -> float:
        """Long-run fraction of packets lost."""


class NoLoss(LossModel):
    def lost(self) -> bool:
        return False

    @property
    def mean_loss(self) -> float:
        return 0.0


class BernoulliLoss(LossModel):
    def __init__(self, p: float, seed: int = 0) -> None:
        if not 0 <= p < 1:
            raise ValueError(f"loss probability must be within [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def lost(self) -> bool:
        return bool(self.rng.random() < self.p)

    @property
    def mean_loss(self) -> float:
        return self.p


class GilbertElliottLoss(LossModel):
    """Two-state Markov chain per packet: Good and Bad, each with its own loss probability.

    p: P(Good -> Bad), r: P(Bad -> Good), k: loss in Good, h: loss in Bad.
    """

    def __init__(self, p: float, r: float, h: float = 1.0, k: float = 0.0, seed: int = 0) -> None:
        for name, v in (("p", p), ("r", r), ("h", h), ("k", k)):
            if not 0 <= v <= 1:
                raise ValueError(f"Gilbert-Elliott {name} must be within [0, 1], got {v}")
        if r == 0:
            raise ValueError("Gilbert-Elliott r must be > 0 (the bad state must end)")
        self.p, self.r, self.h, self.k = p, r, h, k
        self.rng = np.random.default_rng(seed)
        self.bad = False

    @classmethod
    def from_mean(cls, loss: float, burst: float, seed: int = 0) -> GilbertElliottLoss:
        """Average loss rate ``loss`` in bursts of ``burst`` packets on average (h = 1, k = 0)."""
        if burst < 1:
            raise ValueError(f"mean burst length must be >= 1 packet, got {burst}")
        if not 0 <= loss < 1:
            raise ValueError(f"loss must be within [0, 1), got {loss}")
        r = 1.0 / burst
        p = loss * r / (1.0 - loss)
        return cls(p=min(p, 1.0), r=r, seed=seed)

    def lost(self) -> bool:
        self.bad = (self.rng.random() >= self.r) if self.bad else (self.rng.random() < self.p)
        return bool(self.rng.random() < (self.h if self.bad else self.k))

    @property
    def mean_loss(self) -> float:
        pi_bad = self.p / (self.p + self.r)
        return pi_bad * self.h + (1 - pi_bad) * self.k
