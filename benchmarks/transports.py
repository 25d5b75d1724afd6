"""gRPC (one TCP stream) vs WebRTC (an unordered, partially reliable datachannel) over a lossy link.

    sudo python benchmarks/transports.py [--model lite0-imagenet] [--frames 300] [--strategy split:1]
    sudo python benchmarks/transports.py --strategy widths --losses 5%      # every width at 5 % loss

Real edge-server and device-client processes in network namespaces (``simulate --netns``): the
kernel's TCP and aiortc's SCTP-over-UDP both cross the emulated link, 2 Mbit/s with 20 ms one-way
delay each way, at 10 fps with a 150 ms deadline. Loss: Bernoulli 0 / 2 / 5 / 10 % and
Gilbert-Elliott bursts (5 % with a mean burst of 4 packets), on both directions.

``--strategy`` takes one simulate strategy, several (comma-separated), or ``widths``: every width
of the model. Targets, per strategy: at 5 % loss WebRTC misses at most half as many deadlines as
gRPC; with no loss its p95 latency is within 10 % of gRPC's. Besides end-to-end latency the table
shows each answered frame's time on the network ("net": latency minus the device's and the
server's compute), which is what the transport changes; on a busy machine compute alone can push
frames past the deadline.
Prints a table and the checks; writes JSON and a plot under --out.
Needs root (network namespaces and TUN devices).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

LOSSES = [("0%", 0.0, 1.0), ("2%", 0.02, 1.0), ("5%", 0.05, 1.0), ("10%", 0.10, 1.0), ("GE 5% x4", 0.05, 4.0)]
TRANSPORTS = ["grpc", "webrtc"]


def strategies_of(spec: str, widths: int) -> list[str]:
    return [f"split:{w}" for w in range(widths)] if spec == "widths" else [s.strip() for s in spec.split(",")]


def run_one(model: str, strategy: str, loss: float, burst: float, frames: int, seed: int) -> dict:
    from splitserve.models.zoo import load
    from splitserve.simulator.experiment import ExperimentConfig, run_experiment
    from splitserve.simulator.link import LinkConfig
    from splitserve.simulator.strategies import parse_strategies, with_transports

    bundle = load(model)
    strategies = with_transports(parse_strategies(strategy, bundle.width_count), TRANSPORTS)
    link = LinkConfig(rate_bps=2e6, delay_ms=20, loss=loss, burst=burst)
    cfg = ExperimentConfig(model=model, strategies=strategies, uplink=link, downlink=link, frames=frames, fps=10,
                           deadline_ms=150, netns=True, seed=seed)  # fmt: skip
    return run_experiment(cfg)


def network_ms(result: dict, name: str, device_ms: float) -> tuple[float | None, float | None]:
    """p50 / p95 of the answered frames' time on the network: latency minus device and server compute."""
    answered = [p for p in result["timeline"][name] if p["status"] == "OK"]
    net = [p["latency_ms"] - (p["server_ms"] or 0.0) - device_ms for p in answered]
    if not net:
        return None, None
    return float(np.percentile(net, 50)), float(np.percentile(net, 95))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(rows: list[dict]) -> str:
    head = (f"{'strategy':<9} {'loss':<10} {'transport':<9} {'miss %':>7} {'p50 ms':>7} {'p95 ms':>7} "
            f"{'net p50':>8} {'net p95':>8} {'ok':>5}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['strategy']:<9} {r['loss']:<10} {r['transport']:<9} {100 * r['deadline_miss']:>7.1f} "
                     f"{_ms(r['p50_ms']):>7} {_ms(r['p95_ms']):>7} {_ms(r['net_p50_ms']):>8} "
                     f"{_ms(r['net_p95_ms']):>8} {r['ok']:>5}")  # fmt: skip
    return "\n".join(lines)


def checks(rows: list[dict]) -> list[tuple[str, float, float]]:
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        by = {(r["loss"], r["transport"]): r for r in rows if r["strategy"] == strategy}
        if ("5%", "grpc") in by and ("5%", "webrtc") in by:
            g, w = by[("5%", "grpc")]["deadline_miss"], by[("5%", "webrtc")]["deadline_miss"]
            ratio = w / g if g else (float("inf") if w else 0.0)
            out.append((f"{strategy}, 5% loss: WebRTC misses / gRPC misses <= 0.5", ratio, 0.5))
        if ("0%", "grpc") in by and ("0%", "webrtc") in by:
            g, w = by[("0%", "grpc")]["p95_ms"], by[("0%", "webrtc")]["p95_ms"]
            if g and w:
                out.append((f"{strategy}, no loss: WebRTC p95 / gRPC p95 <= 1.10", w / g, 1.10))
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len({r["strategy"] for r in rows}) > 1:  # every width: one group of bars per width
        rows = [{**r, "loss": f"{r['strategy'].replace('split:', 'width ')}\n{r['loss']}"} for r in rows]
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for k, t in enumerate(TRANSPORTS):
        got = {r["loss"]: r for r in rows if r["transport"] == t}
        xs = [i + (k - 0.5) * width for i in range(len(losses))]
        ax1.bar(xs, [100 * got[lo]["deadline_miss"] if lo in got else 0 for lo in losses], width, label=t)
        ax2.bar(xs, [got[lo]["p95_ms"] or 0 if lo in got else 0 for lo in losses], width, label=f"{t} p95")
        ax2.scatter(xs, [got[lo]["p50_ms"] or 0 if lo in got else 0 for lo in losses], color="k", s=12, zorder=3,
                    label="p50" if k == 0 else None)  # fmt: skip
    for ax, ylabel in ((ax1, "deadline misses (%)"), (ax2, "latency of answered frames (ms)")):
        ax.set_xticks(range(len(losses)), losses)
        ax.set_xlabel("packet loss (both directions)" if len(losses) <= len(LOSSES) else "width, loss")
        ax.set_ylabel(ylabel)
        ax.legend()
    ax2.axhline(150, color="grey", lw=0.8, ls="--")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite0-imagenet")
    p.add_argument(
        "--strategy",
        default="split:1",
        help="simulate strategies (comma-separated) or 'widths' (every width), each on both transports",
    )
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--losses", default=",".join(name for name, _, _ in LOSSES),
                   help="which of the loss settings to run (comma-separated names)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    from splitserve.simulator.netns import NetnsUnavailable, check_available

    try:
        check_available()
    except NetnsUnavailable as exc:
        print(f"transports.py: {exc}", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.losses.split(",")]
    from splitserve.models.zoo import load

    strategies = strategies_of(args.strategy, load(args.model).width_count)
    rows = []
    for strategy, (name, loss, burst) in itertools.product(strategies, LOSSES):
        if name not in wanted:
            continue
        t0 = time.time()
        result = run_one(args.model, strategy, loss, burst, args.frames, args.seed)
        for row in result["strategies"]:
            net50, net95 = network_ms(result, row["name"], row["device_ms"])
            rows.append({
                "strategy": strategy, "net_p50_ms": net50, "net_p95_ms": net95,
                "loss": name, "loss_rate": loss, "burst": burst, "transport": row["transport"],
                "deadline_miss": row["deadline_miss"], "p50_ms": row["latency_ms"]["p50"],
                "p95_ms": row["latency_ms"]["p95"], "ok": row["ok"], "frames": row["frames"],
                "bytes_per_frame": row["bytes_per_frame"], "device_ms": row["device_ms"],
            })  # fmt: skip
        print(f"{strategy} {name}: {time.time() - t0:.0f} s", flush=True)
    title = (f"{args.model} {args.strategy}, 2 Mbit/s, 20 ms one-way, 10 fps, 150 ms deadline, "
             f"{args.frames} frames (netns)")  # fmt: skip
    print(f"\n{title}\n{table(rows)}")
    found = checks(rows)
    print("\ntarget checks:")
    for check, value, limit in found:
        print(f"  {'PASS' if value <= limit else 'MISS'}  {check}: {value:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"transports_{args.model}" + ("" if args.strategy == "split:1" else f"_{args.strategy.replace(':', '')}")
    (args.out / f"{stem}.json").write_text(json.dumps({
        "title": title, "model": args.model, "strategy": args.strategy, "frames": args.frames, "rows": rows,
        "checks": [{"check": c, "value": v, "limit": lim} for c, v, lim in found],
    }, indent=1) + "\n")  # fmt: skip
    plot(rows, args.out / f"{stem}.png", title)
    print(f"wrote {args.out}/{stem}.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
