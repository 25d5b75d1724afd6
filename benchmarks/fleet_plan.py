"""The deployment questions of docs/plan.md, answered by the fleet model for one bundled model.

    python benchmarks/fleet_plan.py [--model lite0-imagenet] [--devices 2000]

- a shared cell: 50 phones in one cell against 50 phones each on its own link (same trace);
- a failure: a tenth of the servers die for 30 s; round-robin against least-connections, with and
  without --max-connection-age;
- a morning ramp (10 % to 100 % of the devices over 3 minutes) under the chart's autoscaler: its
  default target (32 frames in flight per pod) with and without --max-connection-age, and a target of 4.

Servers are sized from the capacity on the cellular traces that benchmarks/fleet_scale.py measured
(its JSON), with 25 % headroom. Prints a table and writes JSON (default benchmarks/results/fleet_plan_<model>.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from splitserve.simulator.fleet.cli import parser, scenario
from splitserve.simulator.fleet.engine import simulate_fleet
from splitserve.simulator.fleet.scenario import Autoscale, Failure, Profile

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"


def run(model: str, flags: list[str], **override) -> dict:  # type: ignore[no-untyped-def]
    args = parser().parse_args(["--model", model, *flags])
    res = simulate_fleet(scenario(args, **override))
    s = res.summary()
    return {"miss": s["miss"], "p95_ms": s["p95_ms"], "lost": s["lost"], "worst_minute": s["worst_minute"],
            "utilisation": s["utilisation"], "width_share": s["width_share"], "local": s["local"],
            "servers_max": max(res.series()["servers_up"]), "scale_events": len(res.scale_events),
            "server_hours": s["server_hours"]}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite0-imagenet")
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    scale = json.loads((ROOT / "benchmarks" / "results" / "fleet_scale.json").read_text())
    per_server = scale["models"][args.model]["capacity"]["devices_per_server"]
    servers = max(2, math.ceil(args.devices / (per_server * 0.8)))
    m = args.model
    out: dict = {"model": m, "devices": args.devices, "servers": servers, "devices_per_server": per_server}

    cell = TRACES / "Verizon-LTE-short.up"
    out["cell"] = {
        "own_links": run(m, ["--devices", "50", "--servers", "8", "--minutes", "2", "--traces", str(cell)]),
        "one_cell": run(m, ["--devices", "50", "--servers", "8", "--minutes", "2", "--traces", str(cell),
                            "--cell-devices", "50", "--cell-scale", "5"]),  # fmt: skip
    }
    base = ["--devices", str(args.devices), "--servers", str(servers), "--minutes", "5"]
    fail = [Failure(120.0, max(1, servers // 10), 30.0)]
    out["failure"] = {
        f"{lb}{' age 60s' if age else ''}": run(m, base + ["--balancer", lb], failures=fail, max_connection_age_s=age)
        for lb in ("round-robin", "least") for age in (0.0, 60.0)
    }  # fmt: skip
    ramp = dict(profile=Profile.parse("ramp:60s..240s", 0.1), tiers=4)
    out["ramp"] = {}
    for target, age in ((32.0, 0.0), (32.0, 60.0), (4.0, 60.0)):
        auto = Autoscale(max(1, servers // 10), servers * 2, target=target, startup_s=30.0, down_window_s=300.0)
        key = f"HPA target {target:g}{' age 60s' if age else ''}"
        out["ramp"][key] = run(m, ["--devices", str(args.devices), "--minutes", "6"], servers=auto.min_servers,
                               autoscale=auto, max_connection_age_s=age, **ramp)  # fmt: skip
    print(f"{m}: {args.devices} devices, {servers} servers ({per_server} per server on the traces, 25 % headroom)")
    print(f"{'scenario':<34} {'miss':>6} {'p95 ms':>7} {'worst min':>9} {'servers max':>11} {'server-h':>8}")
    for group in ("cell", "failure", "ramp"):
        for name, r in out[group].items():
            print(f"{group + ': ' + name:<34} {r['miss']:>6.1%} {r['p95_ms'] or 0:>7.0f} "
                  f"{r['worst_minute']['miss']:>9.1%} {r['servers_max']:>11.0f} {r['server_hours']:>8.2f}")  # fmt: skip
    path = args.json or ROOT / "benchmarks" / "results" / f"fleet_plan_{m}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
