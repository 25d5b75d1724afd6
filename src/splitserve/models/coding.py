"""A verified bundle as far as coding payloads goes: identity, shapes, widths and codecs. No torch.

A device that runs its head in onnxruntime uses this as it is: it never builds a network
from the bundle's weights, but it must encode exactly what a torch device encodes, with
the entropy tables the server decodes with. ``models.bundle.Bundle`` extends it with the
networks of the device and server stages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from splitserve.codecs import Decoder, Encoder, PayloadKind, codec_kind, get_decoder, get_encoder
from splitserve.codecs.entropic import EntropyTables
from splitserve.models.manifest import ENTROPY_FILE, Manifest


class CodingBundle:
    """A loaded (and by default verified) bundle's identity and payload codecs. Parts are cached.

    ``manifest`` says what the bundle is; the manifest's identity (name, version, widths, ...)
    is exposed here too because every caller of a bundle needs it.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.path = manifest.path
        self.sha256 = manifest.sha256
        self.input = manifest.input
        self.student = manifest.student
        self.labels = manifest.labels
        self.teacher_spec = manifest.teacher
        self.feature_shape = manifest.feature_shape
        self.weights = manifest.weights  # the precision the student's weights are stored in
        self._lock = threading.RLock()
        self._cache: dict[Any, Any] = {}

    @classmethod
    def load(cls, path: str | Path, verify: bool | str = True):  # type: ignore[no-untyped-def]
        """``verify``: True checks every file; "device" only what a device holds (see DEVICE_FILES)."""
        manifest = Manifest.read(path)
        if verify == "device":
            manifest.verify(manifest.device_files())
        elif verify:
            manifest.verify()
        return cls(manifest)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def widths(self) -> list[dict[str, Any]]:
        return self.manifest.widths

    @property
    def codecs(self) -> list[str]:
        return self.manifest.codecs

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.input.image_shape

    def has_file(self, name: str) -> bool:
        return self.manifest.has_file(name)

    def device_files(self) -> list[str]:
        return self.manifest.device_files()

    @property
    def width_count(self) -> int:
        return self.manifest.width_count

    def latent_shape(self, width: int) -> tuple[int, int, int]:
        return self.manifest.latent_shape(width)

    def check_width(self, width: int) -> None:
        self.manifest.check_width(width)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}:{self.version} at {self.path})"

    def _cached(self, key: Any, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    # -- the payload codecs, per codec and width ---------------------------
    def entropy_tables(self, width: int) -> EntropyTables:
        self.check_width(width)

        def build() -> list[EntropyTables]:
            with np.load(self.path / ENTROPY_FILE, allow_pickle=False) as arrays:
                return [EntropyTables.from_arrays(arrays, f"w{i}_") for i in range(self.manifest.width_count)]

        return self._cached("tables", build)[width]

    def _served_kind(self, codec: str) -> PayloadKind:
        if codec not in self.codecs:
            raise ValueError(f"{self.name}: codec {codec!r} is not served; codecs: {', '.join(self.codecs)}")
        return codec_kind(codec)

    def payload_shape(self, codec: str, width: int = 0) -> tuple[int, ...]:
        """The shape a frame of this codec (and width) declares."""
        return self._served_kind(codec).payload_shape(self, width)

    def encoder_for(self, codec: str, width: int = 0, **params: Any) -> Encoder:
        if codec_kind(codec) is PayloadKind.LATENT:
            return self._cached(
                ("enc", width),
                lambda: get_encoder(codec, tables=self.entropy_tables(width), shape=self.latent_shape(width)),
            )
        return get_encoder(codec, **params)

    def decoder_for(self, codec: str, width: int = 0) -> Decoder:
        shape = self.payload_shape(codec, width)
        if codec_kind(codec) is PayloadKind.LATENT:
            return self._cached(
                ("dec", width), lambda: get_decoder(codec, tables=self.entropy_tables(width), shape=shape)
            )
        return self._cached(("dec", codec), lambda: get_decoder(codec, shape=shape))
