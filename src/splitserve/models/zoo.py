"""The bundled models: names -> bundles shipped inside the package.

Bundles live in ``splitserve/models/bundles/<name>/<version>/``; the same layout
is what ``edge-server --models DIR`` serves from, so a model repository is just
a directory of bundles.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from splitserve.models.manifest import MANIFEST, BundleError

if TYPE_CHECKING:
    from splitserve.models.bundle import Bundle

BUNDLED = Path(__file__).parent / "bundles"
DEFAULT_MODEL = "fmnist-split"


def version_key(version: str) -> tuple:
    """Natural order: "2" < "10", "1.2" < "1.10"."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-_]", version))


def bundle_dirs(root: Path) -> dict[str, dict[str, Path]]:
    """name -> version -> directory, for every ``<name>/<version>/manifest.json`` under root."""
    found: dict[str, dict[str, Path]] = {}
    if not root.is_dir():
        return found
    for mf in sorted(root.glob(f"*/*/{MANIFEST}")):
        found.setdefault(mf.parent.parent.name, {})[mf.parent.name] = mf.parent
    return found


def newest(versions: dict[str, Path]) -> str:
    return max(versions, key=version_key)


def find_bundle(name: str, version: str | None = None, root: Path | None = None) -> Path:
    """The directory of a bundle, by name (and version; newest when omitted)."""
    roots = [root] if root is not None else [BUNDLED]
    for r in roots:
        versions = bundle_dirs(r).get(name)
        if not versions:
            continue
        if version:
            if version not in versions:
                raise BundleError(f"model {name!r} has no version {version!r}; versions: {sorted(versions)}")
            return versions[version]
        return versions[newest(versions)]
    known = sorted({n for r in roots for n in bundle_dirs(r)})
    raise BundleError(f"unknown model {name!r}; available: {', '.join(known) or 'none'}")


def one_model_repository(model: str, dest: Path) -> Path:
    """``dest`` as a model repository (``<name>/<version>/``) holding ``model``'s bundles, linked: an
    edge-server given ``--models dest`` loads that model alone. ``model`` is a bundled name or a bundle's path."""
    bundle_dir = Path(model) if (Path(model) / MANIFEST).is_file() else find_bundle(model)
    name = json.loads((bundle_dir / MANIFEST).read_text())["name"]
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / name).exists():
        (dest / name).symlink_to(bundle_dir.resolve().parent, target_is_directory=True)
    return dest


def load(name: str, version: str | None = None, root: Path | None = None) -> Bundle:
    """Load and verify a bundle (a path to a bundle directory works too)."""
    from splitserve.models.bundle import Bundle  # needs torch; the rest of the zoo does not

    p = Path(name)
    if (p / MANIFEST).is_file():
        return Bundle.load(p)
    return Bundle.load(find_bundle(name, version, root))


def list_models(root: Path | None = None) -> list[Bundle]:
    """The newest version of every model under root (the bundled models by default)."""
    from splitserve.models.bundle import Bundle  # needs torch; the rest of the zoo does not

    return [Bundle.load(v[newest(v)], verify=False) for v in bundle_dirs(root or BUNDLED).values()]
