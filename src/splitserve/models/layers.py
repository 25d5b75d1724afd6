"""Slimmable building blocks: one set of weights, several widths.

A width is an index into the layer's channel lists. Channels are nested: width
i uses the first ``channels[i]`` filters of the full layer, so a narrower width
computes (and sends) a prefix of a wider one's channels, SortedNet-style.
Normalization statistics differ per width, hence one BatchNorm per width
(switchable BN); GDN's parameters are sliced like the convolutions'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from splitserve.models.student import channel_counts as _channels


class SlimmableConv2d(nn.Conv2d):
    """A convolution whose input and output channels are prefixes chosen by width."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
    ) -> None:
        self.in_list = _channels(in_channels)
        self.out_list = _channels(out_channels)
        if len(self.in_list) != len(self.out_list):
            raise ValueError("in_channels and out_channels need one entry per width")
        padding = kernel_size // 2 if padding is None else padding
        super().__init__(self.in_list[-1], self.out_list[-1], kernel_size, stride, padding, bias=bias)

    def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:  # type: ignore[override]
        cin, cout = self.in_list[width], self.out_list[width]
        if x.shape[1] != cin:
            raise ValueError(f"width {width} expects {cin} input channels, got {x.shape[1]}")
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, self.weight[:cout, :cin], bias, self.stride, self.padding)


class SwitchableBatchNorm2d(nn.Module):
    """One BatchNorm per width: a narrow sub-network has its own feature statistics."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = _channels(channels)
        self.bn = nn.ModuleList(nn.BatchNorm2d(c) for c in self.channels)

    def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:
        return self.bn[width](x)


class SlimmableGDN(nn.Module):
    """Generalized divisive normalization (Ballé et al.) over a channel prefix.

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2), with i, j < channels[width].
    """

    def __init__(self, channels: Sequence[int], beta_min: float = 1e-6, gamma_init: float = 0.1) -> None:
        # compressai only here, where training builds one: its import costs a serving process ~3 s of CPU
        from splitserve.models._compressai import NonNegativeParametrizer

        super().__init__()
        self.channels = _channels(channels)
        c = self.channels[-1]
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.gamma_reparam = NonNegativeParametrizer()
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(c)))
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(c)))

    def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:
        return _gdn(x, self.beta_reparam(self.beta), self.gamma_reparam(self.gamma), self.channels[width])


def _gdn(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, c: int) -> torch.Tensor:
    return x * torch.rsqrt(F.conv2d(x * x, gamma[:c, :c].reshape(c, c, 1, 1), beta[:c]))


class FrozenGDN(nn.Module):
    """A SlimmableGDN (or compressai's GDN, ``inverse``) with its reparametrized weights computed once: for
    inference and export (the reparametrization's custom autograd op cannot be traced, and need not run
    per frame). ``FrozenGDN.empty`` builds one to load a state that ``frozen_gdn_state`` converted, which
    needs no compressai: inference never imports it."""

    def __init__(self, beta: torch.Tensor, gamma: torch.Tensor, channels: Sequence[int], inverse: bool = False) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.inverse = inverse
        self.register_buffer("beta", beta.detach().clone())
        self.register_buffer("gamma", gamma.detach().clone())

    @classmethod
    def empty(cls, channels: Sequence[int], inverse: bool = False) -> FrozenGDN:
        c = _channels(channels)[-1]
        return cls(torch.zeros(c), torch.zeros(c, c), _channels(channels), inverse)

    def forward(self, x: torch.Tensor, width: int = -1) -> torch.Tensor:
        if self.inverse:  # the decoder's: over every channel, y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)
            c = self.channels[-1]
            return x * torch.sqrt(F.conv2d(x * x, self.gamma.reshape(c, c, 1, 1), self.beta))
        return _gdn(x, self.beta, self.gamma, self.channels[width])


_REPARAM = ".beta_reparam.pedestal"


def frozen_gdn_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state with every GDN's stored parameters (beta, gamma and their reparametrizers' buffers) turned
    into the FrozenGDN's: max(p, bound)^2 - pedestal, the reparametrization's forward, with the bound and
    pedestal the state itself carries. Other entries are unchanged."""
    out = dict(state)
    for key in [k for k in state if k.endswith(_REPARAM)]:
        gdn = key[: -len(_REPARAM) + 1]  # "decoder.igdn."
        for name in ("beta", "gamma"):
            bound = out.pop(f"{gdn}{name}_reparam.lower_bound.bound").float()
            pedestal = out.pop(f"{gdn}{name}_reparam.pedestal").float()
            out[f"{gdn}{name}"] = torch.max(state[f"{gdn}{name}"].float(), bound) ** 2 - pedestal
    return out
