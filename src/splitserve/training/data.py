"""Training data sources. Every source yields uint8 (B, H, W, C) frames, as a camera would.

Normalization happens in the model (the bundle's Preprocess), so training sees
exactly the frames a device would send.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from splitserve.data import fashion_mnist, labelled, photos, unlabelled
from splitserve.data.samples import load_sample
from splitserve.models.manifest import file_sha256
from splitserve.training.augment import Augmentation, AugmentedImages
from splitserve.training.config import ConfigError, DataSection
from splitserve.training.frames import FrameSource

log = logging.getLogger("splitserve.train")


class TensorFrames(FrameSource):
    """Frames held in memory, with light augmentation (shifted crops, mirroring)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pad: int = 2, flip: bool = True) -> None:
        self.images = torch.from_numpy(np.array(images))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.pad = pad
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.images), generator=generator)
        h, w = self.images.shape[1:3]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = self.images[idx]
            if self.pad:
                padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (self.pad,) * 4)
                dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=generator).tolist()
                x = padded[:, :, dy : dy + h, dx : dx + w].permute(0, 2, 3, 1)
            if self.flip:
                mirror = torch.rand(len(idx), generator=generator) < 0.5
                x = torch.where(mirror[:, None, None, None], x.flip(2), x)
            yield x.contiguous(), self.labels[idx]


class ImageFolderFrames(FrameSource):
    """A torchvision ImageFolder tree, random-resized-cropped to the model's input size."""

    def __init__(self, root: Path, size: tuple[int, int], workers: int) -> None:
        from torchvision import datasets, transforms

        self.dataset = datasets.ImageFolder(
            str(root),
            transform=transforms.Compose(
                [
                    transforms.RandomResizedCrop(size, scale=(0.35, 1.0)),
                    transforms.RandomHorizontalFlip(),
                    transforms.PILToTensor(),
                ]
            ),
        )
        self.workers = workers

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=self.workers
        )
        for x, y in loader:
            yield x.permute(0, 2, 3, 1).contiguous(), y


@dataclass
class TrainData:
    train: FrameSource
    test_images: np.ndarray  # uint8 (N, H, W, C)
    test_labels: np.ndarray  # int64 (N,), -1 where unknown
    labels: list[str]
    # the files trained on, when they come from a labelled folder: evaluation leaves them out
    train_files: list[str] = field(default_factory=list)

    @property
    def has_labels(self) -> bool:
        return bool(np.all(self.test_labels >= 0))


def _limit(images: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (images[:n], labels[:n]) if n else (images, labels)


def _load_folder_eval(root: Path, size: tuple[int, int], limit: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision import datasets, transforms

    ds = datasets.ImageFolder(
        str(root),
        transform=transforms.Compose(
            [transforms.Resize(int(max(size) * 1.14)), transforms.CenterCrop(size), transforms.PILToTensor()]
        ),
    )
    n = min(len(ds), limit) if limit else len(ds)
    images = np.stack([ds[i][0].permute(1, 2, 0).numpy() for i in range(n)])
    labels = np.array([ds.targets[i] for i in range(n)], dtype=np.int64)
    return images, labels, list(ds.classes)


def build_data(cfg: DataSection, seed: int, device: str = "cpu", progress: bool = False) -> TrainData:
    if cfg.dataset == "fashion-mnist":
        x, y = _limit(*fashion_mnist.load("train", cfg.root or None), cfg.train_limit)
        tx, ty = _limit(*fashion_mnist.load("test", cfg.root or None), cfg.test_limit)
        return TrainData(TensorFrames(x, y), tx, ty, cfg.labels or list(fashion_mnist.LABELS))
    if cfg.dataset == "imagefolder":
        root = Path(cfg.root)
        train_dir = root / "train"
        eval_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
        if not train_dir.is_dir() or eval_dir is None:
            raise ConfigError(f"[data] imagefolder root {root} needs train/ and val/ (or test/) class folders")
        size = (cfg.input_shape[1], cfg.input_shape[2])
        tx, ty, classes = _load_folder_eval(eval_dir, size, cfg.test_limit)
        return TrainData(ImageFolderFrames(train_dir, size, cfg.workers), tx, ty, cfg.labels or classes)
    if cfg.dataset == "sample":
        images, labels = load_sample(cfg.root)
        n_test = cfg.test_limit or max(1, len(images) // 5)
        x, y = _limit(images[n_test:], labels[n_test:], cfg.train_limit)
        return TrainData(TensorFrames(x, y), images[:n_test], labels[:n_test], cfg.labels or [str(i) for i in
                         range(int(labels.max()) + 1)])  # fmt: skip
    if cfg.dataset == "labelled":
        return _labelled(cfg, device, progress)
    if cfg.dataset == "photos":
        return _photos(cfg, seed, device)
    raise ConfigError(
        f"[data] unknown dataset {cfg.dataset!r}; use fashion-mnist, imagefolder, labelled, photos or sample"
    )


def _labelled(cfg: DataSection, device: str, progress: bool) -> TrainData:
    """A folder with a labels.tsv: the held-out classes are the test set, the rest trains by function matching."""
    if not cfg.root:
        raise ConfigError('[data] dataset = "labelled" needs root = "<folder with labels.tsv>"')
    try:
        rows = labelled.read_labels(cfg.root)
    except labelled.LabelsError as exc:
        raise ConfigError(f"[data] {exc}") from None
    train_rows, test_rows = labelled.held_out(rows, cfg.holdout_modulo)
    if not train_rows or not test_rows:
        raise ConfigError(f"[data] holdout_modulo = {cfg.holdout_modulo} leaves no training or no held-out images")
    never_train = [Path(cfg.root) / r.file for r in test_rows]  # all of them, however many are evaluated here
    train_rows, test_rows = _limit_rows(train_rows, cfg.train_limit), _limit_rows(test_rows, cfg.test_limit)
    size = cfg.input_shape[1]
    aug = Augmentation(size=size, scale=(cfg.crop_scale_min, 1.0), jitter=cfg.jitter, mixup=cfg.mixup)
    images = labelled.load_images(cfg.root, train_rows, cfg.short_side)
    weights = None
    if cfg.extra_images:
        extra = _extra_images(cfg, never_train, progress)
        if cfg.extra_cap:
            weights = [1.0] * len(images) + capped_weights(extra.files, cfg.extra_images, cfg.extra_cap)
        images += extra.images
    source = AugmentedImages(images, cfg.crops_per_epoch, aug, device, weights)
    tx, ty = labelled.eval_frames(cfg.root, test_rows, size)
    return TrainData(source, tx, ty, cfg.labels or photos.imagenet_labels(), [r.file for r in train_rows])


def capped_weights(files: list[Path], folders: list[str], cap: int) -> list[float]:
    """Each file's chance of being drawn, relative to a labelled image's: its folder counts as at most ``cap``."""
    owner = [next(i for i, f in enumerate(folders) if file.is_relative_to(f)) for file in files]
    counts = [owner.count(i) for i in range(len(folders))]
    return [min(1.0, cap / counts[i]) for i in owner]


def _extra_images(cfg: DataSection, held_out: list[Path], progress: bool) -> unlabelled.UnlabelledImages:
    """``[data] extra_images``: unlabelled photos; a copy of a held-out image is never among them."""
    try:
        extra = unlabelled.load_unlabelled(
            cfg.extra_images, cfg.short_side, cfg.extra_limit, frozenset(map(file_sha256, held_out)),
            progress,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise ConfigError(f"[data] extra_images: {exc}") from None
    log.info("[data] extra_images: %d photos from %s", len(extra.images), ", ".join(cfg.extra_images))
    if extra.unreadable:
        log.warning("[data] extra_images: %d files are not readable images, skipped (first: %s)",
                    len(extra.unreadable), extra.unreadable[0])  # fmt: skip
    if extra.excluded:
        log.warning("[data] extra_images: %d files are copies of held-out images, left out (first: %s)",
                    len(extra.excluded), extra.excluded[0])  # fmt: skip
    if not extra.images:
        raise ConfigError(f"[data] extra_images: no readable images in {', '.join(cfg.extra_images)}")
    return extra


def _photos(cfg: DataSection, seed: int, device: str) -> TrainData:
    """``[data] dataset = "photos"``: labels are unknown (-1); fidelity is teacher agreement."""
    all_photos = photos.load_photos(cfg.root or None)
    holdout = list(cfg.holdout) or list(photos.DEFAULT_HOLDOUT)
    train = {k: v for k, v in all_photos.items() if k not in holdout}
    size = cfg.input_shape[1]
    test = photos.holdout_crops(all_photos, holdout, cfg.test_limit or 1000, size, seed + photos.HOLDOUT_SEED_OFFSET)
    crops = photos.PhotoCrops(train, size, cfg.crops_per_epoch, device)
    return TrainData(crops, test, np.full(len(test), -1), cfg.labels or photos.imagenet_labels())


def _limit_rows(rows: list, n: int) -> list:
    return rows[:n] if n else rows
