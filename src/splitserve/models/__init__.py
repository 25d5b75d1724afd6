"""Split-model building blocks (layers, bottleneck, backbones), bundles and the bundled zoo.

``Bundle`` (models.bundle) builds networks and needs torch; it is imported from its module,
so that a device without torch can use the manifest, the coding bundle, the zoo and the codecs.
"""

from splitserve.models.coding import CodingBundle
from splitserve.models.manifest import BundleError, Manifest
from splitserve.models.zoo import DEFAULT_MODEL, find_bundle, list_models, load

__all__ = ["BundleError", "CodingBundle", "DEFAULT_MODEL", "Manifest", "find_bundle", "list_models", "load"]
