"""The Entropic Student bottleneck: a slimmable encoder, a learned prior per width, a decoder.

The encoder replaces the teacher's layers before the split point and ends in a
few bottleneck channels (nested across widths). Each width has its own factorized
prior over its channel prefix (compressai's EntropyBottleneck): during training
it gives the rate term, after ``update()`` its integer tables are what the
entropic codec codes with. The decoder restores the teacher's feature shape at
the split so the teacher's remaining layers (the tail) can run on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from splitserve.codecs.entropic import EntropyTables
from splitserve.models.layers import (
    FrozenGDN,
    SlimmableConv2d,
    SlimmableGDN,
    SwitchableBatchNorm2d,
)
from splitserve.models.student import StudentConfig, width_channels

if TYPE_CHECKING:
    from splitserve.models._compressai import EntropyBottleneck


class SlimmableEncoder(nn.Module):
    """Device-side head: image -> bottleneck features y at a chosen width.

    Stages are conv -> switchable BN -> ReLU; the last stage normalizes with GDN
    instead, as in learned image compression, before the bottleneck convolution.
    With ``cfg.prefix``, a frozen module (the teacher's first layers) runs first. ``frozen``: for inference,
    its GDN a FrozenGDN, to load a state through ``frozen_gdn_state`` (no compressai).
    """

    def __init__(self, cfg: StudentConfig, prefix: nn.Module | None = None, frozen: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        if bool(cfg.prefix) != (prefix is not None):
            raise ValueError("an encoder with a prefix layer needs the prefix module (and only then)")
        self.prefix = prefix
        if prefix is not None:
            prefix.requires_grad_(False)
        n = cfg.widths
        prev = (cfg.in_channels,) * n
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (ch, k, s) in enumerate(cfg.stages):
            out = width_channels(ch, cfg.fractions)
            self.convs.append(SlimmableConv2d(prev, out, k, s))
            last = i == len(cfg.stages) - 1
            if not last:
                self.norms.append(SwitchableBatchNorm2d(out))
            else:
                self.norms.append(FrozenGDN.empty(out) if frozen else SlimmableGDN(out))
            prev = out
        self.out = SlimmableConv2d(prev, cfg.bottleneck_channels(), 3, 1)

    def train(self, mode: bool = True) -> SlimmableEncoder:
        super().train(mode)
        if self.prefix is not None:
            self.prefix.eval()  # frozen: keeps the teacher's BN statistics
        return self

    def forward(self, x: torch.Tensor, width: int, prefixed: bool = False) -> torch.Tensor:
        """``prefixed``: x is already the prefix's output (training from cached features)."""
        if self.prefix is not None and not prefixed:
            x = self.prefix(x)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x, width), width)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return self.out(x, width)


class FixedWidthEncoder(nn.Module):
    """The encoder pinned to one width, for export (ONNX / TorchScript) and benchmarks."""

    def __init__(self, encoder: SlimmableEncoder, width: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, self.width)


class BottleneckDecoder(nn.Module):
    """Server side: dequantized features y_hat at any width -> the teacher's split features.

    A narrow width's missing channels are zeros; per-width BatchNorm lets the
    decoder learn what each width's prefix looks like. ``frozen``: for inference, as SlimmableEncoder's.
    """

    def __init__(self, cfg: StudentConfig, frozen: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.full = cfg.bottleneck
        h = cfg.decoder_hidden
        self.conv1 = nn.Conv2d(self.full, h, 3, padding=1)
        self.norm1 = SwitchableBatchNorm2d((h,) * cfg.widths)
        if frozen:
            self.igdn: nn.Module = FrozenGDN.empty((h,), inverse=True)
        else:
            from splitserve.models._compressai import GDN  # training only: see SlimmableGDN

            self.igdn = GDN(h, inverse=True)
        self.conv2 = nn.Conv2d(h, h, 3, padding=1)
        self.norm2 = SwitchableBatchNorm2d((h,) * cfg.widths)
        self.conv3 = nn.Conv2d(h, cfg.feature_channels, 1)

    def forward(self, y_hat: torch.Tensor, width: int) -> torch.Tensor:
        if y_hat.shape[1] < self.full:
            y_hat = F.pad(y_hat, (0, 0, 0, 0, 0, self.full - y_hat.shape[1]))
        x = self.igdn(self.norm1(self.conv1(y_hat), width))
        x = F.relu(self.norm2(self.conv2(x), width))
        return self.conv3(x)


class EntropicStudent(nn.Module):
    """Encoder + per-width priors + decoder, trained together (see splitserve.training)."""

    def __init__(self, cfg: StudentConfig, prefix: nn.Module | None = None) -> None:
        from splitserve.models._compressai import EntropyBottleneck  # training only: see SlimmableGDN

        super().__init__()
        self.cfg = cfg
        self.encoder = SlimmableEncoder(cfg, prefix)
        self.priors = nn.ModuleList(EntropyBottleneck(c) for c in cfg.bottleneck_channels())
        self.decoder = BottleneckDecoder(cfg)

    def forward(
        self, x: torch.Tensor, width: int, prefixed: bool = False, rate: str = "ste"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructed split features and the likelihoods of the quantized bottleneck.

        In eval mode y is rounded as the codec rounds it. In training mode the
        decoder always gets y rounded the same way, with a straight-through
        gradient; ``rate`` picks how the rate term sees it:

        - "ste": the prior's probability mass of the rounded symbols, the very
          pmf that ``update()`` freezes into the coding tables, so the rate the
          training charges is the rate the codec pays.
        - "noise": compressai's classic proxy, the density of y plus uniform
          noise. It over-charges latents that sit inside one quantization
          step, which the encoder then learns to avoid sending at all.
        """
        y = self.encoder(x, width, prefixed)
        prior = self.priors[width]
        if not self.training:
            y_hat, likelihoods = prior(y)
            return self.decoder(y_hat, width), likelihoods
        medians = prior._get_medians().detach().reshape(1, -1, 1, 1)
        y_rounded = y + (torch.round(y - medians) + medians - y).detach()
        if rate == "noise":
            _, likelihoods = prior(y)
        elif rate == "ste":
            likelihoods = symbol_likelihoods(prior, y_rounded)
        else:
            raise ValueError(f"rate proxy must be 'ste' or 'noise', got {rate!r}")
        return self.decoder(y_rounded, width), likelihoods

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[no-untyped-def,override]
        """Also loads priors whose tables ``update()`` already built.

        The table buffers start empty and torch cannot load into a buffer of
        another size, so they take the checkpoint's shapes first.
        """
        for i, prior in enumerate(self.priors):
            for name in ("_offset", "_quantized_cdf", "_cdf_length"):
                saved = state_dict.get(f"priors.{i}.{name}")
                if saved is not None:
                    getattr(prior, name).resize_(saved.shape)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def aux_loss(self) -> torch.Tensor:
        """Fits each prior's quantiles, which bound its coding tables."""
        return sum(p.loss() for p in self.priors)  # type: ignore[return-value]

    def entropy_tables(self) -> list[EntropyTables]:
        """Freeze the priors into integer tables (calls ``update()``); one per width."""
        tables = []
        for prior in self.priors:
            prior.update(force=True)
            tables.append(
                EntropyTables.from_quantized_cdf(
                    medians=prior._get_medians().detach().reshape(-1).cpu().numpy(),
                    offsets=prior._offset.cpu().numpy(),
                    quantized_cdf=prior._quantized_cdf.cpu().numpy(),
                    cdf_lengths=prior._cdf_length.cpu().numpy(),
                )
            )
        return tables


def symbol_likelihoods(prior: EntropyBottleneck, y: torch.Tensor) -> torch.Tensor:
    """The prior's probability mass of each (already rounded) value of y (B, C, H, W)."""
    c = y.shape[1]
    values = y.transpose(0, 1).reshape(c, 1, -1)
    likelihood, _, _ = prior._likelihood(values)
    if prior.use_likelihood_bound:
        likelihood = prior.likelihood_lower_bound(likelihood)
    return likelihood.reshape(c, y.shape[0], *y.shape[2:]).transpose(0, 1)


def rate_bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """Bits per sample (summed over the latent) from the prior's likelihoods."""
    return -torch.log2(likelihoods).flatten(1).sum(1)
