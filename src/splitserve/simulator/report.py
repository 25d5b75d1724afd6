"""Tables, crossover points and plots for simulator results."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[dict], device_note: str = "") -> str:
    """The strategy table a person reads."""
    kind = next((r.get("accuracy_kind") for r in rows if r.get("accuracy_kind")), "accuracy")
    acc_head = "agreement" if kind == "teacher agreement" else "accuracy"
    head = f"{'strategy':<12} {'bytes/frame':>11} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'miss %':>7} " \
           f"{acc_head:>9} {'device ms':>10}"  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lat = r["latency_ms"]
        acc = r.get("accuracy")
        lines.append(
            f"{r['name']:<12} {r['bytes_per_frame']:>11.0f} {_ms(lat['p50']):>8} {_ms(lat['p95']):>8} "
            f"{_ms(lat['p99']):>8} {100 * r['deadline_miss']:>7.1f} {'-' if acc is None else f'{acc:.3f}':>9} "
            f"{r.get('device_ms', 0.0):>10.1f}"
        )
    if device_note:
        lines.append(device_note)
    return "\n".join(lines)


def crossovers(bandwidths: np.ndarray, curves: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> list[dict]:
    """Bandwidths where curve a and curve b swap order (log-interpolated between sweep points)."""
    found = []
    for a, b in pairs:
        if a not in curves or b not in curves:
            continue
        diff = curves[a] - curves[b]
        for i in range(len(diff) - 1):
            if np.sign(diff[i]) != np.sign(diff[i + 1]) and diff[i] != 0:
                x0, x1 = np.log(bandwidths[i]), np.log(bandwidths[i + 1])
                frac = diff[i] / (diff[i] - diff[i + 1])
                bw = float(np.exp(x0 + frac * (x1 - x0)))
                below, above = (a, b) if diff[i] < 0 else (b, a)
                found.append({"bandwidth_bps": bw, "faster_below": below, "faster_above": above})
    return sorted(found, key=lambda c: c["bandwidth_bps"])


def plot_run(report: dict, path: Path, trace_series: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Latency per strategy (upper panel); below, per frame: the link's rate, the bandwidth estimate of
    each split run, and for the adaptive run the estimate each frame was planned with (and its +-1 sigma
    band) and the width it chose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    adaptive = next((name for name in timeline if name.startswith("adaptive")), None)
    # the fixed-width split runs plan nothing, but their estimates show what the adaptive one saw
    splits = [name for name in timeline if name.startswith("split") and any(p["bw_bps"] for p in timeline[name])]
    panels = 2 if (adaptive or splits or trace_series is not None) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(10, 4.2 * panels), squeeze=False)
    ax = axes[0][0]
    names = [r["name"] for r in report["strategies"]]
    data = [[p["latency_ms"] for p in timeline[n] if p["status"] == "OK"] or [np.nan] for n in names]
    ax.boxplot(data, tick_labels=names, showfliers=True, whis=(5, 95))
    ax.axhline(report["deadline_ms"], color="tab:red", linestyle="--", linewidth=1, label="deadline")
    ax.set_yscale("log")
    ax.set_ylabel("capture-to-result latency (ms)")
    up = report["link"]["uplink"]
    link = up["trace"] or (f"{up['rate_bps'] / 1e6:g} Mbit/s" if up["rate_bps"] else "unlimited")
    ax.set_title(f"{report['model']}: uplink {link}, {up['delay_ms']:g} ms one-way, loss {100 * up['loss']:g}% "
                 f"({report['mode']} emulation)")  # fmt: skip
    ax.legend(loc="upper right")
    ax.tick_params(axis="x", rotation=30)
    if panels == 2:
        ax2 = axes[1][0]
        pts = timeline[adaptive] if adaptive else []
        t = np.array([p["t"] for p in pts])
        ref = pts or (timeline[splits[0]] if splits else [])  # the run whose link clock is drawn
        link_bps = np.array([p.get("link_bps") or np.nan for p in ref], dtype=float)
        if ref and not np.all(np.isnan(link_bps)):
            ax2.step([p["t"] for p in ref], link_bps / 1e6, where="post", color="0.55", label="link rate")
        elif trace_series is not None:
            t_ms, rate = trace_series
            ax2.step(t_ms / 1e3, rate / 1e6, where="post", color="0.55", label="link rate (trace)")
        for name in splits:
            split_pts = timeline[name]
            ax2.plot([p["t"] for p in split_pts], [(p["bw_bps"] or np.nan) / 1e6 for p in split_pts],
                     linewidth=0.8, alpha=0.6, label=f"estimate, {name}")  # fmt: skip
        if splits and not pts:
            ax2.set_yscale("log")
            ax2.set_xlim(0, max(p["t"] for name in splits for p in timeline[name]) * 1.02)
        if pts:
            bw = np.array([p["bw_bps"] if p["bw_bps"] else np.nan for p in pts], dtype=float)
            sigma = np.array([p.get("bw_sigma") or 0.0 for p in pts], dtype=float)
            ax2.plot(t, bw / 1e6, color="tab:blue", linewidth=1.8, label=f"estimate, {adaptive} (planned with)")
            if np.any(sigma > 0):
                ax2.fill_between(t, bw * np.exp(-sigma) / 1e6, bw * np.exp(sigma) / 1e6, color="tab:blue",
                                 alpha=0.15, linewidth=0, label="estimate +-1 sigma")  # fmt: skip
            ax2.set_yscale("log")
            ax3 = ax2.twinx()
            widths = np.array([-1 if p["local"] else p["width"] for p in pts])
            ax3.step(t, widths, where="post", color="tab:orange", label="chosen width (-1: local)")
            probes = [p["t"] for p in pts if p.get("probe")]
            if probes:
                ax3.plot(probes, [-1] * len(probes), "|", color="tab:green", markersize=10, label="probe sent")
            ax3.set_ylabel("width")
            ax3.set_ylim(-1.5, max(widths.max(), 0) + 0.5)
            ax3.legend(loc="upper right")
            ax2.set_xlim(0, t.max() * 1.02)  # the trace repeats for far longer than a run: show the run
        ax2.set_xlabel("time (s)")
        ax2.set_ylabel("Mbit/s")
        ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(sweep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bw = np.array(sweep["bandwidths_bps"])
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, curve in sweep["p95_ms"].items():
        ax.plot(bw / 1e6, curve, marker=".", label=name)
    ax.axhline(sweep["deadline_ms"], color="tab:red", linestyle="--", linewidth=1, label="deadline")
    for c in sweep["crossovers"]:
        ax.axvline(c["bandwidth_bps"] / 1e6, color="0.7", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("uplink bandwidth (Mbit/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title(f"{sweep['model']}: p95 latency vs bandwidth (analytic model, {sweep['delay_ms']:g} ms one-way)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
