"""Rate vs accuracy of every bundled model: each width and every baseline, on real payloads.

    python benchmarks/rate_accuracy.py [--models fmnist-split,lite0-imagenet] [--imagenet DIR] [--val DIR]
                                       [--out DIR]

Runs `splitserve eval` per model, prints its tables and the targets below, and writes
<out>/rate_accuracy_<model>.json (with "role" and "checks" entries) and .png.

The protocol (choose on one set, report on another): lite0-imagenet is measured on two labelled sets,
each with its role in its JSON:
- the validation set (--val, 1,300 ILSVRC2012 validation images extracted by ../shared/photos;
  `rate_accuracy_lite0-imagenet-val.json`): every decision (design, schedule, seed, which run ships)
  was taken on it; its numbers are not a result.
- the held-out sample (--imagenet, the 100 images of ../shared/imagenet-sample whose class index is
  a multiple of 10; `rate_accuracy_lite0-imagenet.json`): chooses nothing; the README and the
  manifest report it.
fmnist-split on the Fashion-MNIST test set.

Targets:
- lite0-imagenet: the widest width within 1 point of the unsplit teacher at <= 1/2 of JPEG q75's
  mean bytes; the width nearest 1/4 of JPEG q75's bytes within 4 points of the teacher; every
  width above the JPEG and WebP curves (higher top-1 than the codec at the same bytes,
  interpolated in log bytes); the narrowest width at <= 600 B.
- fmnist-split: the widest width within 1 point of the teacher.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from splitserve.models.zoo import BUNDLED, bundle_dirs

REPO = Path(__file__).resolve().parents[1]
VAL_SUBDIR = "acuity-ilsvrc2012-val/ILSVRC2012_VAL_SET/data"
ROLES = {
    "held-out": "the 100 held-out sample images (class index a multiple of 10): they choose nothing from v9 on "
                "(v10's transform widths were not chosen on them), but chose v8's design and seed (the best of "
                "six runs), so widths 0-3 (v8's student, unchanged in v10) flatter it here",
    "validation": "the 1,300 validation images: every decision from v9 on is taken on them (v8 over v9; v10's two "
                  "transform steps, out of seven), so their numbers here are not a result; nothing about v8's "
                  "student (widths 0-3) was chosen on them",
    "test-set": "chose nothing: the dataset's own test set",
}


def curve_at(points: list[dict], nbytes: float, key: str) -> float | None:
    """A codec's top-1 at ``nbytes``, interpolated in log bytes; None outside the bytes it can reach."""
    pts = sorted((p["bytes_mean"], p[key]) for p in points)
    xs = [np.log(b) for b, _ in pts]
    if not pts or not xs[0] <= np.log(nbytes) <= xs[-1]:
        return None
    return float(np.interp(np.log(nbytes), xs, [a for _, a in pts]))


def checks(report: dict) -> dict:
    key = "accuracy" if report["metric"] == "accuracy" else "agreement"
    widths = report["widths"]
    widest, narrowest = widths[-1], widths[0]
    teacher = report["teacher"].get("accuracy") if key == "accuracy" else 1.0
    out: dict = {"metric": key}
    if report["model"].startswith("fmnist"):
        out["widest_within_1pt_of_teacher"] = {
            "widest": widest[key], "teacher": teacher, "met": widest[key] >= teacher - 0.01,
        }  # fmt: skip
        return out
    base = {b["name"]: b for b in report["baselines"]}
    q75 = base.get("jpeg-q75", {}).get("bytes_mean")
    out["widest_within_1pt_of_teacher"] = {
        "widest": widest[key], "teacher": teacher, "gap_points": round(100 * (teacher - widest[key]), 2),
        "met": widest[key] >= teacher - 0.01,
    }  # fmt: skip
    if q75:
        out["widest_at_most_half_of_jpeg_q75"] = {
            "widest_bytes": widest["bytes_mean"], "jpeg_q75_bytes": q75,
            "ratio": round(widest["bytes_mean"] / q75, 3), "met": widest["bytes_mean"] <= q75 / 2,
        }  # fmt: skip
        quarter = min(widths, key=lambda w: abs(np.log(w["bytes_mean"] / (q75 / 4))))
        out["quarter_of_jpeg_q75_within_4pt_of_teacher"] = {
            "width": quarter["width"], "bytes": quarter["bytes_mean"], "top1": quarter[key], "teacher": teacher,
            "gap_points": round(100 * (teacher - quarter[key]), 2), "met": quarter[key] >= teacher - 0.04,
        }  # fmt: skip
    out["narrowest_at_most_600_bytes"] = {"bytes": narrowest["bytes_mean"], "met": narrowest["bytes_mean"] <= 600}
    above = []
    for codec in ("jpeg", "webp"):
        curve = [b for b in report["baselines"] if b["name"].startswith(codec + "-")]
        for w in widths:
            at = curve_at(curve, w["bytes_mean"], key)
            above.append({
                "width": w["width"], "codec": codec, "bytes": round(w["bytes_mean"], 1), "split": w[key],
                "codec_at_same_bytes": None if at is None else round(at, 4),
                # below the codec's smallest output it cannot serve that rate at all
                "met": True if at is None else w[key] > at,
            })  # fmt: skip
    out["every_width_above_jpeg_and_webp"] = {"points": above, "met": all(a["met"] for a in above)}
    return out


def measure(model: str, stem: Path, images: Path | None, role: str, limit: int) -> int:
    """Run `splitserve eval`, add the role and the targets to its JSON, print them; the exit status."""
    splitserve = Path(sys.executable).parent / "splitserve"
    result = stem.with_suffix(".json")
    cmd = [str(splitserve), "eval", "--model", model, "--no-progress", "--json", str(result),
           "--plot", str(stem.with_suffix(".png"))]  # fmt: skip
    if images is not None:
        cmd += ["--images", str(images)]
    if limit:
        cmd += ["--limit", str(limit)]
    print(f"$ splitserve eval --model {model}{' --images ' + str(images) if images else ''}   [{role}]", flush=True)
    if subprocess.run(cmd).returncode != 0:
        return 1
    report = json.loads(result.read_text())
    report["role"] = ROLES[role]
    report["checks"] = checks(report)
    result.write_text(json.dumps(report, indent=2) + "\n")
    print(f"set: {report['role']}\ntargets:")
    for name, check in report["checks"].items():
        if isinstance(check, dict):
            detail = {k: v for k, v in check.items() if k not in ("met", "points")}
            print(f"  {name}: {'met' if check['met'] else 'MISSED'} {detail}")
            for point in check.get("points", []):
                if not point["met"]:
                    print(f"    below {point['codec']}: {point}")
    print(flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(sorted(bundle_dirs(BUNDLED))))
    p.add_argument("--imagenet", type=Path, default=REPO.parent / "shared" / "imagenet-sample",
                   help="labelled ImageNet images (a folder with labels.tsv) for lite0-imagenet")  # fmt: skip
    p.add_argument("--val", type=Path, default=REPO.parent / "photos" / VAL_SUBDIR,
                   help="the labelled validation set that chooses (lite0-imagenet; skipped with a note if absent)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--limit", type=int, default=0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        if not model.startswith("lite0"):
            if measure(model, args.out / f"rate_accuracy_{model}", None, "test-set", args.limit):
                return 1
            continue
        if not (args.imagenet / "labels.tsv").is_file():
            print(f"{model}: no labelled images at {args.imagenet} (--imagenet DIR)", file=sys.stderr)
            return 2
        if measure(model, args.out / f"rate_accuracy_{model}", args.imagenet, "held-out", args.limit):
            return 1
        if not (args.val / "labels.tsv").is_file():
            print(f"{model}: no validation set at {args.val} (--val DIR; see ../shared/photos): skipped\n")
        elif measure(model, args.out / f"rate_accuracy_{model}-val", args.val, "validation", args.limit):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
