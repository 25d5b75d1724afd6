"""Getting the head onto the device: the local bundle, or GetHead from the server into a cache.

Every downloaded file is checked against the sha256 in the manifest (and the
chunk stream's own), and the manifest against the bundle sha256 the server
reported, before anything is loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from splitserve.models.bundle import MANIFEST, Bundle, BundleError
from splitserve.models.zoo import find_bundle
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

log = logging.getLogger("splitserve.device")


def cache_dir() -> Path:
    base = os.environ.get("SPLITSERVE_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splitserve" / "models"


async def fetch_head(stub: pb_grpc.EdgeInferenceStub, name: str, version: str = "", metadata=()) -> Bundle:
    """Download a model's device files with GetHead (skipped when the cache already holds them)."""
    manifest = await stub.GetModel(pb.GetModelRequest(name=name, version=version), metadata=metadata)
    dest = cache_dir() / manifest.name / manifest.version
    if (dest / MANIFEST).is_file():
        try:
            cached = Bundle.load(dest, verify="device")
            if cached.sha256 == manifest.bundle_sha256:
                return cached
        except BundleError:
            pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        hashes: dict[str, hashlib._Hash] = {}
        async for chunk in stub.GetHead(
            pb.GetHeadRequest(name=manifest.name, version=manifest.version), metadata=metadata
        ):
            if "/" in chunk.path or chunk.path.startswith("."):
                raise BundleError(f"GetHead sent a file with an unsafe name: {chunk.path!r}")
            h = hashes.setdefault(chunk.path, hashlib.sha256())
            with open(tmp / chunk.path, "ab") as f:
                f.write(chunk.data)
            h.update(chunk.data)
            if chunk.last and h.hexdigest() != chunk.sha256:
                raise BundleError(f"GetHead: {chunk.path} arrived corrupted (sha256 mismatch)")
        if MANIFEST not in hashes or hashes[MANIFEST].hexdigest() != manifest.bundle_sha256:
            raise BundleError("GetHead: the manifest does not match the server's bundle sha256")
        Bundle.load(tmp, verify="device")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.replace(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fetched %s:%s head from the server into %s", manifest.name, manifest.version, dest)
    return Bundle.load(dest, verify="device")


def local_bundle(model: str, version: str = "") -> Bundle | None:
    """The bundle for ``model`` on this device (a bundled model or a bundle directory), if any."""
    p = Path(model)
    if (p / MANIFEST).is_file():
        return Bundle.load(p)
    try:
        return Bundle.load(find_bundle(model, version or None))
    except BundleError:
        pass
    cached = cache_dir() / model
    if version and (cached / version / MANIFEST).is_file():
        return Bundle.load(cached / version, verify="device")
    return None
