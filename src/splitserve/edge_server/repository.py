"""The model repository: ``<root>/<name>/<version>/`` bundles, served side by side.

Frames name a model and optionally a version (or the exact bundle sha256); the
newest version serves otherwise. ``scan()`` loads versions that appeared since
the last scan, so ``--poll-interval`` adds models without touching open
streams. A corrupt bundle is refused with one log line and the rest keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from splitserve.codecs import IMAGE_CODECS, Decoder
from splitserve.edge_server.batcher import Batcher
from splitserve.edge_server.config import BatchingConfig, model_batching
from splitserve.edge_server.runner import DeviceWorker, TailRunner, stage_key
from splitserve.models.bundle import HEAD_FILE, Bundle
from splitserve.models.zoo import BUNDLED, bundle_dirs, version_key

log = logging.getLogger("splitserve.server")


class UnknownModel(LookupError):
    """No such model / version here; the message lists what is served."""


@dataclass
class ServedModel:
    """One loaded bundle version: its tails (one per width / path) and their batchers."""

    bundle: Bundle
    batching: BatchingConfig
    runners: dict[str, TailRunner]
    batchers: dict[str, Batcher] = field(default_factory=dict)

    def batcher(self, codec: str, width: int) -> Batcher:
        return self.batchers[stage_key(codec, width)]

    def decoder(self, codec: str, width: int) -> Decoder:
        return self.bundle.decoder_for(codec, width)


def _load(path: Path, worker: DeviceWorker, batching: BatchingConfig) -> ServedModel:
    """Off the event loop: verify the bundle, build every tail on the device, warm each up."""
    bundle = Bundle.load(path)
    if bundle.has_file(HEAD_FILE):
        bundle.encoder()  # the head goes to devices (GetHead): it too must load, as weights only
    runners: dict[str, TailRunner] = {}
    for codec in bundle.codecs:
        if codec == "entropic":
            for w in range(bundle.student.widths):
                runners.setdefault(stage_key(codec, w), TailRunner(bundle, codec, w, worker, batching.max_batch))
        else:
            runners.setdefault(stage_key(codec, 0), TailRunner(bundle, codec, 0, worker, batching.max_batch))
    for codec in bundle.codecs:  # build decoders here, off the event loop, not on the first frame
        for w in range(bundle.student.widths if codec == "entropic" else 1):
            bundle.decoder_for(codec, w)
    for key, runner in runners.items():
        codec = "entropic" if key.startswith("w") else ("png" if key == "image" else "fp16")
        shape = bundle.payload_shape(codec, runner.width)
        dtype = torch.uint8 if codec in IMAGE_CODECS else torch.float32
        worker.submit(runner.warm_up, torch.zeros(shape, dtype=dtype)).result()
    return ServedModel(bundle, batching, runners)


class ModelRepository:
    def __init__(self, root: Path | None, worker: DeviceWorker, batching: BatchingConfig, overrides: dict[str, Any]):
        self.root = root or BUNDLED
        self.worker = worker
        self.batching = batching
        self.overrides = overrides
        self._models: dict[str, dict[str, ServedModel]] = {}
        self._refused: dict[Path, float] = {}
        self.metrics = None  # ServerMetrics, when on

    async def scan(self) -> list[str]:
        """Load every version not loaded yet; returns what was loaded ("name:version")."""
        loaded = []
        found = bundle_dirs(self.root)
        for name, versions in found.items():
            for version, path in sorted(versions.items(), key=lambda kv: version_key(kv[0])):
                if version in self._models.get(name, {}):
                    continue
                try:
                    mtime = (path / "manifest.json").stat().st_mtime
                except OSError:
                    continue  # removed while this scan ran
                if self._refused.get(path) == mtime:
                    continue
                try:
                    batching = model_batching(self.batching, path.parent, self.overrides)
                    t0 = time.perf_counter()
                    served = await asyncio.to_thread(_load, path, self.worker, batching)
                    load_s = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001 - any way a bundle fails to load refuses it alone
                    # A bundle is data from disk: torch.load(weights_only=True) refusing a pickled
                    # object raises UnpicklingError, a broken npz BadZipFile, a wrong state KeyError...
                    # Whatever it is, this version is refused and every other one keeps loading.
                    self._refused[path] = mtime
                    log.error("refusing model bundle %s: %s: %.300s", path, type(exc).__name__, exc)
                    if self.metrics is not None:
                        self.metrics.model_loaded(name, version, False)
                    continue
                served.batchers = {key: self._batcher(r, batching) for key, r in served.runners.items()}
                self._models.setdefault(name, {})[version] = served
                loaded.append(f"{name}:{version}")
                log.info(
                    "serving %s:%s (%s widths, codecs %s, sha256 %s; loaded and warmed up in %.2f s)",
                    name, version, served.bundle.student.widths, ",".join(served.bundle.codecs),
                    served.bundle.sha256[:12], load_s,
                )  # fmt: skip
                if self.metrics is not None:
                    self.metrics.model_loaded(name, version, True)
        return loaded

    def _batcher(self, runner: TailRunner, batching: BatchingConfig) -> Batcher:
        batcher = Batcher(runner, batching)
        if self.metrics is not None:
            name, version, key = runner.key
            labels = (name, version, key[1:] if key.startswith("w") else key)
            metrics = self.metrics

            def observe(outcomes: list) -> None:  # type: ignore[type-arg]
                done = [o for o in outcomes if o.batch_size]
                if done:
                    metrics.batch_done(*labels, done[0].batch_size, done[0].tail_ms / 1e3)

            batcher.on_batch = observe
        return batcher

    def resolve(self, name: str, version: str = "", sha256: str = "") -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            raise UnknownModel(f"unknown model {name!r}; this server has: {', '.join(sorted(self._models)) or 'none'}")
        if version:
            served = versions.get(version)
            if served is None:
                raise UnknownModel(f"model {name!r} has no version {version!r}; versions: {sorted(versions)}")
        else:
            served = versions[max(versions, key=version_key)]
        if sha256 and served.bundle.sha256 != sha256:
            match = [s for s in versions.values() if s.bundle.sha256 == sha256]
            if not match:
                raise UnknownModel(
                    f"model {name!r}: no bundle with sha256 {sha256[:16]}...; the device's bundle differs from the "
                    "server's (fetch the head again with GetHead)"
                )
            served = match[0]
        return served

    def models(self, all_versions: bool = False) -> list[ServedModel]:
        out = []
        for _, versions in sorted(self._models.items()):
            ordered = sorted(versions, key=version_key)
            out.extend(versions[v] for v in (ordered if all_versions else ordered[-1:]))
        return out

    def batchers(self) -> list[Batcher]:
        return [b for versions in self._models.values() for m in versions.values() for b in m.batchers.values()]

    @property
    def empty(self) -> bool:
        return not self._models
