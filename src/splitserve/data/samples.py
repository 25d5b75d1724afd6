"""Small labelled samples shipped with the package, so demos and tests run with no dataset installed.

A sample is ``samples/<name>.npz`` holding either raw frames (``images``, uint8
(N, H, W, C)) or, for camera-sized frames, JPEG files (``jpeg_data`` + ``jpeg_offsets``)
decoded on load; plus ``labels`` (int64, -1 where unknown).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).parent / "samples"


def available_samples() -> list[str]:
    return sorted(p.stem for p in SAMPLES.glob("*.npz"))


def load_sample(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, C), labels int64 (N,); -1 where unknown) of a shipped sample."""
    path = SAMPLES / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no sample named {name!r}; available: {', '.join(available_samples())}")
    with np.load(path, allow_pickle=False) as z:
        labels = z["labels"].astype(np.int64)
        if "images" in z:
            return z["images"], labels
        data, offsets = z["jpeg_data"].tobytes(), z["jpeg_offsets"]
    images = [
        np.array(Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]])).convert("RGB"))
        for i in range(len(offsets) - 1)
    ]
    return np.stack(images), labels


def save_jpeg_sample(path: Path, images: np.ndarray, labels: np.ndarray, quality: int = 95) -> None:
    blobs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        blobs.append(buf.getvalue())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    np.savez(path, jpeg_data=data, jpeg_offsets=offsets, labels=labels.astype(np.int64))
