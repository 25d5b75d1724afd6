"""Which torch device a ``--device`` / ``device =`` setting names: the one rule server and training share."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a clear error for CUDA
    on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r}: not a device name (auto, cpu, cuda, cuda:N): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine; use cpu")
    return device
