"""A server's service curve: how long one batch of n frames takes, read from a measurement.

``benchmarks/server_throughput.py`` drives a real edge-server with more and more streams and
records, per point, the frames/s it served and the mean batch its dynamic batcher formed. A
saturated point (n frames a batch at X frames/s) says a batch of n takes n / X seconds,
decode, tail and result building included; so the curve is those points, interpolated in n.
A GPU measurement (``--device cuda``) plugs in the same way, with its own points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[4] / "benchmarks" / "results"


@dataclass(frozen=True)
class ServiceCurve:
    batch: np.ndarray  # mean batch size of each measured point, increasing
    batch_ms: np.ndarray  # how long one batch of that size took
    source: str = ""
    device: str = "cpu"
    device_name: str = ""
    model: str = ""  # the model and version the measurement served ("" where it does not say)
    version: str = ""

    def __post_init__(self) -> None:
        if len(self.batch) == 0 or len(self.batch) != len(self.batch_ms):
            raise ValueError("a service curve needs at least one (batch, ms) point")
        if np.any(np.diff(self.batch) <= 0) or np.any(self.batch_ms <= 0):
            raise ValueError("service curve points must have increasing batch sizes and positive times")

    def ms(self, n: float) -> float:
        """Time of one batch of ``n`` frames (a lone frame costs a batch of one; past the last point
        the last segment's time per frame continues)."""
        b, t = self.batch, self.batch_ms
        if n <= b[0]:
            return float(t[0])
        if n >= b[-1]:
            slope = (t[-1] - t[-2]) / (b[-1] - b[-2]) if len(b) > 1 else t[-1] / b[-1]
            return float(t[-1] + slope * (n - b[-1]))
        return float(np.interp(n, b, t))

    def frames_per_s(self, n: float) -> float:
        return n / self.ms(n) * 1e3

    @property
    def max_frames_per_s(self) -> float:
        return max(self.frames_per_s(float(n)) for n in self.batch)

    def describe(self) -> dict:
        return {
            "source": self.source, "device": self.device, "device_name": self.device_name,
            "model": self.model, "version": self.version,
            "points": [{"batch": round(float(b), 2), "batch_ms": round(float(t), 2)}
                       for b, t in zip(self.batch, self.batch_ms, strict=True)],
            "max_frames_per_s": round(self.max_frames_per_s, 1),
        }  # fmt: skip

    @classmethod
    def from_points(cls, points: list[tuple[float, float]], source: str = "given") -> ServiceCurve:
        """From (batch size, frames/s at that batch size) pairs."""
        pts = sorted(points)
        return cls(np.array([b for b, _ in pts], float), np.array([b / fps * 1e3 for b, fps in pts], float), source)


def results_path(model: str, device: str = "cpu") -> Path:
    suffix = "" if device == "cpu" else f"_{device}"
    return RESULTS / f"server_throughput_{model}{suffix}.json"


def load_service_curve(path: str | Path, workers: bool = False) -> ServiceCurve:
    """The curve of one ``server_throughput.py`` JSON: its batching server's points (``workers``:
    the points measured with ``--workers N``, which serve as one server of N processes)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no throughput measurement at {path}: run benchmarks/server_throughput.py "
                         "for this model (and --device) first") from None  # fmt: skip
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    key = "on_workers" if workers else "on"
    points: dict[float, float] = {}
    for row in data.get("rows", []):
        point = row.get(key)
        if not point or not point.get("frames_per_s") or not point.get("mean_batch"):
            continue
        # two rows that reached the same batch: keep the faster (the other was not saturated)
        b = round(float(point["mean_batch"]), 2)
        points[b] = max(points.get(b, 0.0), float(point["frames_per_s"]))
    if not points:
        raise ValueError(f"{path} has no {key!r} points" + (" (measured without --workers)" if workers else ""))
    # A point whose throughput is below a smaller batch's was limited by its load, not the server:
    # keep the upper envelope, so that a bigger batch is never slower per frame than a smaller one.
    kept: list[tuple[float, float]] = []
    for b, fps in sorted(points.items()):
        if kept and fps <= kept[-1][1]:
            continue
        kept.append((b, fps))
    curve = ServiceCurve.from_points(kept, source=str(path))
    return ServiceCurve(curve.batch, curve.batch_ms, str(path), str(data.get("device", "cpu")),
                        str(data.get("device_name", "")), str(data.get("model") or ""),
                        str(data.get("version") or ""))  # fmt: skip


def check_curve(curve: ServiceCurve, model: str, version: str) -> str | None:
    """Refuse a curve measured on another model; a warning (returned) for another version of this one.

    The fleet's device side comes from the bundle's manifest (head times, frame sizes), its server side
    from the curve: a curve of an older version would price one version's frames at another's tail.
    """
    if curve.model and curve.model != model:
        raise ValueError(f"{curve.source} measured {curve.model}, not {model}: pass that model's "
                         "server_throughput.py JSON to --service")  # fmt: skip
    if curve.version and version and curve.version != version:
        return (f"{curve.source} measured {model} v{curve.version}; the bundled model is v{version}: "
                f"its server-side times are v{curve.version}'s (benchmarks/server_throughput.py --model {model} "
                "measures the bundled one)")  # fmt: skip
    return None
