"""Function matching: the student and the teacher see the same strongly augmented view.

Distilling from a few hundred photographs generalizes only if every step shows
a view the student has never seen: Beyer et al., "Knowledge distillation: A good
teacher is patient and consistent" (CVPR 2022) train on Inception-style random
resized crops mixed with mixup, and match the teacher's output on exactly that
view, for many epochs. The labels of a mixed view are unknown, so frames carry
-1: the teacher's logits are the only target.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from splitserve.training.frames import FrameSource


@dataclass(frozen=True)
class Augmentation:
    size: int = 224
    scale: tuple[float, float] = (0.25, 1.0)  # area of the crop, relative to the image
    jitter: float = 0.3  # brightness, contrast and saturation factors in [1 - j, 1 + j]
    mixup: float = 0.5  # fraction of frames mixed with another frame of the batch


class AugmentedImages(FrameSource):
    """Random resized crops, flips, colour jitter and mixup of in-memory images, ``per_epoch`` frames an epoch.

    The images live on ``device`` and every view is made there: on a GPU, making views on the
    CPU would starve it, since each step needs a batch of views the student has never seen.
    The random draws come from the CPU generator, so a seed gives the same views anywhere.
    """

    def __init__(self, images: list[np.ndarray], per_epoch: int, aug: Augmentation, device: str = "cpu",
                 weights: list[float] | None = None) -> None:  # fmt: skip
        """``weights``: how likely each image is to be drawn for a view (None: all alike)."""
        if not images:
            raise ValueError("no training images")
        if weights is not None and (len(weights) != len(images) or min(weights) < 0 or not sum(weights) > 0):
            raise ValueError("weights needs one non-negative value per image, not all zero")
        self.device = torch.device(device)
        self.images = [torch.from_numpy(np.asarray(i)).permute(2, 0, 1).to(self.device) for i in images]
        self.per_epoch = per_epoch
        self.aug = aug
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)

    def __len__(self) -> int:
        return self.per_epoch

    def _crop(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        _, h, w = img.shape
        lo, hi = self.aug.scale
        for _ in range(10):
            area = h * w * (lo + (hi - lo) * torch.rand((), generator=gen).item())
            ratio = float(np.exp(np.log(3 / 4) + np.log(16 / 9) * torch.rand((), generator=gen).item()))
            cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw = ch = min(h, w)
        x0 = int(torch.randint(0, w - cw + 1, (), generator=gen))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=gen))
        crop = img[None, :, y0 : y0 + ch, x0 : x0 + cw].float()
        return F.interpolate(crop, size=(self.aug.size, self.aug.size), mode="bilinear", antialias=True)[0]

    def _jitter(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        j = self.aug.jitter
        if not j:
            return x
        n = len(x)
        factors = 1 - j + 2 * j * torch.rand(3, n, 1, 1, 1, generator=gen)
        bright, contrast, sat = factors.to(x.device).unbind(0)
        x = x * bright
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return (x - gray) * sat + gray

    def _mix(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = len(x)
        if n < 2 or not self.aug.mixup:
            return x
        mixed = torch.rand(n, generator=gen) < self.aug.mixup
        lam = torch.rand(n, generator=gen)  # Beta(1, 1), as in mixup's strongest setting
        lam = torch.where(mixed, lam, torch.ones(n)).view(n, 1, 1, 1).to(x.device)
        partner = torch.roll(torch.arange(n, device=x.device), 1)
        return lam * x + (1 - lam) * x[partner]

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.per_epoch, batch_size):
            n = min(batch_size, self.per_epoch - start)
            if self.weights is None:
                idx = torch.randint(0, len(self.images), (n,), generator=generator).tolist()
            else:
                idx = torch.multinomial(self.weights, n, replacement=True, generator=generator).tolist()
            x = torch.stack([self._crop(self.images[i], generator) for i in idx])
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = self._mix(self._jitter(x, generator), generator)
            frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            yield frames, torch.full((n,), -1, dtype=torch.int64, device=self.device)
