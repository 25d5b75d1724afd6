"""Parsing the units people type: 2mbps, 500kbps, 20ms, 0.1s, 1%, 64kb."""

from __future__ import annotations

import re

_RATE = {"bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_TIME = {"ms": 1.0, "s": 1000.0, "us": 1e-3}
_SIZE = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1_000_000, "mib": 1 << 20}
_NUM = r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)"


def _parse(text: str, units: dict[str, float], default: str, what: str) -> float:
    m = re.fullmatch(_NUM + r"\s*([a-z/]*)", text.strip().lower())
    if not m:
        raise ValueError(f"cannot read {what} {text!r}; e.g. 2{default}")
    unit = m.group(2) or default
    if unit.endswith("/s"):  # Mbit/s, kb/s
        unit = unit[:-2].replace("bit", "b") + "ps"
    if unit not in units:
        raise ValueError(f"unknown {what} unit {m.group(2)!r} in {text!r}; use one of {', '.join(units)}")
    return float(m.group(1)) * units[unit]


def parse_rate(text: str) -> float:
    """Bits per second: '2mbps', '500kbps', '2e6' (bps)."""
    value = _parse(text, _RATE, "bps", "bandwidth")
    if value <= 0:
        raise ValueError(f"bandwidth must be > 0, got {text!r}")
    return value


def parse_time_ms(text: str) -> float:
    """Milliseconds: '20ms', '0.1s', '20' (ms)."""
    return _parse(text, _TIME, "ms", "duration")


def parse_fraction(text: str) -> float:
    """'1%' or '0.01'."""
    t = text.strip()
    value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    if not 0 <= value < 1:
        raise ValueError(f"loss must be within [0, 100%), got {text!r}")
    return value


def parse_size(text: str) -> int:
    """Bytes: '64kb', '1mib', '1500' (bytes)."""
    return int(_parse(text, _SIZE, "b", "size"))


def parse_rate_range(text: str) -> tuple[float, float]:
    """'0.1mbps..50mbps'."""
    if ".." not in text:
        raise ValueError(f"a bandwidth range looks like 0.1mbps..50mbps, got {text!r}")
    lo, hi = (parse_rate(p) for p in text.split("..", 1))
    if lo >= hi:
        raise ValueError(f"empty bandwidth range {text!r}")
    return lo, hi


def format_rate(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:g} Mbit/s"
    if bps >= 1e3:
        return f"{bps / 1e3:g} kbit/s"
    return f"{bps:g} bit/s"
