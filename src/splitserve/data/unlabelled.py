"""Folders of unlabelled photographs: more views for function matching, which needs no labels.

Any tree of JPEG, PNG, WebP or BMP files will do (Caltech-101's ``101_ObjectCategories``,
BSDS500's ``images``, a phone's camera roll). Files are taken in sorted path order, so a limit
takes the same ones on every machine. Scraped collections hold a few broken files: those are
skipped and counted, not fatal. A file whose bytes are those of an image that must never be
trained on (the held-out test images) is left out too, wherever it sits.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from splitserve.data import labelled

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class UnlabelledImages:
    images: list[np.ndarray]
    files: list[Path]  # the files the images came from, in the same order
    unreadable: list[Path] = field(default_factory=list)
    excluded: list[Path] = field(default_factory=list)  # copies of images that must not be trained on


def find_images(folder: str | Path) -> list[Path]:
    """Every image file in ``folder`` and below, in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(SUFFIXES)}) in it or below")
    return files


def load_unlabelled(
    folders: Iterable[str | Path],
    short_side: int,
    limit: int = 0,
    exclude_digests: frozenset[str] = frozenset(),  # sha256 hex of files to leave out
    progress: bool = True,
) -> UnlabelledImages:
    """The folders' images with the short side resized to ``short_side``; at most ``limit`` (0: all)."""
    files = [f for folder in folders for f in find_images(folder)]
    if limit:
        files = files[:limit]

    def one(path: Path) -> tuple[Path, np.ndarray | None, bool]:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() in exclude_digests:
            return path, None, True
        try:
            return path, labelled.load_image(io.BytesIO(data), short_side), False
        except labelled.LabelsError:
            return path, None, False

    out = UnlabelledImages([], [])
    bar = tqdm(total=len(files), desc="unlabelled images", unit="img", leave=False, disable=not progress)
    with ThreadPoolExecutor(labelled.worker_threads()) as pool:  # PIL decodes without the GIL
        for path, image, excluded in pool.map(one, files):
            if excluded:
                out.excluded.append(path)
            elif image is None:
                out.unreadable.append(path)
            else:
                out.images.append(image)
                out.files.append(path)
            bar.update()
    bar.close()
    return out
