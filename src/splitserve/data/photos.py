"""Freely licensed natural photographs that installable packages ship, for distilling camera-frame models.

There is no ImageNet here. The EfficientNet-Lite0 split is distilled on random
224x224 crops of real photographs from:

- scikit-image's ``skimage.data`` (public-domain / CC0 test photos),
- scikit-learn's sample images (``china.jpg``, ``flower.jpg``, CC-BY),
- Debian wallpaper packages whose pictures are photographs
  (``ukui-wallpapers``, ``plasma-workspace-wallpapers``; licences in
  /usr/share/doc/<package>/copyright).

Only the photographs listed below are used (those packages also hold artwork).
A few photos are held out entirely: fidelity is measured on crops of them.
``export`` writes the set to a directory, so a machine without these packages
(e.g. a GPU box) can train from ``[data] root = "that/dir"``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("splitserve.data")

SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "camera", "coins", "moon", "page", "clock", "brick", "grass", "gravel",
)  # fmt: skip
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
WALLPAPER_DIR = Path("/usr/share/backgrounds")
WALLPAPER_PHOTOS = (
    "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Infinite-Sea_by_Aury88.jpg",
    "Kleiber_by_Lukas_Baubkus.jpg", "Picture_0B_by_freespace.jpg", "Picture_1A_by_freespace.jpg",
    "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg", "free_by_Peter_Nerlich.jpg",
    "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
    "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
    "sunset_by_Aitzol_Berasategi.jpg",
)  # fmt: skip
PLASMA_DIR = Path("/usr/share/wallpapers")
PLASMA_PHOTOS = (
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
    "Kite", "OneStandsOut", "Path", "summer_1am",
)  # fmt: skip
# Held out from training: every fidelity number is measured on crops of these. They all come
# from pip-installable packages, so anyone can reproduce the evaluation without the wallpapers.
DEFAULT_HOLDOUT = ("coffee", "china", "chelsea", "rocket", "coins")
MAX_SIDE = 1024  # photos are downscaled once; crops come from this resolution


def _rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8) if arr.max() <= 1 else arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def _shrink(img: Image.Image) -> np.ndarray:
    img = img.convert("RGB")
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return np.array(img)


def _installed_sources() -> Iterator[tuple[str, np.ndarray]]:
    """Every listed photo that is installed. A missing package or photo is logged, so a training set
    that came out smaller than expected says why."""
    try:
        import skimage.data as skd
    except ImportError as exc:
        log.warning("photos: skipping scikit-image's %d photos (%s); pip install scikit-image",
                    len(SKIMAGE_PHOTOS), exc)  # fmt: skip
    else:
        for name in SKIMAGE_PHOTOS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    yield name, _shrink(Image.fromarray(_rgb(getattr(skd, name)())))
                except (ModuleNotFoundError, OSError, ValueError) as exc:
                    log.warning("photos: skipping skimage.data.%s (%s: %s)", name, type(exc).__name__, exc)
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        log.warning("photos: skipping scikit-learn's %d photos (%s); pip install scikit-learn",
                    len(SKLEARN_PHOTOS), exc)  # fmt: skip
    else:
        for name in SKLEARN_PHOTOS:
            yield name.split(".")[0], _shrink(Image.fromarray(load_sample_image(name)))
    missing = [name for name in WALLPAPER_PHOTOS if not (WALLPAPER_DIR / name).is_file()]
    for name in WALLPAPER_PHOTOS:
        if name not in missing:
            yield (WALLPAPER_DIR / name).stem, _shrink(Image.open(WALLPAPER_DIR / name))
    for name in PLASMA_PHOTOS:
        images = sorted((PLASMA_DIR / name / "contents" / "images").glob("*.jpg"))
        if images:
            yield name, _shrink(Image.open(max(images, key=lambda p: p.stat().st_size)))
        else:
            missing.append(name)
    if missing:
        log.warning(
            "photos: %d wallpaper photos are not installed (%s); apt-get install ukui-wallpapers "
            "plasma-workspace-wallpapers to train on them", len(missing), ", ".join(missing),
        )  # fmt: skip


def load_photos(root: str | Path | None = None) -> dict[str, np.ndarray]:
    """name -> uint8 (H, W, 3) photo; from ``root`` (an exported directory) or the installed packages."""
    if root:
        root = Path(root)
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise FileNotFoundError(f"no photos (.png / .jpg) in {root}")
        return {p.stem: np.array(Image.open(p).convert("RGB")) for p in files}
    photos = dict(_installed_sources())
    if not photos:
        raise FileNotFoundError(
            "no photographs found: pip install scikit-image scikit-learn, or apt-get install "
            "ukui-wallpapers plasma-workspace-wallpapers, or point [data] root at an exported photo directory"
        )
    return photos


def export(dest: str | Path) -> list[Path]:
    """Write the installed photo set to ``dest`` (JPEG q95), for machines without the packages."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, arr in _installed_sources():
        path = dest / f"{name}.jpg"
        Image.fromarray(arr).save(path, quality=95)
        written.append(path)
    return written


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator, scale=(0.08, 1.0)) -> np.ndarray:
    """An Inception-style random-resized crop, resized to size x size: a camera frame of the scene."""
    h, w = photo.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:
        cw = ch = min(h, w)
        x, y = (w - cw) // 2, (h - ch) // 2
    crop = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(crop)
    return out[:, ::-1].copy() if rng.random() < 0.5 else out


# Held-out crops are drawn with the training seed plus this offset: training and ``splitserve eval``
# draw the same crops, from a stream apart from the training's own.
HOLDOUT_SEED_OFFSET = 1000


def holdout_crops(photos: dict[str, np.ndarray], names: list[str], n: int, size: int, seed: int) -> np.ndarray:
    """A fixed set of n crops (uint8 (n, size, size, 3)) of the held-out photos."""
    rng = np.random.default_rng(seed)
    keys = [k for k in names if k in photos]
    if not keys:
        raise ValueError(f"none of the held-out photos {names} are available")
    return np.stack([random_crop(photos[keys[i % len(keys)]], size, rng, scale=(0.15, 1.0)) for i in range(n)])


class PhotoCrops:
    """Training frames: fresh random-resized crops of the training photos every epoch.

    Cropping runs in torch (one affine grid_sample per batch) on ``device``, so a
    GPU is not left waiting for a CPU resizing crops one at a time.
    """

    def __init__(self, photos: dict[str, np.ndarray], size: int, per_epoch: int, device: str = "cpu") -> None:
        side = max(max(p.shape[0], p.shape[1]) for p in photos.values())
        stack = torch.zeros(len(photos), 3, side, side, dtype=torch.uint8)
        dims = []
        for i, p in enumerate(photos.values()):
            stack[i, :, : p.shape[0], : p.shape[1]] = torch.from_numpy(p).permute(2, 0, 1)
            dims.append((p.shape[0], p.shape[1]))
        self.device = torch.device(device)
        self.photos = stack.to(self.device)
        self.dims = torch.tensor(dims, dtype=torch.float32)  # (N, 2): valid height, width
        self.side = side
        self.size = size
        self.per_epoch = per_epoch

    def __len__(self) -> int:
        return self.per_epoch

    def _thetas(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = len(idx)
        h, w = self.dims[idx, 0], self.dims[idx, 1]
        area = torch.empty(n).uniform_(0.08, 1.0, generator=gen) * h * w
        ratio = torch.exp(torch.empty(n).uniform_(np.log(3 / 4), np.log(4 / 3), generator=gen))
        cw = torch.sqrt(area * ratio).clamp(max=w).clamp(min=8)
        ch = torch.sqrt(area / ratio).clamp(max=h).clamp(min=8)
        x0 = torch.rand(n, generator=gen) * (w - cw)
        y0 = torch.rand(n, generator=gen) * (h - ch)
        flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        # affine_grid works in [-1, 1] coordinates of the padded side x side canvas
        sx, sy = cw / self.side, ch / self.side
        tx = (2 * x0 + cw) / self.side - 1
        ty = (2 * y0 + ch) / self.side - 1
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
        theta[:, 1, 1], theta[:, 1, 2] = sy, ty
        return theta

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.per_epoch, batch_size):
            n = min(batch_size, self.per_epoch - start)
            idx = torch.randint(0, len(self.photos), (n,), generator=generator)
            theta = self._thetas(idx, generator).to(self.device)
            src = self.photos[idx.to(self.device)].float()
            grid = torch.nn.functional.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
            crops = torch.nn.functional.grid_sample(src, grid, mode="bilinear", align_corners=False)
            frames = crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            yield frames, torch.full((n,), -1, dtype=torch.int64, device=self.device)


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's weight metadata (no download)."""
    from torchvision.models import MobileNet_V3_Small_Weights

    return list(MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"])
