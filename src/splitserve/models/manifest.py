"""A bundle's manifest, its verification and its codecs: everything about a bundle that needs no torch.

A device running the head in onnxruntime reads the same bundle as one running it in
torch, and checks the same sha256; it never builds a network from the weights. This
is that part of ``Bundle``; ``models.bundle.Bundle`` extends it with the torch
assembly of the device and server stages.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitserve.codecs import FEATURE_CODECS, IMAGE_CODECS, Decoder, Encoder, get_decoder, get_encoder
from splitserve.codecs.entropic import EntropyTables

MANIFEST = "manifest.json"
FORMAT = 1
HEAD_FILE = "head.pt"
ENTROPY_FILE = "entropy.npz"
TAIL_FILE = "tail.pt"
TEACHER_FILE = "teacher.pt"
# What a device needs to run every strategy it can choose (GetHead streams these, and the
# ONNX files below when the bundle lists them).
DEVICE_FILES = (MANIFEST, HEAD_FILE, ENTROPY_FILE, TEACHER_FILE)
ONNX_TEACHER_FILE = "teacher.onnx"
# The exported heads (one graph per width) and the whole teacher, for devices without torch.
ONNX_FILE = re.compile(r"head-w\d{1,3}\.onnx|teacher\.onnx")
_REQUIRED_KEYS = ("format", "name", "version", "input", "labels", "teacher", "student", "widths", "files")


def onnx_head_file(width: int) -> str:
    return f"head-w{width}.onnx"


def is_device_file(name: str) -> bool:
    """Whether a device may hold (and GetHead may send) a file of this name."""
    return name in DEVICE_FILES or ONNX_FILE.fullmatch(name) is not None


class BundleError(ValueError):
    """A bundle is missing, malformed or tampered with; the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """What the head eats: (C, H, W) float images normalized with mean / std per channel."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The uint8 (H, W, C) camera frame this spec is fed from."""
        c, h, w = self.shape
        return (h, w, c)


def read_manifest(path: Path) -> tuple[dict[str, Any], str]:
    """(manifest, sha256 of manifest.json) of the bundle directory ``path``; BundleError when unusable."""
    mf = path / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; a bundle directory is <name>/<version>/ with a manifest")
    raw = mf.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mf}: expected a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{mf}: missing keys {missing}")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{mf}: bundle format {manifest['format']!r}; this splitserve reads format {FORMAT}")
    return manifest, hashlib.sha256(raw).hexdigest()


class BundleManifest:
    """A loaded (and by default verified) bundle, as far as a device without torch can use it.

    It knows the bundle's identity, shapes, widths, labels, files and codecs; ``Bundle``
    adds the networks.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], sha256: str) -> None:
        self.path = path
        self.manifest = manifest
        self.sha256 = sha256
        self._lock = threading.RLock()
        self._cache: dict[Any, Any] = {}
        try:
            inp = manifest["input"]
            self.input = InputSpec(
                shape=tuple(int(s) for s in inp["shape"]),  # type: ignore[arg-type]
                mean=tuple(float(m) for m in inp["mean"]),
                std=tuple(float(s) for s in inp["std"]),
            )
            self.width_count = len(manifest["student"]["fractions"])
            self.labels: list[str] = [str(x) for x in manifest["labels"]]
            self.teacher_spec: dict[str, Any] = dict(manifest["teacher"])
            self.feature_shape = tuple(int(s) for s in self.teacher_spec["feature_shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path / MANIFEST}: malformed ({type(exc).__name__}: {exc})") from None
        if len(self.input.shape) != 3:
            raise BundleError(f"{path / MANIFEST}: input shape must be (C, H, W)")

    # -- loading -----------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, verify: bool | str = True):  # type: ignore[no-untyped-def]
        """``verify``: True checks every file; "device" only what a device holds (see DEVICE_FILES)."""
        path = Path(path)
        manifest, sha = read_manifest(path)
        bundle = cls(path, manifest, sha)
        if verify == "device":
            bundle.verify(bundle.device_files())
        elif verify:
            bundle.verify()
        return bundle

    def verify(self, files: Sequence[str] | None = None) -> None:
        """Check each listed file's sha256 (all of them unless ``files`` narrows it)."""
        listed = self.manifest["files"]
        for name in files if files is not None else listed:
            if name == MANIFEST:
                continue
            info = listed.get(name)
            if info is None:
                raise BundleError(f"{self.path}: {name} is not listed in the manifest")
            fp = self.path / name
            if not fp.is_file():
                raise BundleError(f"{self.path}: {name} is missing (the bundle is incomplete)")
            digest = sha256_file(fp)
            if digest != info["sha256"]:
                raise BundleError(
                    f"{fp}: sha256 {digest[:16]}... does not match the manifest's {info['sha256'][:16]}... "
                    "(the file was modified or corrupted; re-export or re-download the bundle)"
                )

    # -- identity ----------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def widths(self) -> list[dict[str, Any]]:
        return list(self.manifest["widths"])

    @property
    def codecs(self) -> list[str]:
        return list(self.manifest.get("codecs", ["entropic"]))

    def has_file(self, name: str) -> bool:
        return name in self.manifest["files"]

    def device_files(self) -> list[str]:
        listed = [f for f in DEVICE_FILES if f == MANIFEST or self.has_file(f)]
        return listed + sorted(f for f in self.manifest["files"] if ONNX_FILE.fullmatch(f))

    def onnx_head(self, width: int) -> Path:
        """The exported head of one width (uint8 (1, H, W, C) frame -> features (1, C, h, w))."""
        self.check_width(width)
        name = onnx_head_file(width)
        if not self.has_file(name):
            raise BundleError(
                f"{self.name}:{self.version} carries no ONNX head for width {width}; add them with "
                f"`splitserve export --model {self.name} --format onnx --into-bundle`, or use the torch runtime"
            )
        return self.path / name

    def onnx_teacher(self) -> Path | None:
        """The exported whole teacher (uint8 frame -> logits) for local inference, when the bundle has it."""
        return self.path / ONNX_TEACHER_FILE if self.has_file(ONNX_TEACHER_FILE) else None

    def has_local_model(self) -> bool:
        """Whether a device can run the whole model: teacher weights in the bundle or in a package."""
        return self.has_file(TEACHER_FILE) or str(self.teacher_spec.get("weights", "")).startswith("package:")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}:{self.version} at {self.path})"

    # -- parts -------------------------------------------------------------
    def _cached(self, key: Any, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def entropy_tables(self, width: int) -> EntropyTables:
        self.check_width(width)

        def build() -> list[EntropyTables]:
            with np.load(self.path / ENTROPY_FILE, allow_pickle=False) as arrays:
                return [EntropyTables.from_arrays(arrays, f"w{i}_") for i in range(self.width_count)]

        return self._cached("tables", build)[width]

    def latent_shape(self, width: int) -> tuple[int, int, int]:
        self.check_width(width)
        return tuple(int(s) for s in self.widths[width]["latent_shape"])  # type: ignore[return-value]

    def check_width(self, width: int) -> None:
        if not 0 <= width < self.width_count:
            raise ValueError(f"{self.name}: width {width} does not exist (widths 0..{self.width_count - 1})")

    def payload_shape(self, codec: str, width: int = 0) -> tuple[int, ...]:
        """The shape a frame of this codec (and width) declares."""
        if codec == "entropic":
            return self.latent_shape(width)
        if codec in FEATURE_CODECS:
            return self.feature_shape
        if codec in IMAGE_CODECS:
            return self.input.image_shape
        raise ValueError(f"{self.name}: codec {codec!r} is not served; codecs: {', '.join(self.codecs)}")

    def encoder_for(self, codec: str, width: int = 0, **params: Any) -> Encoder:
        if codec == "entropic":
            return self._cached(
                ("enc", width),
                lambda: get_encoder("entropic", tables=self.entropy_tables(width), shape=self.latent_shape(width)),
            )
        return get_encoder(codec, **params)

    def decoder_for(self, codec: str, width: int = 0) -> Decoder:
        if codec not in self.codecs:
            raise ValueError(f"{self.name}: codec {codec!r} is not served; codecs: {', '.join(self.codecs)}")
        shape = self.payload_shape(codec, width)
        if codec == "entropic":
            return self._cached(
                ("dec", width), lambda: get_decoder("entropic", tables=self.entropy_tables(width), shape=shape)
            )
        return self._cached(("dec", codec), lambda: get_decoder(codec, shape=shape))
