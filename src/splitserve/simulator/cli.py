"""``simulate``: split inference vs local-only vs offloading images, over an emulated challenged link.

    simulate --bandwidth 2mbps --delay 20ms                    # real server + clients, userspace link
    simulate --trace fluctuating.up --plot run.png             # a bundled trace, or a Mahimahi file
    simulate --bandwidth 2mbps --loss 1% --netns               # kernel TCP over TUN devices (root)
    simulate --loss 5% --netns --transport grpc,webrtc         # TCP stream vs unordered datachannel
    simulate sweep --bandwidth 0.1mbps..50mbps --plot sweep.png  # analytic model, crossover points
    simulate fleet --devices 2000 --servers 12 --fail 120s:3      # many devices and servers (docs/plan.md)

Strategies: local, jpeg[:Q], webp[:Q], png, fp16, int8, split:W, adaptive (default: local, jpeg,
png, int8, every split width, adaptive). Device compute is measured on this machine; with
--device-slowdown or --device-profile it is scaled, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from splitserve.simulator.traces import bundled_traces, link_rate_bps

# Assumed compute slowdowns relative to this machine (2 x86 cores), for what-if runs.
DEVICE_PROFILES = {"this": 1.0, "phone": 3.0, "pi4": 8.0, "pi-zero": 40.0}


def _common(p: argparse.ArgumentParser, sweep: bool) -> None:
    if sweep:
        p.add_argument("--bandwidth", default="0.1mbps..50mbps", help="uplink range, e.g. 0.1mbps..50mbps")
        p.add_argument("--points", type=int, default=24, help="bandwidths in the sweep (log-spaced)")
    else:
        p.add_argument("--bandwidth", default="2mbps", help="uplink rate, e.g. 2mbps (default 2mbps)")
        p.add_argument("--trace", help="Mahimahi uplink trace file (overrides --bandwidth); bundled: "
                                        f"{', '.join(p.name for p in bundled_traces())}; or a step trace: "
                                        "step:10s@10mbps,10s@0.5mbps,10s@3mbps")  # fmt: skip
        p.add_argument("--netns", action="store_true", help="kernel TCP over TUN devices in network namespaces (root)")
        p.add_argument("--analytic", action="store_true", help="the analytic model only: no processes, seconds")
        p.add_argument("--keep", type=Path, help="keep per-frame records and logs in this directory")
    p.add_argument("--downlink", help="downlink rate (default: same as the uplink, or 10x a trace's mean)")
    p.add_argument("--delay", default="20ms", help="one-way delay (default 20ms)")
    p.add_argument("--jitter", default="0ms", help="delay jitter, standard deviation (default 0)")
    p.add_argument("--loss", default="0%", help="packet loss, e.g. 1%% (default 0)")
    p.add_argument("--burst", type=float, default=1.0, help="mean loss burst in packets (>1: Gilbert-Elliott)")
    p.add_argument("--queue", default="0", help="droptail queue size, e.g. 64kb (default unlimited)")
    p.add_argument("--model", help="model (default: lite0-imagenet if bundled, else fmnist-split)")
    p.add_argument("--frames", type=int, default=300, help="frames per strategy (default 300)")
    p.add_argument("--fps", type=float, default=10.0, help="camera frame rate (default 10)")
    p.add_argument("--deadline", default="150ms", help="per-frame deadline (default 150ms)")
    p.add_argument("--strategies", help="comma-separated strategies (default: all)")
    if not sweep:
        p.add_argument(
            "--transport",
            default="grpc",
            help="comma-separated: grpc, webrtc (each strategy runs on each; webrtc needs --netns)",
        )
    p.add_argument("--device-slowdown", type=float, help="scale device compute by this factor")
    p.add_argument("--device-profile", choices=sorted(DEVICE_PROFILES),
                   help=f"named slowdown: {', '.join(f'{k}={v:g}x' for k, v in DEVICE_PROFILES.items())}")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show progress also when stderr is not a terminal")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--plot", type=Path, help="write a plot (PNG)")


def parser(sweep: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simulate sweep" if sweep else "simulate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _common(p, sweep)
    return p


def _default_model() -> str:
    from splitserve.models.zoo import BUNDLED, bundle_dirs

    return "lite0-imagenet" if "lite0-imagenet" in bundle_dirs(BUNDLED) else "fmnist-split"


def _widths(model: str) -> int:
    """The model's widths, from its manifest (without loading it); an unknown model is a clear error."""
    from splitserve.models.manifest import MANIFEST
    from splitserve.models.zoo import find_bundle

    return len(json.loads((find_bundle(model) / MANIFEST).read_text())["widths"])


def _links(args: argparse.Namespace, uplink_rate: float | None):  # type: ignore[no-untyped-def]
    from splitserve.simulator.link import LinkConfig
    from splitserve.simulator.traces import load_trace, parse_step_trace
    from splitserve.simulator.units import parse_fraction, parse_rate, parse_size, parse_time_ms

    spec = getattr(args, "trace", None)
    trace = (parse_step_trace(spec) if spec.startswith("step:") else load_trace(spec)) if spec else None
    common = dict(delay_ms=parse_time_ms(args.delay), jitter_ms=parse_time_ms(args.jitter),
                  loss=parse_fraction(args.loss), burst=args.burst, queue_bytes=parse_size(args.queue))  # fmt: skip
    up = LinkConfig(rate_bps=None if trace else uplink_rate, trace=trace, **common)
    if args.downlink:
        down_rate = parse_rate(args.downlink)
    else:
        down_rate = trace.mean_rate_bps * 10 if trace else uplink_rate
    down = LinkConfig(rate_bps=down_rate, **common)
    return up, down


def _slowdown(args: argparse.Namespace) -> tuple[float, str]:
    if args.device_slowdown and args.device_profile:
        raise ValueError("give --device-slowdown or --device-profile, not both")
    if args.device_profile:
        x = DEVICE_PROFILES[args.device_profile]
        return x, f"device compute scaled x{x:g} (profile {args.device_profile}: an assumed factor, not measured)"
    if args.device_slowdown:
        if args.device_slowdown < 1:
            raise ValueError("--device-slowdown must be >= 1")
        return args.device_slowdown, f"device compute scaled x{args.device_slowdown:g} (--device-slowdown)"
    return 1.0, "device compute measured on this machine (not scaled)"


def run_main(args: argparse.Namespace) -> int:
    from splitserve.simulator.strategies import parse_strategies, with_transports
    from splitserve.simulator.units import parse_rate, parse_time_ms

    show = sys.stderr.isatty() or args.progress
    model = args.model or _default_model()
    # the flags and the model's manifest first: a typo is reported at once, not after the model loads
    up, down = _links(args, parse_rate(args.bandwidth))
    deadline = parse_time_ms(args.deadline)
    strategies = parse_strategies(args.strategies, _widths(model))
    transports = [t.strip() for t in args.transport.split(",") if t.strip()]
    if args.analytic and transports != ["grpc"]:
        raise ValueError("--analytic models the link, not a transport: drop --transport, or run without --analytic")
    strategies = with_transports(strategies, transports)
    slowdown, note = _slowdown(args)

    from tqdm import tqdm

    from splitserve.models.zoo import load
    from splitserve.simulator import report
    from splitserve.simulator.experiment import ExperimentConfig, run_experiment

    bundle = load(model)
    if args.analytic:
        result = analytic_run(
            bundle, strategies, up, down, args.frames, args.fps, deadline, slowdown, args.seed, progress=show
        )
    else:
        if args.netns:
            from splitserve.simulator.netns import check_available

            check_available()
        cfg = ExperimentConfig(
            model=model, strategies=strategies, uplink=up, downlink=down, frames=args.frames, fps=args.fps,
            deadline_ms=deadline, slowdown=slowdown, netns=args.netns, seed=args.seed,
        )  # fmt: skip
        bar = tqdm(total=len(strategies) * args.frames, desc="frames", unit="frame", disable=not show)

        def progress(name: str, done: int) -> None:  # frames of all strategies so far (by the clock)
            bar.set_postfix_str(name)
            bar.update(done - bar.n)

        def strategy_done(n: int, row: dict, seconds: float) -> None:  # one line each, terminal or log file
            p95 = row["latency_ms"]["p95"]  # None when no frame came back OK
            p95_text = "-" if p95 is None else f"{p95:.0f}"
            bar.write(f"simulate: [{n + 1}/{len(strategies)}] {row['name']}: p95 {p95_text} ms, "
                      f"{100 * row['deadline_miss']:.1f}% missed ({seconds:.0f} s)", file=sys.stderr)  # fmt: skip

        print(f"simulate: {len(strategies)} strategies x {args.frames} frames at {args.fps:g} fps "
              f"(~{args.frames / args.fps:.0f} s of frames each) on {model}; starting the edge-server",
              file=sys.stderr)  # fmt: skip
        result = run_experiment(cfg, progress, keep_dir=args.keep, on_strategy=strategy_done)
        bar.update(bar.total - bar.n)
        bar.close()
    result["device_note"] = note
    link = up.trace.name if up.trace is not None else f"{up.rate_bps / 1e6:g} Mbit/s"
    print(f"\n{result['model']}  uplink {link}, one-way delay {up.delay_ms:g} ms, jitter {up.jitter_ms:g} ms, "
          f"loss {100 * up.loss:g}%  |  {args.frames} frames at {args.fps:g} fps, deadline {deadline:g} ms  "
          f"({result['mode']})")  # fmt: skip
    print(report.table(result["strategies"], note))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        report.plot_run(result, args.plot)
        print(f"plot: {args.plot}")
    return 0


def analytic_run(bundle, strategies, up, down, frames, fps, deadline, slowdown, seed,  # type: ignore[no-untyped-def]
                 progress: bool = False) -> dict:  # fmt: skip
    from tqdm import tqdm

    from splitserve.data.samples import load_sample
    from splitserve.device_client.policy import manifest_accuracy
    from splitserve.simulator import analytic, costs

    images, labels = load_sample(bundle.manifest.get("sample") or "")
    measured = {s.name: costs.measure(bundle, s, images, slowdown) for s in strategies if not s.adaptive}
    width_costs = costs.measure_widths(bundle, images, slowdown)
    local = next((s for s in strategies if s.local), None)
    local_ms = measured[local.name].device_ms if local else None
    teacher = costs.measure(bundle, local or _local(), images, 1.0).predictions
    truth = labels if np.all(labels >= 0) else teacher
    accuracies = [manifest_accuracy(w) for w in bundle.widths]
    rows, timeline = [], {}
    bar = tqdm(total=len(strategies) * frames, desc="frames", unit="frame", disable=not progress, mininterval=0.5)
    for s in strategies:
        bar.set_postfix_str(s.name)
        cost = measured.get(s.name, width_costs[-1])
        out = analytic.simulate(s, cost, width_costs, up, down, frames, fps, deadline, seed, local_ms,
                                accuracies, on_frame=lambda i: bar.update(1))  # fmt: skip
        row = {"name": s.name, **analytic.summarize(out, deadline)}
        preds = []
        for o in out:
            k = o.index % len(images)
            src = measured[local.name] if (o.local and local) else (width_costs[o.width] if s.adaptive else cost)
            preds.append(src.predictions[k] == truth[k])
        row["accuracy"] = float(np.mean(preds))
        row["accuracy_kind"] = "labels" if np.all(labels >= 0) else "teacher agreement"
        spent = [(local_ms or 0) if o.local else (width_costs[o.width] if s.adaptive else cost).device_ms for o in out]
        row["device_ms"] = float(np.mean(spent))
        rows.append(row)
        link = link_rate_bps(up.trace, up.rate_bps, np.array([o.capture_s for o in out]))
        timeline[s.name] = [{"t": o.capture_s, "latency_ms": o.latency_ms, "width": o.width, "local": o.local,
                             "bw_bps": o.bandwidth_bps, "bw_sigma": o.sigma, "probe": o.probe,
                             "link_bps": None if np.isnan(r) else float(r), "status": "OK"}
                            for o, r in zip(out, link, strict=True)]  # fmt: skip
    bar.close()
    return {
        "model": f"{bundle.name}:{bundle.version}", "mode": "analytic",
        "link": {"uplink": up.describe(), "downlink": down.describe()}, "frames": frames, "fps": fps,
        "deadline_ms": deadline, "device_slowdown": slowdown, "strategies": rows, "timeline": timeline,
    }  # fmt: skip


def _local():  # type: ignore[no-untyped-def]
    from splitserve.simulator.strategies import Strategy

    return Strategy("local", None)


def sweep_main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from splitserve.data.samples import load_sample
    from splitserve.device_client.policy import manifest_accuracy
    from splitserve.models.zoo import load
    from splitserve.simulator import analytic, costs, report
    from splitserve.simulator.strategies import parse_strategies
    from splitserve.simulator.units import format_rate, parse_rate_range, parse_time_ms

    model = args.model or _default_model()
    bundle = load(model)
    slowdown, note = _slowdown(args)
    lo, hi = parse_rate_range(args.bandwidth)
    bandwidths = np.geomspace(lo, hi, args.points)
    strategies = parse_strategies(args.strategies, bundle.width_count)
    deadline = parse_time_ms(args.deadline)
    images, _ = load_sample(bundle.manifest.get("sample") or "")
    measured = {s.name: costs.measure(bundle, s, images, slowdown) for s in strategies if not s.adaptive}
    width_costs = costs.measure_widths(bundle, images, slowdown)
    local = next((s for s in strategies if s.local), None)
    local_ms = measured[local.name].device_ms if local else None
    accuracies = [manifest_accuracy(w) for w in bundle.widths]
    p95: dict[str, list[float]] = {s.name: [] for s in strategies}
    miss: dict[str, list[float]] = {s.name: [] for s in strategies}
    for bw in tqdm(bandwidths, desc="bandwidths", unit="point"):
        up, down = _links(args, float(bw))
        for s in strategies:
            out = analytic.simulate(s, measured.get(s.name, width_costs[-1]), width_costs, up, down, args.frames,
                                    args.fps, deadline, args.seed, local_ms, accuracies)  # fmt: skip
            summary = analytic.summarize(out, deadline)
            p95[s.name].append(summary["latency_ms"]["p95"])
            miss[s.name].append(summary["deadline_miss"])
    curves = {k: np.array(v) for k, v in p95.items()}
    names = list(curves)
    focus = [n for n in ("adaptive", "local", "jpeg") if n in curves]
    pairs = [(a, b) for i, a in enumerate(focus) for b in focus[i + 1 :]]
    pairs += [(n, "local") for n in names if n.startswith("split:") and "local" in curves]
    cross = report.crossovers(bandwidths, curves, pairs)
    result = {
        "model": f"{bundle.name}:{bundle.version}", "mode": "analytic", "deadline_ms": deadline,
        "delay_ms": parse_time_ms(args.delay), "device_slowdown": slowdown, "device_note": note,
        "bandwidths_bps": bandwidths.tolist(), "p95_ms": {k: v.tolist() for k, v in curves.items()},
        "deadline_miss": miss, "crossovers": cross,
    }  # fmt: skip
    print(f"\n{result['model']}: p95 latency (ms) vs uplink bandwidth, one-way delay {args.delay}, "
          f"deadline {deadline:g} ms; {note}")  # fmt: skip
    shown = [0, len(bandwidths) // 4, len(bandwidths) // 2, 3 * len(bandwidths) // 4, len(bandwidths) - 1]
    print(f"{'strategy':<12}" + "".join(f"{format_rate(bandwidths[i]):>15}" for i in shown))
    for name in names:
        print(f"{name:<12}" + "".join(f"{curves[name][i]:>15.1f}" for i in shown))
    if cross:
        print("\ncrossover points:")
        for c in cross:
            print(f"  {format_rate(c['bandwidth_bps']):>14}: below it {c['faster_below']} is faster, "
                  f"above it {c['faster_above']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        report.plot_sweep(result, args.plot)
        print(f"plot: {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fleet":
        from splitserve.simulator.fleet.cli import main as fleet_main

        try:
            return fleet_main(argv[1:])
        except ValueError as exc:
            print(f"simulate fleet: {exc}", file=sys.stderr)
            return 2
    sweep = bool(argv) and argv[0] == "sweep"
    args = parser(sweep).parse_args(argv[1:] if sweep else argv)
    from splitserve.logs import setup_logging

    setup_logging("warning")
    try:
        return sweep_main(args) if sweep else run_main(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
