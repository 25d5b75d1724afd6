"""Split-model building blocks (layers, bottleneck, backbones), bundles and the bundled zoo."""

from splitserve.models.bundle import Bundle, BundleError
from splitserve.models.zoo import DEFAULT_MODEL, find_bundle, list_models, load

__all__ = ["Bundle", "BundleError", "DEFAULT_MODEL", "find_bundle", "list_models", "load"]
