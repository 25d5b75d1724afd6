"""A bundle's manifest: what the bundle is, and proof that its files are the ones it names.

``manifest.json`` lists the model's identity (name, version), its input spec,
labels, teacher and student configuration, widths and codecs, and the sha256 of
every file of the bundle. Reading and verifying it needs no network code and no
torch model: ``models.bundle`` assembles the device and server stages from a
verified manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitserve.models.student import StudentConfig

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
ONNX_PREFIX_FILE = "prefix.onnx"
# The exported heads (one graph per width, after the shared prefix graph where the head starts
# with the teacher's first layers) and the whole teacher, for devices without torch.
ONNX_FILE = re.compile(r"head-w\d{1,3}\.onnx|prefix\.onnx|teacher\.onnx")
# The precision the student's weights (head.pt, tail.pt) are stored in: float16 halves the files
# a device downloads and installs; the loaded networks compute in float32 either way.
WEIGHT_PRECISIONS = ("float32", "float16")
_REQUIRED_KEYS = ("format", "name", "version", "input", "labels", "teacher", "student", "widths", "files")


def onnx_head_file(width: int) -> str:
    return f"head-w{width}.onnx"


def is_device_file(name: str) -> bool:
    """Whether a device may hold (and GetHead may send) a file of this name."""
    return name in DEVICE_FILES or ONNX_FILE.fullmatch(name) is not None


class BundleError(ValueError):
    """A bundle is missing, malformed or tampered with; the message names the file and the fix."""


def file_sha256(path: Path) -> str:
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


class Manifest(Mapping[str, Any]):
    """A parsed ``manifest.json`` (read-only, as a mapping of its JSON keys) and its bundle directory.

    Parsing checks the keys and types every reader relies on, so a malformed manifest fails here,
    with the file's name, and not later inside a network constructor.
    """

    def __init__(self, path: Path, data: dict[str, Any], sha256: str) -> None:
        self.path = path
        self.sha256 = sha256  # of manifest.json's bytes: names the bundle exactly
        self._data = data
        try:
            inp = data["input"]
            self.input = InputSpec(
                shape=tuple(int(s) for s in inp["shape"]),  # type: ignore[arg-type]
                mean=tuple(float(m) for m in inp["mean"]),
                std=tuple(float(s) for s in inp["std"]),
            )
            self.student = StudentConfig.from_dict(data["student"])
            self.labels: list[str] = [str(x) for x in data["labels"]]
            self.teacher: dict[str, Any] = dict(data["teacher"])
            self.feature_shape = tuple(int(s) for s in self.teacher["feature_shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path / MANIFEST}: malformed ({type(exc).__name__}: {exc})") from None
        if len(self.input.shape) != 3:
            raise BundleError(f"{path / MANIFEST}: input shape must be (C, H, W)")
        kinds = [w.get("kind", "student") if isinstance(w, dict) else None for w in data["widths"]]
        if kinds != ["student"] * self.student.widths + ["transform"] * (len(kinds) - self.student.widths):
            raise BundleError(
                f"{path / MANIFEST}: widths must be the student's {self.student.widths}, then transform widths; "
                f"got kinds {kinds}"
            )
        self.weights = str(data.get("weights", "float32"))
        if self.weights not in WEIGHT_PRECISIONS:
            raise BundleError(f"{path / MANIFEST}: weights {self.weights!r}; expected one of {WEIGHT_PRECISIONS}")

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        path = Path(path)
        mf = path / MANIFEST
        if not mf.is_file():
            raise BundleError(f"{path}: no {MANIFEST}; a bundle directory is <name>/<version>/ with a manifest")
        raw = mf.read_bytes()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{mf}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{mf}: expected a JSON object")
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            raise BundleError(f"{mf}: missing keys {missing}")
        if data["format"] != FORMAT:
            raise BundleError(f"{mf}: bundle format {data['format']!r}; this splitserve reads format {FORMAT}")
        return cls(path, data, hashlib.sha256(raw).hexdigest())

    # -- the mapping: the manifest's JSON, read-only ------------------------
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # -- identity ----------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._data["name"])

    @property
    def version(self) -> str:
        return str(self._data["version"])

    @property
    def widths(self) -> list[dict[str, Any]]:
        return list(self._data["widths"])

    @property
    def codecs(self) -> list[str]:
        return list(self._data.get("codecs", ["entropic"]))

    @property
    def width_count(self) -> int:
        """Every width: the student's, then any transform widths (``models.transform``) above them."""
        return len(self._data["widths"])

    @property
    def transform_steps(self) -> list[float]:
        """The step of each transform width, in width order (empty: the student's widths only)."""
        return [float(w["step"]) for w in self._data["widths"] if w.get("kind") == "transform"]

    def latent_shape(self, width: int) -> tuple[int, int, int]:
        self.check_width(width)
        return tuple(int(s) for s in self.widths[width]["latent_shape"])  # type: ignore[return-value]

    def check_width(self, width: int) -> None:
        if not 0 <= width < self.width_count:
            raise ValueError(f"{self.name}: width {width} does not exist (widths 0..{self.width_count - 1})")

    # -- files -------------------------------------------------------------
    def has_file(self, name: str) -> bool:
        return name in self._data["files"]

    def device_files(self) -> list[str]:
        listed = [f for f in DEVICE_FILES if f == MANIFEST or self.has_file(f)]
        return listed + sorted(f for f in self._data["files"] if ONNX_FILE.fullmatch(f))

    def onnx_head(self, width: int) -> Path:
        """The exported head of one width: features (1, C, h, w) from the uint8 (1, H, W, C) frame, or
        from the output of ``onnx_prefix()`` where the bundle has one."""
        self.check_width(width)
        name = onnx_head_file(width)
        if not self.has_file(name):
            raise BundleError(
                f"{self.name}:{self.version} carries no ONNX head for width {width}; add them with "
                f"`splitserve export --model {self.name} --format onnx --into-bundle`, or use the torch runtime"
            )
        return self.path / name

    def onnx_prefix(self) -> Path | None:
        """The exported teacher's first layers (uint8 frame -> the prefix's features) that every width's
        head starts from, when the heads were exported that way (bundles exported before carry the
        prefix in each head)."""
        return self.path / ONNX_PREFIX_FILE if self.has_file(ONNX_PREFIX_FILE) else None

    def onnx_teacher(self) -> Path | None:
        """The exported whole teacher (uint8 frame -> logits) for local inference, when the bundle has it."""
        return self.path / ONNX_TEACHER_FILE if self.has_file(ONNX_TEACHER_FILE) else None

    def has_local_model(self) -> bool:
        """Whether a device can run the whole model: teacher weights in the bundle or in a package."""
        return self.has_file(TEACHER_FILE) or str(self.teacher.get("weights", "")).startswith("package:")

    def verify(self, files: Sequence[str] | None = None) -> None:
        """Check each listed file's sha256 (all of them unless ``files`` narrows it)."""
        listed = self._data["files"]
        for name in files if files is not None else listed:
            if name == MANIFEST:
                continue
            info = listed.get(name)
            if info is None:
                raise BundleError(f"{self.path}: {name} is not listed in the manifest")
            fp = self.path / name
            if not fp.is_file():
                raise BundleError(f"{self.path}: {name} is missing (the bundle is incomplete)")
            digest = file_sha256(fp)
            if digest != info["sha256"]:
                raise BundleError(
                    f"{fp}: sha256 {digest[:16]}... does not match the manifest's {info['sha256'][:16]}... "
                    "(the file was modified or corrupted; re-export or re-download the bundle)"
                )
