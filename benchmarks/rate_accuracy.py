"""Rate vs accuracy of every bundled model: each width and every baseline, on real payloads.

    python benchmarks/rate_accuracy.py [--models fmnist-split,lite0-imagenet] [--out benchmarks/results]

Runs `splitserve eval` per model; prints its tables and writes
<out>/rate_accuracy_<model>.json and .png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from splitserve.models.zoo import BUNDLED, bundle_dirs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(sorted(bundle_dirs(BUNDLED))))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--limit", type=int, default=0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    splitserve = Path(sys.executable).parent / "splitserve"
    for model in args.models.split(","):
        cmd = [str(splitserve), "eval", "--model", model, "--no-progress",
               "--json", str(args.out / f"rate_accuracy_{model}.json"),
               "--plot", str(args.out / f"rate_accuracy_{model}.png")]  # fmt: skip
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print(f"$ splitserve eval --model {model}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            return 1
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
