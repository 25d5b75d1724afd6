"""The headline experiment: every strategy over a 2 Mbit/s, 20 ms link, and over a real LTE uplink trace.

    python benchmarks/simulate_2mbps.py [--model lite0-imagenet] [--frames 300]
        [--trace ../shared/traces/ATT-LTE-driving.up]

Runs `simulate` (real edge-server and device-client processes, userspace link
emulation) twice and checks the targets:

- 2 Mbit/s, 20 ms one-way: adaptive p95 <= 1.25 x its physical floor
  (bytes / bandwidth + RTT + device and server compute), and <= 1/3 of JPEG's p95
  at equal or better fidelity;
- the trace with a 150 ms deadline: adaptive's deadline misses <= 5 % and fewer
  than every fixed width's.

Prints both tables and the checks; writes JSON and plots under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "ATT-LTE-driving.up"


def simulate(args: list[str], out: Path) -> dict:
    cmd = [
        str(BIN / "simulate"),
        *args,
        "--json",
        str(out.with_suffix(".json")),
        "--plot",
        str(out.with_suffix(".png")),
    ]
    print("$ simulate " + " ".join(args), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit("simulate failed")
    return json.loads(out.with_suffix(".json").read_text())


def floor_ms(result: dict, name: str) -> float:
    """bytes / bandwidth + RTT + compute, for one strategy, from its measured frames."""
    from splitserve.device_client.client import frame_overhead
    from splitserve.models.zoo import load

    model, _, version = result["model"].partition(":")
    bundle = load(model, version)
    row = next(r for r in result["strategies"] if r["name"] == name)
    up = result["link"]["uplink"]
    frames = [p for p in result["timeline"][name] if p["status"] == "OK"]
    wire = row["bytes_per_frame"] + frame_overhead(bundle, "entropic", bundle.width_count - 1)
    server = sum(p.get("server_ms") or 0.0 for p in frames) / max(len(frames), 1)
    return wire * 8 / up["rate_bps"] * 1e3 + 2 * up["delay_ms"] + row["device_ms"] + server


def target_checks(flat: dict, traced: dict | None) -> list[tuple[str, float, float]]:
    """(check, measured value, limit) for each target the two runs can speak to."""
    checks = []
    rows = {r["name"]: r for r in flat["strategies"]}
    if "adaptive" in rows and "jpeg" in rows:
        ad, jp = rows["adaptive"], rows["jpeg"]
        fl = floor_ms(flat, "adaptive")
        checks.append(("adaptive p95 / physical floor <= 1.25", ad["latency_ms"]["p95"] / fl, 1.25))
        checks.append(("adaptive p95 / JPEG p95 <= 0.333", ad["latency_ms"]["p95"] / jp["latency_ms"]["p95"], 1 / 3))
        checks.append(("JPEG fidelity - adaptive fidelity <= 0", jp["accuracy"] - ad["accuracy"], 0.0))
    trows = {r["name"]: r for r in traced["strategies"]} if traced else {}
    if "adaptive" in trows:
        miss = trows["adaptive"]["deadline_miss"]
        fixed = [r["deadline_miss"] for n, r in trows.items() if n.startswith("split:")]
        checks.append(("trace: adaptive deadline miss <= 0.05", miss, 0.05))
        if fixed:
            checks.append(("trace: adaptive miss - best fixed width's < 0", miss - min(fixed), 0.0))
    return checks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--trace", type=Path, default=TRACE)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--checks-only", action="store_true",
                   help="recompute the checks from the JSON results already in --out, without simulating")  # fmt: skip
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = ["--model", args.model] if args.model else []
    flat_out, trace_out = args.out / "simulate_2mbps", args.out / "simulate_trace"
    if args.checks_only:
        flat = json.loads(flat_out.with_suffix(".json").read_text())
        trace_json = trace_out.with_suffix(".json")
        traced = json.loads(trace_json.read_text()) if trace_json.is_file() else None
    else:
        flat = simulate([*model, "--bandwidth", "2mbps", "--delay", "20ms", "--frames", str(args.frames)], flat_out)
        traced = None
        if args.trace.is_file():
            traced = simulate([*model, "--trace", str(args.trace), "--deadline", "150ms", "--frames",
                               str(args.frames)], trace_out)  # fmt: skip
        else:
            print(f"(no trace at {args.trace}: skipping the trace run)")
    checks = target_checks(flat, traced)
    source = "from the results already in --out" if args.checks_only else "measured in this run"
    print(f"\ntarget checks ({source}):")
    for name, value, limit in checks:
        ok = value <= limit if "< 0" not in name else value < limit
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {value:.3f}")
    (args.out / "simulate_checks.json").write_text(
        json.dumps([{"check": n, "value": v, "limit": lim} for n, v, lim in checks], indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
