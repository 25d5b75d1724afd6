"""Rate vs accuracy of every bundled model: each width and every baseline, on real payloads.

    python benchmarks/rate_accuracy.py [--models fmnist-split,lite0-imagenet] [--imagenet DIR] [--out DIR]

Runs `splitserve eval` per model (lite0-imagenet on the labelled ImageNet sample in
../shared/imagenet-sample, leaving out the images it was trained on; fmnist-split on
the Fashion-MNIST test set), prints its tables and the targets below, and writes
<out>/rate_accuracy_<model>.json (with a "checks" entry) and .png.

Targets:
- lite0-imagenet: the widest width's top-1 within 2 points of the unsplit teacher's, at
  <= 1/4 of JPEG q75's mean bytes; every width above the JPEG and WebP curves (higher
  top-1 than the codec at the same bytes, interpolated in log bytes); the narrowest
  width <= 1/4 of the widest's bytes.
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
    out["widest_within_2pt_of_teacher"] = {
        "widest": widest[key], "teacher": teacher, "gap_points": round(100 * (teacher - widest[key]), 2),
        "met": widest[key] >= teacher - 0.02,
    }  # fmt: skip
    if q75:
        out["widest_at_most_quarter_of_jpeg_q75"] = {
            "widest_bytes": widest["bytes_mean"], "jpeg_q75_bytes": q75,
            "ratio": round(widest["bytes_mean"] / q75, 3), "met": widest["bytes_mean"] <= q75 / 4,
        }  # fmt: skip
    out["narrowest_at_most_quarter_of_widest"] = {
        "ratio": round(narrowest["bytes_mean"] / widest["bytes_mean"], 3),
        "met": narrowest["bytes_mean"] <= widest["bytes_mean"] / 4,
    }
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(sorted(bundle_dirs(BUNDLED))))
    p.add_argument("--imagenet", type=Path, default=REPO.parent / "shared" / "imagenet-sample",
                   help="labelled ImageNet images (a folder with labels.tsv) for lite0-imagenet")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--limit", type=int, default=0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    splitserve = Path(sys.executable).parent / "splitserve"
    for model in args.models.split(","):
        result = args.out / f"rate_accuracy_{model}.json"
        cmd = [str(splitserve), "eval", "--model", model, "--no-progress",
               "--json", str(result), "--plot", str(args.out / f"rate_accuracy_{model}.png")]  # fmt: skip
        if model.startswith("lite0"):
            if not (args.imagenet / "labels.tsv").is_file():
                print(f"{model}: no labelled images at {args.imagenet} (--imagenet DIR)", file=sys.stderr)
                return 2
            cmd += ["--images", str(args.imagenet)]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print(f"$ splitserve eval --model {model}{' --images ' + str(args.imagenet) if '--images' in cmd else ''}",
              flush=True)  # fmt: skip
        if subprocess.run(cmd).returncode != 0:
            return 1
        report = json.loads(result.read_text())
        report["checks"] = checks(report)
        result.write_text(json.dumps(report, indent=2) + "\n")
        print("targets:")
        for name, check in report["checks"].items():
            if isinstance(check, dict):
                detail = {k: v for k, v in check.items() if k not in ("met", "points")}
                print(f"  {name}: {'met' if check['met'] else 'MISSED'} {detail}")
                for point in check.get("points", []):
                    if not point["met"]:
                        print(f"    below {point['codec']}: {point}")
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
