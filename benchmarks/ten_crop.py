"""Ten-crop top-1 and agreement of several bundles of one model, on the same held-out images.

    python benchmarks/ten_crop.py lite0-imagenet /path/to/other/bundle ... [--imagenet DIR] [--out F]

On 100 held-out images one centre crop per image makes one image one point, and two runs of one
config differ by more than the difference being measured. Ten crops per image (the four corners
and the centre of the 256-pixel resize, and their mirror images: the standard ten-crop) give each
image's chance of being right instead of a 0 or a 1, so comparing runs on the same images is less
a matter of which borderline images each one happens to get. It is still the same 100 images: a
comparison, not an estimate of accuracy on other images.

Every width goes through real payloads (the evaluation `splitserve eval` runs), so bytes are real.
Images: the rows of labels.tsv that none of the bundles was trained on. A bundle is named as
`splitserve eval --model` takes it: a bundled model's name or a bundle directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from splitserve.data.labelled import eval_short_side, load_images, read_labels
from splitserve.memory import keep_freed_memory
from splitserve.models import zoo
from splitserve.training.evaluate import evaluate_bundle, predict_local

REPO = Path(__file__).resolve().parents[1]


def ten_crops(image: np.ndarray, size: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    corners = ((0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2))
    crops = [image[top : top + size, left : left + size] for top, left in corners]
    return [np.ascontiguousarray(c) for crop in crops for c in (crop, crop[:, ::-1])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", help="bundled model names or bundle directories, of one model")
    ap.add_argument("--imagenet", default=str(REPO.parent / "shared" / "imagenet-sample"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ten_crop.json"))
    args = ap.parse_args()
    keep_freed_memory()
    bundles = [zoo.load(b) for b in args.bundles]
    teachers = {(b.name, b.manifest["teacher"].get("weights_sha256"), tuple(b.input.shape)) for b in bundles}
    if len(teachers) > 1:
        raise SystemExit("ten_crop.py compares bundles of one model (one name, teacher and input)")
    trained = set().union(*(b.manifest.get("training", {}).get("images") or [] for b in bundles))
    rows = [r for r in read_labels(args.imagenet) if r.file not in trained]
    if not rows:
        raise SystemExit(f"every image in {args.imagenet} was trained on by one of the bundles")
    size = bundles[0].input.shape[-1]
    frames, labels = [], []
    for image, row in zip(load_images(args.imagenet, rows, eval_short_side(size)), rows, strict=True):
        crops = ten_crops(image, size)
        frames += crops
        labels += [row.index] * len(crops)
    x, y = np.stack(frames), np.array(labels)
    teacher_top1 = predict_local(bundles[0], x, 100)  # the same teacher for all (checked above)
    report = {"images": len(rows), "frames": len(x), "teacher_top1": float((teacher_top1 == y).mean()), "bundles": []}
    print(f"{len(rows)} images x 10 crops; teacher top-1 {report['teacher_top1']:.3f}")
    print(f"{'bundle':<28} " + " | ".join(f"w{w} top-1 / agree / bytes" for w in range(bundles[0].width_count)))
    for arg, bundle in zip(args.bundles, bundles, strict=True):
        _, results = evaluate_bundle(bundle, x, y, 100, progress=False, teacher_top1=teacher_top1)
        widths = [{"top1": r.accuracy, "agreement": r.agreement, "bytes_mean": r.bytes_mean} for r in results]
        report["bundles"].append({"bundle": arg, "version": bundle.version, "widths": widths})
        cells = " | ".join(f"{w['top1']:.3f} / {w['agreement']:.3f} / {w['bytes_mean']:5.0f}" for w in widths)
        print(f"{bundle.name + ' ' + bundle.version:<28} {cells}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
