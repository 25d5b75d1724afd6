"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, MIT licence).

    apt-get install dataset-fashion-mnist   # files in /usr/share/datasets/fashion-mnist

Images come back as uint8 (N, 28, 28, 1) frames, labels as int64 (N,).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def root_dir(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("SPLITSERVE_FMNIST_DIR") or DEFAULT_ROOT)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {body.size} values")
    return body.reshape(dims).copy()


def load(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28, 1), labels int64 (N,)) of the train or test split."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    base = root_dir(root)
    img_file, lbl_file = (base / f for f in _FILES[split])
    if not img_file.is_file() or not lbl_file.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {base}; install it with "
            "'apt-get install dataset-fashion-mnist' or set SPLITSERVE_FMNIST_DIR"
        )
    images = read_idx(img_file)
    labels = read_idx(lbl_file).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{base}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images[..., None], labels


def available(root: str | Path | None = None) -> bool:
    base = root_dir(root)
    return all((base / f).is_file() for f in _FILES["test"])
