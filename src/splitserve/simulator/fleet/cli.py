"""``simulate fleet``: many devices, cells and servers, in minutes, from measured costs.

    simulate fleet --devices 2000 --servers 12 --minutes 5                 # a flat fleet
    simulate fleet --devices 2000 --servers 12 --fail 120s:3:30s           # three pods die at 2 min
    simulate fleet --devices 20000 --autoscale 2..200 --profile ramp:60s..300s --plot ramp.png
    simulate fleet --cell-devices 50 --cell-scale 5 --devices 500 --servers 4  # 50 phones per cell
    simulate fleet --capacity                                              # devices per server at <= 5% misses

Devices replay Mahimahi uplink traces (a folder: each cell draws one and an offset into it) and run
the device client's own planner; servers batch on the service curve that
benchmarks/server_throughput.py measured for the model (``--service`` for another, e.g. a GPU's).
How the model works and how far to trust it: docs/plan.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from splitserve.simulator.fleet.engine import FleetResult, simulate_fleet
from splitserve.simulator.fleet.scenario import Autoscale, DeviceCosts, Failure, FleetScenario, Profile, load_traces
from splitserve.simulator.fleet.service import check_curve, load_service_curve, results_path
from splitserve.simulator.units import parse_fraction, parse_time_ms

SHARED_TRACES = Path(__file__).resolve().parents[5] / "shared" / "traces"
MISS_TARGET = 0.05
_warned: set[str] = set()  # a capacity search builds hundreds of scenarios: each warning once


def model_costs(model: str) -> tuple[dict, list[int]]:
    """The model's manifest and each width's bytes around the payload (the Frame), as the client plans."""
    from splitserve.device_client.prediction import frame_overhead
    from splitserve.models.coding import CodingBundle
    from splitserve.models.manifest import MANIFEST
    from splitserve.models.zoo import find_bundle

    path = find_bundle(model)
    bundle = CodingBundle.load(path, verify=False)
    manifest = json.loads((path / MANIFEST).read_text())
    return manifest, [frame_overhead(bundle, "entropic", w) for w in range(len(manifest["widths"]))]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulate fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", default="lite0-imagenet", help="bundled model (default lite0-imagenet)")
    p.add_argument("--devices", type=int, default=1000, help="devices in the fleet (default 1000)")
    p.add_argument("--minutes", type=float, default=5.0, help="simulated time (default 5)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per device (default 10)")
    p.add_argument("--deadline", default="150ms", help="per-frame deadline (default 150ms)")
    p.add_argument("--policy", default="adaptive", help="adaptive | fixed:W (default adaptive)")
    p.add_argument("--traces", type=Path, nargs="+",
                   help="Mahimahi uplink traces, files or folders (default ../shared/traces, else the bundled ones)")
    p.add_argument("--cell-devices", type=int, default=1, help="devices sharing one cell's uplink (default 1: "
                   "each device its own link)")  # fmt: skip
    p.add_argument("--cell-scale", type=float, default=1.0, help="a cell's capacity = its trace's rate x this")
    p.add_argument("--delay", default="20ms", help="one-way delay device <-> server (default 20ms)")
    p.add_argument("--head-ms", type=float, help="device head time for every width (default: the manifest's)")
    p.add_argument("--device-slowdown", type=float, default=1.0, help="scale device compute by this factor")
    p.add_argument("--local", action="store_true", help="devices hold the whole model: adaptive may run frames locally")
    p.add_argument("--servers", type=int, default=4, help="edge servers at the start (default 4)")
    p.add_argument("--service", type=Path, help="server_throughput.py JSON (default: benchmarks/results/"
                   "server_throughput_<model>.json)")  # fmt: skip
    p.add_argument("--workers", action="store_true", help="use the JSON's --workers points (one server = N processes)")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-connection-age", default="0s", help="edge-server --max-connection-age: streams "
                   "end and reconnect through the balancer after this long (default 0s: never)")  # fmt: skip
    p.add_argument("--balancer", default="round-robin", choices=["round-robin", "least"])
    p.add_argument("--fail", action="append", default=[], metavar="AT[:N[:DOWN]]",
                   help="N servers (default 1) die at AT and serve again DOWN later (default 30s); repeatable")
    p.add_argument("--autoscale", metavar="MIN..MAX", help="the chart's HPA between MIN and MAX servers")
    p.add_argument("--hpa-target", type=float, default=32.0, help="frames in flight per pod (default 32)")
    p.add_argument("--startup", default="30s", help="a new pod's time to ready (default 30s)")
    p.add_argument("--down-window", default="300s", help="HPA scale-down stabilisation (default 300s)")
    p.add_argument("--profile", default="flat", help="flat | ramp:FROM..TO | diurnal:PERIOD (default flat)")
    p.add_argument("--profile-floor", type=float, default=0.1, help="active fraction at the profile's low")
    p.add_argument("--per-device", action="store_true", help="one entity per device and server (no aggregation)")
    p.add_argument("--link", default="fluid", choices=["fluid", "packet"],
                   help="fluid: devices share their cell's capacity (fast; default) | packet: each device its own "
                        "link, segment by segment, as the single-device model (needs --per-device, cells of one)")
    p.add_argument("--jitter", default="0ms", help="packet links: delay jitter, standard deviation (default 0)")
    p.add_argument("--loss", default="0%", help="packet links: segment loss, e.g. 1%% (default 0)")
    p.add_argument("--capacity", action="store_true",
                   help=f"find the devices one server carries at <= {MISS_TARGET:.0%} misses, and GPU/server-hours")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show progress also when stderr is not a terminal")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--plot", type=Path, help="write a plot over time (PNG)")
    return p


def _autoscale(args: argparse.Namespace) -> Autoscale | None:
    if not args.autoscale:
        return None
    try:
        lo, hi = (int(x) for x in args.autoscale.split(".."))
    except ValueError:
        raise ValueError(f"--autoscale {args.autoscale!r}: use MIN..MAX, e.g. 2..50") from None
    return Autoscale(lo, hi, args.hpa_target, parse_time_ms(args.down_window) / 1e3, parse_time_ms(args.startup) / 1e3)


def scenario(args: argparse.Namespace, **override) -> FleetScenario:  # type: ignore[no-untyped-def]
    manifest, overheads = model_costs(args.model)
    costs = DeviceCosts.from_manifest(manifest, overheads, args.head_ms, args.device_slowdown, args.local)
    service = load_service_curve(args.service or results_path(args.model), args.workers)
    warning = check_curve(service, args.model, str(manifest.get("version", "")))
    if warning and warning not in _warned:
        _warned.add(warning)
        print(f"simulate fleet: {warning}", file=sys.stderr)
    if args.traces:
        traces = load_traces(args.traces)
    else:
        from splitserve.simulator.traces import bundled_traces

        traces = load_traces([SHARED_TRACES] if SHARED_TRACES.is_dir() else bundled_traces())
    kw = dict(
        devices=args.devices, duration_s=args.minutes * 60, traces=traces, costs=costs, service=service,
        servers=args.servers, fps=args.fps, deadline_ms=parse_time_ms(args.deadline), policy=args.policy,
        cell_devices=args.cell_devices, cell_scale=args.cell_scale, delay_ms=parse_time_ms(args.delay),
        max_batch=args.max_batch, balancer=args.balancer, failures=[Failure.parse(f) for f in args.fail],
        autoscale=_autoscale(args), profile=Profile.parse(args.profile, args.profile_floor),
        aggregate=not args.per_device, seed=args.seed, link=args.link, jitter_ms=parse_time_ms(args.jitter),
        loss=parse_fraction(args.loss),
        max_connection_age_s=parse_time_ms(args.max_connection_age) / 1e3,
    )  # fmt: skip
    kw.update(override)
    return FleetScenario(**kw)


CAPACITY_SERVERS = 8  # the capacity search runs this many servers, so that many devices' links average out


def capacity(args: argparse.Namespace, progress: bool) -> dict:
    """Devices per server at <= 5 % misses, and what that makes the server-hours of a million frames.

    A flat fleet of n devices per server on 8 servers for 60 s, bisected on n. The links alone miss
    some frames whatever the servers do (on cellular traces often more than 5 %), so each n also
    runs with unlimited servers on the same links and draws, and the target is max(5 %, those
    misses + 1 point): the servers may add at most a point."""
    base = dict(duration_s=60.0, failures=[], autoscale=None, profile=Profile())
    k = CAPACITY_SERVERS
    runs: dict[int, tuple[float, float]] = {}

    def misses(n: int) -> tuple[float, float]:
        if n not in runs:
            served = simulate_fleet(scenario(args, devices=n * k, servers=k, **base)).summary()["miss"]
            alone = simulate_fleet(scenario(args, devices=n * k, servers=n * k * 100, **base)).summary()["miss"]
            runs[n] = (served, alone)
            if progress:
                print(f"  {n} devices per server: {served:.1%} misses ({alone:.1%} with unlimited servers)",
                      file=sys.stderr)  # fmt: skip
        return runs[n]

    def fits(n: int) -> bool:
        served, alone = misses(n)
        return served <= max(MISS_TARGET, alone + 0.01)

    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 100_000:
            break
    while hi - lo > max(1, lo // 50):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    service = scenario(args, devices=1).service
    frames_per_hour = lo * args.fps * 3600
    at = runs.get(lo, (None, None))
    return {
        "devices_per_server": lo, "miss_at_capacity": at[0], "link_only_miss": at[1],
        "server": service.device_name or service.device, "service_source": service.source,
        "server_hours_per_million_frames": (1e6 / frames_per_hour) if lo else None,
        "servers_for_100k_devices": math.ceil(100_000 / lo) if lo else None,
        "runs": {str(n): {"miss": round(a, 4), "links_alone": round(b, 4)} for n, (a, b) in sorted(runs.items())},
        "rule": "misses <= max(5 %, the same devices' misses with unlimited servers + 1 point), 8 servers, 60 s",
    }  # fmt: skip


def _table(result: FleetResult, rows: int = 12) -> None:
    s = result.series()
    n = len(s["t_s"])
    step = max(1, n // rows)
    print(f"{'t s':>6} {'devices':>9} {'frames/s':>10} {'miss':>7} {'p95 ms':>7} {'servers up':>10} {'util':>6}")
    for i in range(0, n, step):
        sl = slice(i, min(i + step, n))
        fr = np.array(s["frames_per_s"][sl])
        miss = float(np.average(s["miss"][sl], weights=fr)) if fr.sum() else 0.0
        w = min(int(s["t_s"][i] / s["p95_ms_window_s"]), len(s["p95_ms"]) - 1)
        p95 = s["p95_ms"][w]
        print(f"{s['t_s'][i]:>6.0f} {s['devices'][i]:>9.0f} {fr.mean():>10.0f} {miss:>7.1%} "
              f"{'-' if p95 is None else f'{p95:.0f}':>7} {s['servers_up'][i]:>10.0f} "
              f"{np.mean(s['utilisation'][sl]):>6.0%}")  # fmt: skip


def plot(result: FleetResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.series()
    t = np.array(s["t_s"])
    fig, ax = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    ax[0].plot(t, s["devices"], label="devices active")
    ax[0].set_ylabel("devices")
    a2 = ax[0].twinx()
    a2.step(t, s["servers_up"], color="C3", where="post", label="servers up")
    a2.step(t, s["servers_ready"], color="C1", where="post", linestyle="--", label="servers ready")
    a2.set_ylabel("servers")
    a2.legend(loc="lower right", fontsize=8)
    ax[1].plot(t, s["frames_per_s"])
    ax[1].set_ylabel("frames/s")
    ax[2].plot(t, 100 * np.array(s["miss"]), color="C3")
    ax[2].axhline(100 * MISS_TARGET, color="grey", linestyle=":")
    ax[2].set_ylabel("misses %")
    tw = np.arange(len(s["p95_ms"])) * s["p95_ms_window_s"]
    ax[3].step(tw, [np.nan if v is None else v for v in s["p95_ms"]], where="post", label="p95 latency (ms)")
    ax[3].axhline(result.scenario.deadline_ms, color="grey", linestyle=":")
    ax[3].set_ylabel("p95 ms")
    a3 = ax[3].twinx()
    a3.plot(t, 100 * np.array(s["utilisation"]), color="C2", alpha=0.6)
    a3.set_ylabel("server busy %")
    ax[3].set_xlabel("time (s)")
    sc = result.scenario
    fig.suptitle(f"simulate fleet: {sc.devices:,} devices, {sc.fps:g} fps, deadline {sc.deadline_ms:g} ms, "
                 f"{sc.balancer}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _progress(enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None

    def report(fraction: float) -> None:
        print(f"\r  simulated {fraction:5.0%}", end="", file=sys.stderr, flush=True)

    return report


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    show = args.progress or sys.stderr.isatty()
    if args.capacity:
        cap = capacity(args, show)
        print(f"{args.model}: one server ({cap['server']}) carries {cap['devices_per_server']} devices at "
              f"{args.fps:g} fps with {cap['miss_at_capacity'] or 0:.1%} misses (the links alone miss "
              f"{cap['link_only_miss'] or 0:.1%}); {cap['server_hours_per_million_frames'] or float('nan'):.3f} "
              f"server-hours per million frames; {cap['servers_for_100k_devices']} servers for "
              "100,000 devices")  # fmt: skip
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"capacity": cap, "model": args.model, "fps": args.fps,
                                             "deadline": args.deadline}, indent=1) + "\n")  # fmt: skip
        return 0
    sc = scenario(args)
    result = simulate_fleet(sc, _progress(show))
    if show:
        print(file=sys.stderr)
    summary = result.summary()
    _table(result)
    wm = summary["worst_minute"]
    print(f"{summary['frames']:,} frames: {summary['miss']:.1%} missed the {sc.deadline_ms:g} ms deadline "
          f"(lost with a server {summary['lost']:.1%}, OVERLOADED {summary['overloaded']:.1%}, expired at the "
          f"server {summary['expired_at_server']:.1%}), p95 {summary['p95_ms']} ms; server utilisation "
          f"{summary['utilisation']:.0%}; {summary['server_hours_per_million_frames'] or 0:.3f} server-hours per "
          f"million frames; worst minute {wm['miss']:.1%} misses from {wm['start_s']:g} s"
          if wm else "")  # fmt: skip
    fr = summary["failure"]
    if fr is not None:
        back = "not within the run" if fr["recovered_after_s"] is None else f"{fr['recovered_after_s']:g} s after it"
        print(f"failure at {fr['failure_s']:g} s: misses {fr['miss_before']:.1%} in the minute before, worst 5 s "
              f"{fr['worst_5s']['miss']:.1%} from {fr['worst_5s']['start_s']:g} s, back within a point {back}; "
              f"live servers answered {fr['not_overloaded_share']:.1%} of the frames they got "
              "(not OVERLOADED)")  # fmt: skip
    print(f"({result.entities} entities for {sc.devices:,} devices, {result.events:,} events, "
          f"{result.wall_s:.1f} s)")  # fmt: skip
    for e in result.scale_events:
        print("  ", e)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"model": args.model, "scenario": describe(sc), "summary": summary, "scale_events": result.scale_events,
               "series": result.series()}  # fmt: skip
        args.json.write_text(json.dumps(out) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


def describe(sc: FleetScenario) -> dict:
    return {
        "devices": sc.devices, "duration_s": sc.duration_s, "fps": sc.fps, "deadline_ms": sc.deadline_ms,
        "policy": sc.policy, "traces": [t.name for t in sc.traces], "cell_devices": sc.cell_devices,
        "cell_scale": sc.cell_scale, "delay_ms": sc.delay_ms, "link": sc.link, "jitter_ms": sc.jitter_ms,
        "loss": sc.loss, "servers": sc.servers, "balancer": sc.balancer,
        "max_batch": sc.max_batch, "service": sc.service.describe(),
        "head_ms": [round(w.head_ms, 2) for w in sc.costs.widths], "local_ms": sc.costs.local_ms,
        "max_connection_age_s": sc.max_connection_age_s,
        "failures": [vars(f) for f in sc.failures],
        "autoscale": vars(sc.autoscale) if sc.autoscale else None,
        "profile": vars(sc.profile), "aggregate": sc.aggregate, "seed": sc.seed,
    }  # fmt: skip
