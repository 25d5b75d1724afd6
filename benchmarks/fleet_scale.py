"""The fleet model at scale, its aggregation checked, and the planning answers for the bundled models.

    python benchmarks/fleet_scale.py [--devices 100000] [--minutes 10] [--models fmnist-split,lite0-imagenet]

1. Aggregation against the per-device model: the same fleet (500 devices, 2 minutes, a server
   failure) run with one entity per device and server, and aggregated; misses and p95 side by side.
2. Speed: --devices devices for --minutes at 10 fps, aggregated, with a failure of a tenth of the
   servers under the chart's autoscaler; the wall time (target: <= 10 minutes on the 2-core machine).
3. Capacity per model: devices one server carries at <= 5 % misses (``simulate fleet --capacity``),
   the server-hours of a million frames and the servers 100,000 devices need, on the service curve
   benchmarks/server_throughput.py measured (this machine's CPU; a GPU JSON plugs in with --service).

Prints tables and writes JSON (default benchmarks/results/fleet_scale.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from splitserve.simulator.fleet.cli import capacity, parser, scenario
from splitserve.simulator.fleet.engine import simulate_fleet
from splitserve.simulator.fleet.scenario import Autoscale, Failure

ROOT = Path(__file__).resolve().parents[1]


def _args(model: str, extra: list[str]):  # type: ignore[no-untyped-def]
    return parser().parse_args(["--model", model, *extra])


def aggregation_check(model: str, devices: int, servers: int) -> dict:
    out = {}
    for mode, per_device in (("per_device", True), ("aggregated", False)):
        args = _args(model, ["--devices", str(devices), "--servers", str(servers), "--minutes", "2",
                             "--fail", "60s:1:20s"] + (["--per-device"] if per_device else []))  # fmt: skip
        s = simulate_fleet(scenario(args)).summary()
        out[mode] = {k: s[k] for k in ("miss", "lost", "p50_ms", "p95_ms", "utilisation", "entities", "events",
                                       "wall_s", "worst_minute")}  # fmt: skip
    return out


def scale_run(model: str, devices: int, minutes: float, servers: int, max_servers: int) -> dict:
    args = _args(model, ["--devices", str(devices), "--minutes", str(minutes)])
    sc = scenario(args, servers=servers,
                  failures=[Failure(minutes * 60 * 0.6, max(1, servers // 10), 30.0)],
                  autoscale=Autoscale(servers, max_servers, target=32.0, startup_s=30.0, down_window_s=300.0),
                  max_connection_age_s=60.0)  # fmt: skip
    t0 = time.perf_counter()
    res = simulate_fleet(sc)
    wall = time.perf_counter() - t0
    s = res.summary()
    return {"devices": devices, "minutes": minutes, "frames": s["frames"], "wall_s": round(wall, 1),
            "entities": s["entities"], "events": s["events"], "miss": s["miss"], "p95_ms": s["p95_ms"],
            "worst_minute_after_failure": s["worst_minute"], "servers_at_end": res.series()["servers_up"][-1],
            "scale_events": len(res.scale_events)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--models", default="fmnist-split,lite0-imagenet")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "fleet_scale.json")
    args = p.parse_args()
    import tempfile

    from splitserve.simulator.traces import make_trace, save_trace

    steady = Path(tempfile.mkdtemp()) / "steady-10mbps.up"
    save_trace(make_trace([(60.0, 10e6)]), steady)
    result: dict = {"machine": f"{os.cpu_count()} cores", "load_before": os.getloadavg(), "models": {}}
    if args.json.is_file():  # models not run now keep their last results
        result["models"] = json.loads(args.json.read_text()).get("models", {})
    for model in args.models.split(","):
        m: dict = {}
        cap = capacity(_args(model, []), progress=False)
        m["capacity"] = cap
        m["capacity_steady_10mbps"] = capacity(_args(model, ["--traces", str(steady)]), progress=False)
        per_server = max(m["capacity_steady_10mbps"]["devices_per_server"], 1)
        # 500 devices on the servers they need with 25 % headroom; one of them fails for 20 s
        m["aggregation_check"] = aggregation_check(model, 500, max(2, math.ceil(500 / (0.8 * per_server))))
        # the scale run is on the cellular traces: sized by their capacity
        servers = max(1, int(args.devices / max(cap["devices_per_server"], 1)))
        m["scale"] = scale_run(model, args.devices, args.minutes, servers, 2 * servers)
        result["models"][model] = m
        c, a, s = cap, m["aggregation_check"], m["scale"]
        print(f"{model}: one server ({c['server']}) carries {c['devices_per_server']} devices at "
              f"{c['miss_at_capacity']:.1%} misses (links alone {c['link_only_miss']:.1%}); "
              f"{c['server_hours_per_million_frames']:.3f} server-hours per million frames; "
              f"{c['servers_for_100k_devices']} servers for 100,000 devices")  # fmt: skip
        c2 = m["capacity_steady_10mbps"]
        print(f"  on a steady 10 Mbit/s link: {c2['devices_per_server']} devices per server (links alone "
              f"{c2['link_only_miss']:.1%}), {c2['servers_for_100k_devices']} servers for 100,000 devices")
        print(f"  aggregation check (500 devices, 2 min, a failure): per-device {a['per_device']['miss']:.1%} misses, "
              f"p95 {a['per_device']['p95_ms']} ms ({a['per_device']['entities']} entities, "
              f"{a['per_device']['wall_s']} s); aggregated {a['aggregated']['miss']:.1%}, "
              f"p95 {a['aggregated']['p95_ms']}"
              f" ms ({a['aggregated']['entities']} entities, {a['aggregated']['wall_s']} s)")  # fmt: skip
        print(f"  {s['devices']:,} devices x {s['minutes']:g} min ({s['frames']:,} frames, a failure, the autoscaler): "
              f"{s['wall_s']} s wall, {s['entities']} entities, {s['miss']:.1%} misses, worst minute after the "
              f"failure {s['worst_minute_after_failure']['miss']:.1%}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
