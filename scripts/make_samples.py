"""Rebuild the samples shipped in src/splitserve/data/samples/ (deterministic).

- fmnist-test: the first 100 Fashion-MNIST test images of each class (1,000 frames, labels).
- photos-224: 64 crops (224 x 224) of the held-out photographs, JPEG q95, no labels.
"""

from pathlib import Path

import numpy as np

from splitserve.data import fashion_mnist, photos
from splitserve.data.samples import SAMPLES, save_jpeg_sample


def main() -> None:
    SAMPLES.mkdir(parents=True, exist_ok=True)
    x, y = fashion_mnist.load("test")
    idx = np.sort(np.concatenate([np.flatnonzero(y == c)[:100] for c in range(10)]))
    np.savez_compressed(SAMPLES / "fmnist-test.npz", images=x[idx], labels=y[idx], test_index=idx)
    crops = photos.holdout_crops(photos.load_photos(), list(photos.DEFAULT_HOLDOUT), 64, 224, seed=7)
    save_jpeg_sample(SAMPLES / "photos-224.npz", crops, np.full(len(crops), -1))
    for p in sorted(Path(SAMPLES).glob("*.npz")):
        print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
