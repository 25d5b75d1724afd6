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
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitserve.codecs import BatchKey, Decoder, codec_kind
from splitserve.edge_server.batcher import Batcher, Outcome
from splitserve.edge_server.config import BatchingConfig, model_batching
from splitserve.edge_server.tail import DeviceWorker, TailRunner
from splitserve.models.bundle import HEAD_FILE, MANIFEST, Bundle
from splitserve.models.zoo import BUNDLED, bundle_dirs, version_key

log = logging.getLogger("splitserve.server")


class UnknownModel(LookupError):
    """No such model / version here; the message lists what is served."""


class InvalidRoute(ValueError):
    """A frame asks for a codec or width its model does not serve; the message says what is served."""


@dataclass(frozen=True)
class Route:
    """Where one frame goes on a served model: its decoder, then the batcher of its tail."""

    key: BatchKey
    decoder: Decoder
    batcher: Batcher


@dataclass
class ServedModel:
    """One loaded bundle version: its tails (one per batch key) and their batchers."""

    bundle: Bundle
    batching: BatchingConfig
    runners: dict[BatchKey, TailRunner]
    batchers: dict[BatchKey, Batcher] = field(default_factory=dict)

    def route(self, codec: str, width: int) -> Route:
        """The decoder and batcher for a frame's codec and width, or InvalidRoute."""
        bundle = self.bundle
        if codec not in bundle.codecs:
            raise InvalidRoute(f"codec {codec!r} is not served for {bundle.name}; codecs: {', '.join(bundle.codecs)}")
        key = codec_kind(codec).batch_key(width)
        if key not in self.batchers:
            raise InvalidRoute(
                f"width {width} does not exist for {bundle.name}:{bundle.version} "
                f"(widths 0..{bundle.width_count - 1})"
            )
        return Route(key, bundle.decoder_for(codec, key.width), self.batchers[key])


def _load(path: Path, worker: DeviceWorker, batching: BatchingConfig) -> ServedModel:
    """Off the event loop: verify the bundle, build every tail and decoder, warm each tail up."""
    bundle = Bundle.load(path)
    if bundle.has_file(HEAD_FILE):
        bundle.encoder()  # the head goes to devices (GetHead): it too must load, as weights only
    runners: dict[BatchKey, TailRunner] = {}
    for codec in bundle.codecs:
        kind = codec_kind(codec)
        for width in range(bundle.width_count) if kind.has_widths else [0]:
            key = kind.batch_key(width)
            if key not in runners:
                runners[key] = TailRunner(bundle, codec, key, worker, batching.max_batch)
            decoder = bundle.decoder_for(codec, width)  # built here, off the event loop, not on the first frame
            decoder.decode_batch([], np.empty((0, *decoder.shape), dtype=kind.dtype))  # and compiled, where it is
    for runner in runners.values():
        worker.submit(runner.warm_up).result()
    return ServedModel(bundle, batching, runners)


class ModelRepository:
    def __init__(
        self, root: Path | None, worker: DeviceWorker, decode_pool: Executor | None, batching: BatchingConfig,
        overrides: dict[str, Any],
    ) -> None:  # fmt: skip
        self.root = root or BUNDLED
        self.worker = worker
        self.decode_pool = decode_pool
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
                    mtime = (path / MANIFEST).stat().st_mtime
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
                    name, version, served.bundle.width_count, ",".join(served.bundle.codecs),
                    served.bundle.sha256[:12], load_s,
                )  # fmt: skip
                if self.metrics is not None:
                    self.metrics.model_loaded(name, version, True)
                    widths = [key.label for key in served.runners]
                    self.metrics.model_served(name, version, widths)
                    self.metrics.model_served(name, version, ["invalid"], ("INVALID_FRAME",))
        return loaded

    def _batcher(self, runner: TailRunner, batching: BatchingConfig) -> Batcher:
        batcher = Batcher(runner, batching, self.decode_pool)
        if self.metrics is not None:
            labels = (runner.bundle.name, runner.bundle.version, runner.key.label)
            metrics = self.metrics

            def observe(outcomes: list[Outcome]) -> None:
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
