"""A folder of labelled photographs, described by a ``labels.tsv``.

The format is the one of the ImageNet sample the project evaluates on, and of
any ImageNet validation subset a user lays out the same way::

    file<TAB>index<TAB>wnid<TAB>name
    n01440764_tench.JPEG<TAB>0<TAB>n01440764<TAB>tench

``index`` is the class index the model predicts (for ImageNet-1k, the position
of the wnid in sorted order); ``wnid`` and ``name`` are for people. Frames are
made with the standard ImageNet evaluation preprocessing: the short side
resized to 256 (for 224 inputs; in general ``size * 8 / 7``), then a centre crop.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

LABELS_FILE = "labels.tsv"
COLUMNS = ("file", "index", "wnid", "name")


class LabelsError(ValueError):
    """The folder or its labels.tsv cannot be used; the message says why and where."""


@dataclass(frozen=True)
class LabelledImage:
    file: str
    index: int
    wnid: str
    name: str


def read_labels(root: str | Path, num_classes: int | None = None) -> list[LabelledImage]:
    """The rows of ``root/labels.tsv``, checked: every file exists, every index is a class."""
    root = Path(root)
    if not root.is_dir():
        raise LabelsError(f"{root}: no such directory")
    path = root / LABELS_FILE
    if not path.is_file():
        raise LabelsError(f"{root}: no {LABELS_FILE} (tab-separated columns: {', '.join(COLUMNS)})")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[: len(COLUMNS)]] != list(COLUMNS):
            raise LabelsError(f"{path}: the first line must be the header {chr(9).join(COLUMNS)!r}, got {header!r}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < len(COLUMNS):
                raise LabelsError(f"{path}:{line}: expected {len(COLUMNS)} tab-separated columns, got {len(row)}")
            file, index, wnid, name = (c.strip() for c in row[: len(COLUMNS)])
            try:
                idx = int(index)
            except ValueError:
                raise LabelsError(f"{path}:{line}: class index {index!r} is not an integer") from None
            if idx < 0 or (num_classes is not None and idx >= num_classes):
                raise LabelsError(f"{path}:{line}: class index {idx} outside 0..{(num_classes or 1) - 1}")
            if Path(file).name != file or not (root / file).is_file():
                raise LabelsError(f"{path}:{line}: image {file!r} not found in {root}")
            rows.append(LabelledImage(file, idx, wnid, name))
    if not rows:
        raise LabelsError(f"{path}: no images listed")
    return rows


def held_out(rows: list[LabelledImage], modulo: int) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(training rows, held-out rows): images whose class index is a multiple of ``modulo`` are held out."""
    if modulo <= 0:
        return list(rows), []
    return [r for r in rows if r.index % modulo], [r for r in rows if r.index % modulo == 0]


def worker_threads() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def load_image(path: Path | BinaryIO, short_side: int) -> np.ndarray:
    """uint8 (H, W, 3) with the short side resized to ``short_side`` (JPEGs decode at a reduced scale first)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            img.draft("RGB", (max(1, w * short_side // min(w, h)), max(1, h * short_side // min(w, h))))
            img = img.convert("RGB")
            w, h = img.size
            scale = short_side / min(w, h)
            size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
            # a writable array: training holds it as a tensor without another copy
            return np.array(img.resize(size, Image.Resampling.BILINEAR, reducing_gap=None))
    except (UnidentifiedImageError, OSError) as exc:
        raise LabelsError(f"{path}: not a readable image ({exc})") from None


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def load_images(root: str | Path, rows: list[LabelledImage], short_side: int) -> list[np.ndarray]:
    """The rows' images, short side resized (decoded on a few threads: PIL releases the GIL)."""
    root = Path(root)
    with ThreadPoolExecutor(worker_threads()) as pool:
        return list(pool.map(lambda r: load_image(root / r.file, short_side), rows))


def eval_short_side(size: int) -> int:
    """The short side images are resized to before a centre crop of ``size``: 256 for 224."""
    return round(size * 8 / 7)


def eval_frames(root: str | Path, rows: list[LabelledImage], size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, size, size, 3) centre crops, int64 labels (N,)) with ImageNet evaluation preprocessing."""
    images = [center_crop(img, size) for img in load_images(root, rows, eval_short_side(size))]
    return np.stack(images), np.array([r.index for r in rows], dtype=np.int64)
