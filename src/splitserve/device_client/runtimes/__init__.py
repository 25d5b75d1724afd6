"""Head runtimes, by name: the registry.

    runtime = make_runtime("onnx", bundle, threads=2)
    features = runtime.features(frame, "entropic", width)   # what the codec encodes

``torch`` runs the bundle's own networks; ``onnx`` runs the heads exported into the
bundle with onnxruntime, so a device needs neither torch nor compressai. ``auto``
takes torch where it is installed (the reference), onnx otherwise. Each runtime is
imported only when chosen: importing the SDK never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util

from splitserve.device_client.runtimes.base import HeadRuntime, RuntimeUnavailable
from splitserve.models.coding import CodingBundle

RUNTIMES = ("torch", "onnx")
CHOICES = ("auto", *RUNTIMES)
# the Python packages each runtime needs, and the extra that installs them
_NEEDS = {"torch": (("torch", "compressai"), "server"), "onnx": (("onnxruntime",), "device")}


def installed(runtime: str) -> bool:
    """Whether this runtime's packages are installed (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in _NEEDS[runtime][0])


def resolve(runtime: str) -> str:
    """A runtime name: ``auto`` becomes torch when it is installed, else onnx."""
    if runtime == "auto":
        return "torch" if installed("torch") else "onnx"
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown head runtime {runtime!r}; one of {', '.join(CHOICES)}")
    return runtime


def make_runtime(runtime: str, bundle: CodingBundle, threads: int | None = None) -> HeadRuntime:
    """The head runtime ``runtime`` (torch | onnx | auto) for a loaded bundle.

    RuntimeUnavailable when its packages are missing (the message names the extra to install).
    """
    name = resolve(runtime)
    modules, extra = _NEEDS[name]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        other = "onnx" if name == "torch" else "torch"
        raise RuntimeUnavailable(
            f"the {name} head runtime needs {', '.join(missing)}: pip install 'splitserve[{extra}]', "
            f"or choose the {other} runtime"
        )
    module = importlib.import_module(f"splitserve.device_client.runtimes.{name}")
    return module.RUNTIME(bundle, threads)


__all__ = ["CHOICES", "RUNTIMES", "HeadRuntime", "RuntimeUnavailable", "installed", "make_runtime", "resolve"]
