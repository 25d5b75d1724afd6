"""Split-model bundles: save, load and verify.

A bundle is a directory ``<name>/<version>/`` holding ``manifest.json`` and the
files it lists with their sha256: the head (slimmable encoder), the entropy
tables, the tail (decoder + the teacher's layers after the split) and, when the
teacher is small, its weights for local-only inference and the raw-feature and
image baselines. Device and server must hold the same bundle; the sha256 of
``manifest.json`` names it exactly.

Both ends build the network halves from a bundle the same way:

    device: image -> preprocess -> device_stage(codec, width) -> codec.encode
    server: codec.decode -> server_stage(codec, width) -> logits
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitserve.codecs import FEATURE_CODECS, IMAGE_CODECS, Decoder, Encoder, get_decoder, get_encoder
from splitserve.codecs.entropic import EntropyTables
from splitserve.models.backbones import build_teacher, load_state_dict, resolve_weights, sha256_file, split_model
from splitserve.models.bottleneck import BottleneckDecoder, FixedWidthEncoder, SlimmableEncoder, StudentConfig
from splitserve.models.layers import freeze_gdn

MANIFEST = "manifest.json"
FORMAT = 1
HEAD_FILE = "head.pt"
ENTROPY_FILE = "entropy.npz"
TAIL_FILE = "tail.pt"
TEACHER_FILE = "teacher.pt"
# What a device needs to run every strategy it can choose (GetHead streams these).
DEVICE_FILES = (MANIFEST, HEAD_FILE, ENTROPY_FILE, TEACHER_FILE)
_REQUIRED_KEYS = ("format", "name", "version", "input", "labels", "teacher", "student", "widths", "files")


class BundleError(ValueError):
    """A bundle is missing, malformed or tampered with; the message names the file and the fix."""


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


class Preprocess(nn.Module):
    """uint8 (B, H, W, C) frames -> normalized float (B, C, H, W)."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std).view(1, -1, 1, 1) * 255.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
        return (x - self.mean) * self.inv_std


class _Chain(nn.Module):
    def __init__(self, *stages: nn.Module) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class _DecodeTail(nn.Module):
    """Server side of the entropic path at one width: y_hat -> split features -> logits."""

    def __init__(self, decoder: BottleneckDecoder, tail: nn.Module, width: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.tail = tail
        self.width = width

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.tail(self.decoder(y_hat, self.width))


def _read_manifest(path: Path) -> tuple[dict[str, Any], str]:
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


class Bundle:
    """A loaded (and by default verified) split-model bundle. Parts are built lazily and cached."""

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
            self.student = StudentConfig.from_dict(manifest["student"])
            self.labels: list[str] = [str(x) for x in manifest["labels"]]
            self.teacher_spec: dict[str, Any] = dict(manifest["teacher"])
            self.feature_shape = tuple(int(s) for s in self.teacher_spec["feature_shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path / MANIFEST}: malformed ({type(exc).__name__}: {exc})") from None
        if len(self.input.shape) != 3:
            raise BundleError(f"{path / MANIFEST}: input shape must be (C, H, W)")

    # -- loading -----------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, verify: bool | str = True) -> Bundle:
        """``verify``: True checks every file; "device" only what a device holds (see DEVICE_FILES)."""
        path = Path(path)
        manifest, sha = _read_manifest(path)
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
        return [f for f in DEVICE_FILES if f == MANIFEST or self.has_file(f)]

    def __repr__(self) -> str:
        return f"Bundle({self.name}:{self.version} at {self.path})"

    # -- parts -------------------------------------------------------------
    def _cached(self, key: Any, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                part = build()
                if isinstance(part, nn.Module):
                    part.requires_grad_(False)  # bundles serve inference only
                self._cache[key] = part
            return self._cache[key]

    def _state(self, name: str) -> dict[str, torch.Tensor]:
        if not self.has_file(name):
            raise BundleError(f"{self.path}: this bundle has no {name}")
        return load_state_dict(self.path / name)

    def encoder(self) -> SlimmableEncoder:
        def build() -> SlimmableEncoder:
            prefix = None
            if self.student.prefix:  # the teacher's first layers: architecture here, weights in head.pt
                model = build_teacher(self.teacher_spec["family"], self.teacher_spec.get("args"))
                prefix = split_model(model, self.student.prefix)[0]
            enc = SlimmableEncoder(self.student, prefix)
            enc.load_state_dict(self._state(HEAD_FILE))
            return freeze_gdn(enc).eval()

        return self._cached("encoder", build)

    def entropy_tables(self, width: int) -> EntropyTables:
        self.check_width(width)

        def build() -> list[EntropyTables]:
            with np.load(self.path / ENTROPY_FILE, allow_pickle=False) as arrays:
                return [EntropyTables.from_arrays(arrays, f"w{i}_") for i in range(self.student.widths)]

        return self._cached("tables", build)[width]

    def latent_shape(self, width: int) -> tuple[int, int, int]:
        self.check_width(width)
        return tuple(int(s) for s in self.widths[width]["latent_shape"])  # type: ignore[return-value]

    def check_width(self, width: int) -> None:
        if not 0 <= width < self.student.widths:
            raise ValueError(f"{self.name}: width {width} does not exist (widths 0..{self.student.widths - 1})")

    def teacher(self) -> nn.Module:
        def build() -> nn.Module:
            spec = self.teacher_spec
            model = build_teacher(spec["family"], spec.get("args"))
            weights = resolve_weights(spec["weights"], self.path)
            expected = spec.get("weights_sha256")
            if expected and weights.parent != self.path and sha256_file(weights) != expected:
                raise BundleError(f"teacher weights {weights} do not match the sha256 the bundle was built with")
            model.load_state_dict(load_state_dict(weights))
            return model.eval()

        return self._cached("teacher", build)

    def teacher_split(self) -> tuple[nn.Module, nn.Module]:
        return self._cached("teacher_split", lambda: split_model(self.teacher(), self.teacher_spec["split"]))

    def decoder_and_tail(self) -> tuple[BottleneckDecoder, nn.Module]:
        def build() -> tuple[BottleneckDecoder, nn.Module]:
            state = self._state(TAIL_FILE)
            decoder = BottleneckDecoder(self.student)
            decoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
            tail_state = {k[5:]: v for k, v in state.items() if k.startswith("tail.")}
            if tail_state:  # fine-tuned in stage 2: its own copy of the teacher's layers
                model = build_teacher(self.teacher_spec["family"], self.teacher_spec.get("args"))
                _, tail = split_model(model, self.teacher_spec["split"])
                tail.load_state_dict(tail_state)
            else:  # the teacher's own layers, untouched
                _, tail = self.teacher_split()
            return decoder.eval(), tail.eval()

        return self._cached("decoder_and_tail", build)

    def preprocess(self) -> Preprocess:
        return self._cached("preprocess", lambda: Preprocess(self.input))

    # -- the two halves, per codec and width -------------------------------
    def payload_shape(self, codec: str, width: int = 0) -> tuple[int, ...]:
        """The shape a frame of this codec (and width) declares."""
        if codec == "entropic":
            return self.latent_shape(width)
        if codec in FEATURE_CODECS:
            return self.feature_shape
        if codec in IMAGE_CODECS:
            return self.input.image_shape
        raise ValueError(f"{self.name}: codec {codec!r} is not served; codecs: {', '.join(self.codecs)}")

    def device_stage(self, codec: str, width: int = 0) -> nn.Module:
        """Device side: preprocessed input (B, C, H, W) -> the tensor the codec encodes.

        Image codecs encode the raw frame, so they have no device stage.
        """
        if codec == "entropic":
            return self._cached(("device", width), lambda: FixedWidthEncoder(self.encoder(), width).eval())
        if codec in FEATURE_CODECS:
            return self.teacher_split()[0]
        raise ValueError(f"{self.name}: codec {codec!r} has no device-side network")

    def server_stage(self, codec: str, width: int = 0) -> nn.Module:
        """Server side: a batch of decoded tensors -> logits."""
        if codec == "entropic":
            self.check_width(width)

            def build() -> nn.Module:
                decoder, tail = self.decoder_and_tail()
                return _DecodeTail(decoder, tail, width).eval()

            return self._cached(("server", width), build)
        if codec in FEATURE_CODECS:
            return self.teacher_split()[1]
        if codec in IMAGE_CODECS:
            return self._cached("server_image", lambda: _Chain(self.preprocess(), self.teacher()).eval())
        raise ValueError(f"{self.name}: codec {codec!r} is not served; codecs: {', '.join(self.codecs)}")

    def local_model(self) -> nn.Module:
        """Local-only inference on the device: uint8 frames -> logits with the whole teacher."""
        return self._cached("local", lambda: _Chain(self.preprocess(), self.teacher()).eval())

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


def write_bundle(
    out_dir: Path,
    manifest: dict[str, Any],
    states: dict[str, dict[str, torch.Tensor]],
    tables: Sequence[EntropyTables],
) -> Bundle:
    """Write weights, tables and a manifest listing their sha256; returns the verified bundle."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, out_dir / name)
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(tables):
        arrays.update(t.to_arrays(f"w{i}_"))
    np.savez_compressed(out_dir / ENTROPY_FILE, **arrays)
    for name in [*states, ENTROPY_FILE]:
        fp = out_dir / name
        files[name] = {"sha256": sha256_file(fp), "size": fp.stat().st_size}
    manifest = {"format": FORMAT, **manifest, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle.load(out_dir)
