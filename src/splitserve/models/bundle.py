"""Split-model bundles: the device and server stages, assembled from a verified manifest.

A bundle is a directory ``<name>/<version>/`` holding ``manifest.json`` and the
files it lists with their sha256 (``models.manifest`` reads and verifies them):
the head (slimmable encoder), the entropy tables, the tail (decoder + the
teacher's layers after the split) and, when the teacher is small, its weights
for local-only inference and the raw-feature and image baselines. Device and
server must hold the same bundle; the sha256 of ``manifest.json`` names it.

Both ends build their network halves from a bundle the same way, by the codec's
payload kind (``codecs.codec_kind``):

    device: image -> preprocess -> device_stage(codec, width) -> encoder_for(codec, width)
    server: decoder_for(codec, width) -> server_stage(codec, width) -> logits
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitserve.codecs import PayloadKind, codec_kind
from splitserve.codecs.entropic import EntropyTables
from splitserve.models.backbones import build_teacher, load_state_dict, resolve_weights, split_model
from splitserve.models.bottleneck import BottleneckDecoder, FixedWidthEncoder, SlimmableEncoder
from splitserve.models.coding import CodingBundle
from splitserve.models.layers import frozen_gdn_state
from splitserve.models.manifest import (
    DEVICE_FILES,
    ENTROPY_FILE,
    FORMAT,
    HEAD_FILE,
    MANIFEST,
    TAIL_FILE,
    TEACHER_FILE,
    WEIGHT_PRECISIONS,
    BundleError,
    InputSpec,
    Manifest,
    file_sha256,
)
from splitserve.models.transform import STATE_PREFIX as TRANSFORM_PREFIX
from splitserve.models.transform import FeatureTransform, WidthsDecoder, WidthsEncoder, transform_state

__all__ = [
    "DEVICE_FILES", "ENTROPY_FILE", "FORMAT", "HEAD_FILE", "MANIFEST", "TAIL_FILE", "TEACHER_FILE",
    "Bundle", "BundleError", "DevicePath", "InputSpec", "Manifest", "Preprocess", "write_bundle",
]  # fmt: skip


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


class Bundle(CodingBundle):
    """A loaded (and by default verified) split-model bundle: its codecs, and its networks built
    lazily and cached."""

    def _cached(self, key: Any, build: Callable[[], Any]) -> Any:
        def frozen() -> Any:
            part = build()
            if isinstance(part, nn.Module):
                part.requires_grad_(False)  # bundles serve inference only
            return part

        return super()._cached(key, frozen)

    def _state(self, name: str) -> dict[str, torch.Tensor]:
        if not self.has_file(name):
            raise BundleError(f"{self.path}: this bundle has no {name}")
        return load_state_dict(self.path / name)

    def encoder(self) -> SlimmableEncoder | WidthsEncoder:
        """The head over every width (``WidthsEncoder`` where the bundle has transform widths)."""

        def build() -> SlimmableEncoder | WidthsEncoder:
            state = self._state(HEAD_FILE)
            transform = self._transform(state)
            state = {k: v for k, v in state.items() if not k.startswith(TRANSFORM_PREFIX)}
            prefix = None
            if self.student.prefix:  # the teacher's first layers, frozen in training
                model = build_teacher(self.teacher_spec["family"], self.teacher_spec.get("args"))
                prefix = split_model(model, self.student.prefix)[0]
                if not any(k.startswith("prefix.") for k in state):  # head.pt leaves them to the teacher's weights
                    own = split_model(self.teacher(), self.student.prefix)[0]
                    state.update({f"prefix.{k}": v for k, v in own.state_dict().items()})
            enc = SlimmableEncoder(self.student, prefix, frozen=True)
            enc.load_state_dict(frozen_gdn_state(state))
            enc.eval()
            if self.weights == "float16":
                # GDN's frozen weights are computed from the stored ones; rounded too, every
                # float the head multiplies by is a float16 value, and the ONNX heads store
                # exactly these (export.py), so both runtimes compute with the same weights
                _round_to_half(enc, skip="prefix.")
            return enc if transform is None else WidthsEncoder(enc, transform).eval()

        return self._cached("encoder", build)

    def _transform(self, state: dict[str, torch.Tensor]) -> FeatureTransform | None:
        """The transform widths' basis, from head.pt or tail.pt (both carry it), or None."""
        steps = self.manifest.transform_steps
        if not steps:
            return None
        transform = FeatureTransform(self.feature_shape[0], steps)
        saved = transform_state(state)
        saved["steps"] = transform.steps  # the manifest's, which the tables were built for
        transform.load_state_dict({k: v.float() for k, v in saved.items()})
        return transform.eval()

    def teacher(self) -> nn.Module:
        def build() -> nn.Module:
            spec = self.teacher_spec
            model = build_teacher(spec["family"], spec.get("args"))
            weights = resolve_weights(spec["weights"], self.path)
            expected = spec.get("weights_sha256")
            if expected and weights.parent != self.path and file_sha256(weights) != expected:
                raise BundleError(f"teacher weights {weights} do not match the sha256 the bundle was built with")
            model.load_state_dict(load_state_dict(weights))
            return model.eval()

        return self._cached("teacher", build)

    def teacher_split(self) -> tuple[nn.Module, nn.Module]:
        return self._cached("teacher_split", lambda: split_model(self.teacher(), self.teacher_spec["split"]))

    def decoder_and_tail(self) -> tuple[BottleneckDecoder | WidthsDecoder, nn.Module]:
        def build() -> tuple[BottleneckDecoder | WidthsDecoder, nn.Module]:
            state = self._state(TAIL_FILE)
            decoder: BottleneckDecoder | WidthsDecoder = BottleneckDecoder(self.student, frozen=True)
            decoder.load_state_dict(frozen_gdn_state({k[8:]: v for k, v in state.items() if k.startswith("decoder.")}))
            transform = self._transform(state)
            if transform is not None:
                decoder = WidthsDecoder(decoder, transform, self.student.widths)
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
    def device_stage(self, codec: str, width: int = 0) -> nn.Module:
        """Device side: preprocessed input (B, C, H, W) -> the tensor the codec encodes.

        Image codecs encode the raw frame, so they have no device stage.
        """
        kind = codec_kind(codec)
        if kind is PayloadKind.LATENT:
            self.check_width(width)
            return self._cached(("device", width), lambda: FixedWidthEncoder(self.encoder(), width).eval())
        if kind is PayloadKind.FEATURES:
            return self.teacher_split()[0]
        raise ValueError(f"{self.name}: codec {codec!r} has no device-side network")

    def server_stage(self, codec: str, width: int = 0) -> nn.Module:
        """Server side: a batch of decoded tensors -> logits."""
        kind = self._served_kind(codec)
        if kind is PayloadKind.LATENT:
            self.check_width(width)

            def build() -> nn.Module:
                decoder, tail = self.decoder_and_tail()
                return _DecodeTail(decoder, tail, width).eval()

            return self._cached(("server", width), build)
        if kind is PayloadKind.FEATURES:
            return self.teacher_split()[1]
        return self.whole_model()

    def whole_model(self) -> nn.Module:
        """The unsplit teacher: uint8 frames -> logits (local-only inference; the image path's tail)."""
        return self._cached("whole", lambda: _Chain(self.preprocess(), self.teacher()).eval())


class DevicePath:
    """The device half for one codec and width: uint8 frames (B, H, W, C) -> one payload per frame.

    The one frame -> payload path: the device client, the evaluation, the simulator's cost
    measurements and the tests all encode frames through it, so they send the same bytes.
    """

    def __init__(self, bundle: Bundle, codec: str, width: int = 0, quality: int | None = None, **params: Any) -> None:
        kind = codec_kind(codec)
        if quality is not None and kind.has_quality:
            params["quality"] = quality
        self.codec = codec
        self.width = width if kind.has_widths else 0
        self.shape = bundle.payload_shape(codec, self.width)
        self.encoder = bundle.encoder_for(codec, self.width, **params)
        self._pre = bundle.preprocess()
        self._stage = bundle.device_stage(codec, self.width) if kind.has_device_stage else None

    @torch.inference_mode()
    def tensors(self, frames: torch.Tensor) -> torch.Tensor:
        """What the codec encodes, per frame: the device stage's output, or the frames themselves."""
        return frames if self._stage is None else self._stage(self._pre(frames))

    def __call__(self, frames: torch.Tensor) -> list[bytes]:
        return [self.encoder.encode(t) for t in self.tensors(frames)]


def _round_to_half(module: nn.Module, skip: str = "") -> None:
    """Round every float weight and buffer (but those under ``skip``) to its nearest float16 value."""
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point() and not (skip and name.startswith(skip)):
                t.copy_(t.half())


def _stored(t: torch.Tensor, weights: str) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    return t.half() if weights == "float16" and t.is_floating_point() else t


def write_bundle(
    out_dir: Path,
    manifest: dict[str, Any],
    states: dict[str, dict[str, torch.Tensor]],
    tables: Sequence[EntropyTables],
    weights: str = "float32",
) -> Bundle:
    """Write weights, tables and a manifest listing their sha256; returns the verified bundle.

    ``weights="float16"`` stores the student's weights (head.pt, tail.pt) at half precision; the
    teacher's stay as they are (it is also the local-only model, and the prefix's source).
    """
    if weights not in WEIGHT_PRECISIONS:
        raise ValueError(f"weights {weights!r}; expected one of {WEIGHT_PRECISIONS}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        precision = "float32" if name == TEACHER_FILE else weights
        torch.save({k: _stored(v, precision) for k, v in state.items()}, out_dir / name)
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(tables):
        arrays.update(t.to_arrays(f"w{i}_"))
    np.savez_compressed(out_dir / ENTROPY_FILE, **arrays)
    for name in [*states, ENTROPY_FILE]:
        fp = out_dir / name
        files[name] = {"sha256": file_sha256(fp), "size": fp.stat().st_size}
    manifest = {"format": FORMAT, **manifest, "weights": weights, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle.load(out_dir)
