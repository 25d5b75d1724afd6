"""Getting the head onto the device: the local bundle, or GetHead from the server into a cache.

Every downloaded file is checked against the sha256 in the manifest (and the
chunk stream's own), and the manifest against the bundle sha256 the server
reported, before anything is loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import grpc

from splitserve.device_client.errors import ClientError
from splitserve.models.coding import CodingBundle
from splitserve.models.manifest import MANIFEST, BundleError, is_device_file
from splitserve.models.zoo import find_bundle
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

log = logging.getLogger("splitserve.device")


# Model names and versions become directory names in the cache: one path component each, no
# "..", no separators, nothing hidden. Anything else from the wire is refused, not cleaned up.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def cache_dir() -> Path:
    base = os.environ.get("SPLITSERVE_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splitserve" / "models"


def is_safe_name(value: str) -> bool:
    """Whether ``value`` is one plain path component: safe as a directory or file name anywhere."""
    return bool(SAFE_NAME.fullmatch(value)) and ".." not in value


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe model name / version (one plain path component); BundleError otherwise."""
    if not is_safe_name(value):
        raise BundleError(
            f"{what} {value[:80]!r} is not a plain name (letters, digits, '.', '_', '+', '-'; no '..'); refused"
        )
    return value


def cache_path(name: str, version: str) -> Path:
    """Where ``name:version`` lives in the cache; always inside it."""
    root = cache_dir().resolve()
    dest = (root / check_name(name, "model name") / check_name(version, "model version")).resolve()
    if not dest.is_relative_to(root):  # a symlink inside the cache pointing out of it
        raise BundleError(f"{dest} is outside the model cache {root}; refused")
    return dest


async def fetch_device_files(
    stub: pb_grpc.EdgeInferenceStub, name: str, version: str = "", metadata=()
) -> CodingBundle:
    """Download a model's device files (head, entropy tables, exported ONNX heads and, when shipped,
    the teacher for local inference) with GetHead; skipped when the cache already holds them.

    The server's answer is checked before it touches the disk: the model it names must be the one
    asked for, and its name and version must be plain names, so every path stays inside the cache.
    """
    manifest = await stub.GetModel(pb.GetModelRequest(name=name, version=version), metadata=metadata)
    if manifest.name != name or (version and manifest.version != version):
        raise BundleError(
            f"asked the server for {name}:{version or 'newest'}, it answered {manifest.name[:80]!r}:"
            f"{manifest.version[:80]!r}; refused"
        )
    dest = cache_path(manifest.name, manifest.version)
    if (dest / MANIFEST).is_file():
        try:
            cached = CodingBundle.load(dest, verify="device")
            if cached.sha256 == manifest.bundle_sha256:
                return cached
            log.info("cached %s:%s differs from the server's bundle; downloading it again", name, manifest.version)
        except BundleError as exc:
            log.warning("cached %s is unusable (%s); downloading it again", dest, exc)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        hashes: dict[str, hashlib._Hash] = {}
        async for chunk in stub.GetHead(
            pb.GetHeadRequest(name=manifest.name, version=manifest.version), metadata=metadata
        ):
            if not is_device_file(chunk.path):
                raise BundleError(f"GetHead sent a file a device does not hold: {chunk.path[:80]!r}; refused")
            h = hashes.setdefault(chunk.path, hashlib.sha256())
            with open(tmp / chunk.path, "ab") as f:
                f.write(chunk.data)
            h.update(chunk.data)
            if chunk.last and h.hexdigest() != chunk.sha256:
                raise BundleError(f"GetHead: {chunk.path} arrived corrupted (sha256 mismatch)")
        if MANIFEST not in hashes or hashes[MANIFEST].hexdigest() != manifest.bundle_sha256:
            raise BundleError("GetHead: the manifest does not match the server's bundle sha256")
        CodingBundle.load(tmp, verify="device")
        install(tmp, dest, manifest.bundle_sha256)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fetched %s:%s head from the server into %s", manifest.name, manifest.version, dest)
    return CodingBundle.load(dest, verify="device")


def install(download: Path, dest: Path, sha256: str) -> None:
    """Move a verified download into the cache at ``dest``. Several device processes on one machine
    may fetch the same bundle at once: a copy already there with the same sha256 stays (a process may
    be reading it) and the download goes; a stale or broken one is moved aside first, never deleted in
    place, because a directory cannot be renamed over a full one."""
    for _ in range(5):
        try:
            download.replace(dest)
            return
        except OSError:
            if not dest.exists():
                raise
        try:
            if CodingBundle.load(dest, verify="device").sha256 == sha256:
                shutil.rmtree(download, ignore_errors=True)
                return
        except BundleError:
            pass
        stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=dest.parent)) / "bundle"
        try:
            dest.rename(stale)
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(stale.parent, ignore_errors=True)
    raise BundleError(f"could not put the downloaded bundle at {dest}: it keeps changing under another process")


def local_bundle(model: str, version: str = "") -> CodingBundle | None:
    """The bundle for ``model`` on this device (a bundled model or a bundle directory), if any."""
    p = Path(model)
    if (p / MANIFEST).is_file():
        return CodingBundle.load(p)
    try:
        bundled = find_bundle(model, version or None)
    except BundleError:
        bundled = None  # not a bundled model: look in the cache
    if bundled is not None:
        return CodingBundle.load(bundled)  # a bundled model that fails verification says so; it is not "not found"
    if version and SAFE_NAME.fullmatch(model) and SAFE_NAME.fullmatch(version):
        cached = cache_path(model, version)
        if (cached / MANIFEST).is_file():
            return CodingBundle.load(cached, verify="device")
    return None


async def device_bundle(stub: pb_grpc.EdgeInferenceStub, model: str, version: str, fetch: bool,
                        metadata: tuple) -> CodingBundle:  # fmt: skip
    """The bundle the device runs: installed here, or (``fetch``, or none installed) downloaded from the server.

    Raises ``ClientError`` saying what to check; a damaged local copy is never fallen back on silently.
    """
    try:
        bundle = None if fetch else local_bundle(model, version)
    except BundleError as exc:
        raise ClientError(f"the bundle of {model!r} on this device is unusable: {exc}") from None
    if bundle is not None:
        return bundle
    try:
        return await fetch_device_files(stub, model, version, metadata)
    except grpc.aio.AioRpcError as exc:
        raise ClientError(f"cannot fetch the head of {model!r}: {exc.details()}") from None
    except BundleError as exc:  # what the server sent is unsafe or corrupt: nothing was used
        raise ClientError(f"cannot fetch the head of {model!r}: {exc}") from None
