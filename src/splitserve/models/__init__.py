"""Split-model building blocks (layers, bottleneck, backbones), bundles and the bundled zoo."""

from typing import Any

from splitserve.models.manifest import BundleError, BundleManifest
from splitserve.models.zoo import DEFAULT_MODEL, find_bundle, list_models, load


def __getattr__(name: str) -> Any:
    # Bundle builds networks, so it needs torch: imported when asked for, so that a device
    # without torch can use the manifest, the zoo and the codecs.
    if name == "Bundle":
        from splitserve.models.bundle import Bundle

        return Bundle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Bundle", "BundleError", "BundleManifest", "DEFAULT_MODEL", "find_bundle", "list_models", "load"]
