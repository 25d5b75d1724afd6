"""Measure a bundle the way it runs: real encoded payloads, real decoding, the shipped tail.

Per width: accuracy (top-1 against labels), agreement (top-1 against the
unsplit teacher), bytes per frame of the actual payloads, and the head's
compute time for one frame on this CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from splitserve.codecs import Decoder, Encoder, codec_kind
from splitserve.models.bundle import Bundle, DevicePath
from splitserve.timing import median_ms


@dataclass
class WidthResult:
    width: int
    fraction: float
    channels: int
    accuracy: float | None
    agreement: float
    bytes_mean: float
    bytes_p95: float
    head_ms: float
    predictions: np.ndarray


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.inference_mode()
def predict_local(bundle: Bundle, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Top-1 of the whole, unsplit teacher (local-only inference)."""
    model = bundle.whole_model()
    out = [model(torch.from_numpy(images[s])).argmax(1) for s in _batches(len(images), batch_size)]
    return torch.cat(out).numpy()


def through_codec(
    images: np.ndarray, to_tensors: Callable[[torch.Tensor], torch.Tensor], encoder: Encoder, decoder: Decoder,
    shape: tuple[int, ...], server: torch.nn.Module, batch_size: int, bar: tqdm | None = None,
    unchanged_top1: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int]]:  # fmt: skip
    """(top-1, payload sizes) of frames sent through real payload bytes, as device and server would.

    ``unchanged_top1``: the server's top-1 on the frames themselves; a batch that decodes to
    exactly its input (a lossless codec) takes it instead of running the server again.
    """
    sizes, preds = [], []
    for s in _batches(len(images), batch_size):
        decoded = []
        tensors = to_tensors(torch.from_numpy(images[s]))
        for t in tensors:
            payload = encoder.encode(t)
            sizes.append(len(payload))
            decoded.append(decoder.decode(payload, shape))
        batch = torch.stack(decoded)
        if unchanged_top1 is not None and torch.equal(batch, tensors):
            preds.append(torch.from_numpy(unchanged_top1[s]))
        else:
            preds.append(server(batch).argmax(1))
        if bar is not None:
            bar.update(s.stop - s.start)
    return torch.cat(preds).numpy(), sizes


def _prefixed(bundle: Bundle, images: np.ndarray, batch_size: int) -> np.ndarray | None:
    """The output of the encoder's frozen prefix (the teacher's first layers) for every frame, or None.

    Every width starts with the same prefix: run it once, not once per width.
    """
    encoder = bundle.encoder()
    if encoder.prefix is None:
        return None
    pre = bundle.preprocess()
    out = [encoder.prefix(pre(torch.from_numpy(images[s]))) for s in _batches(len(images), batch_size)]
    return torch.cat(out).numpy()


@torch.inference_mode()
def evaluate_width(
    bundle: Bundle,
    width: int,
    images: np.ndarray,
    labels: np.ndarray | None,
    teacher_top1: np.ndarray,
    batch_size: int = 256,
    progress: bool = True,
    prefixed: np.ndarray | None = None,
) -> WidthResult:
    """``prefixed``: the frames already through the encoder's prefix (see ``_prefixed``)."""
    device = DevicePath(bundle, "entropic", width)
    encoder = bundle.encoder()
    bar = tqdm(total=len(images), desc=f"width {width}", unit="frame", disable=not progress, leave=False)
    top1, sizes = through_codec(
        images if prefixed is None else prefixed,
        device.tensors if prefixed is None else (lambda xp: encoder(xp, width, prefixed=True)),
        device.encoder, bundle.decoder_for("entropic", width), device.shape,
        bundle.server_stage("entropic", width), batch_size, bar,
    )  # fmt: skip
    bar.close()
    one = torch.from_numpy(images[:1])
    info = bundle.widths[width]
    return WidthResult(
        width=width,
        fraction=float(info["fraction"]),
        channels=int(info["channels"]),
        accuracy=float((top1 == labels).mean()) if labels is not None else None,
        agreement=float((top1 == teacher_top1).mean()),
        bytes_mean=float(np.mean(sizes)),
        bytes_p95=float(np.percentile(sizes, 95)),
        head_ms=median_ms(lambda: device.tensors(one), repeat=10, warmup=2),
        predictions=top1,
    )


@torch.inference_mode()
def evaluate_bundle(
    bundle: Bundle,
    images: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int = 256,
    progress: bool = True,
    teacher_top1: np.ndarray | None = None,
) -> tuple[dict, list[WidthResult]]:
    """(teacher summary, per-width results) on the given frames. Labels may be None."""
    if teacher_top1 is None:
        teacher_top1 = predict_local(bundle, images, batch_size)
    one = torch.from_numpy(images[:1])
    local = bundle.whole_model()
    teacher = {
        "accuracy": float((teacher_top1 == labels).mean()) if labels is not None else None,
        "device_ms": median_ms(lambda: local(one), repeat=10, warmup=2),
        "frames": int(len(images)),
    }
    prefixed = _prefixed(bundle, images, batch_size)
    results = [
        evaluate_width(bundle, w, images, labels, teacher_top1, batch_size, progress, prefixed)
        for w in range(bundle.width_count)
    ]
    return teacher, results


# Enough points to draw each codec's curve from ~1 KB to ~20 KB on 224 x 224 frames.
JPEG_QUALITIES = (5, 10, 15, 25, 35, 50, 75, 95)
WEBP_QUALITIES = (0, 5, 10, 25, 50, 75)


@dataclass
class BaselineResult:
    name: str
    accuracy: float | None
    agreement: float
    bytes_mean: float
    bytes_p95: float


def baseline_specs() -> list[tuple[str, str, dict]]:
    """(name, codec, encoder params) of every baseline the split is compared against."""
    specs = [("png", "png", {})]
    specs += [(f"jpeg-q{q}", "jpeg", {"quality": q}) for q in JPEG_QUALITIES]
    specs += [(f"webp-q{q}", "webp", {"quality": q}) for q in WEBP_QUALITIES]
    specs += [("fp16", "fp16", {}), ("int8-zstd", "int8", {"compressor": "zstd"})]
    return specs


def channels_last(bundle: Bundle) -> None:
    """Run the bundle's teacher channels-last in this process: ~1.5x faster on CPU (depthwise convolutions).

    Only the teacher changes (the baselines' server and local inference); the split's
    encoder runs exactly as the device runs it, so its payloads stay the device's bytes.
    """
    bundle.teacher().to(memory_format=torch.channels_last)


@torch.inference_mode()
def split_features(bundle: Bundle, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The teacher's features at the split for every frame: what the raw-feature codecs send."""
    pre, head = bundle.preprocess(), bundle.teacher_split()[0]
    return torch.cat([head(pre(torch.from_numpy(images[s]))) for s in _batches(len(images), batch_size)]).numpy()


@torch.inference_mode()
def evaluate_baseline(
    bundle: Bundle, name: str, codec: str, params: dict, images: np.ndarray, labels: np.ndarray | None,
    teacher_top1: np.ndarray, batch_size: int = 256, progress: bool = False, features: np.ndarray | None = None,
) -> BaselineResult:  # fmt: skip
    """Full offload (image codecs) or raw split features (fp16 / int8), through real payloads.

    ``features``: ``split_features`` of the frames, computed once for every feature codec.
    """
    bar = tqdm(total=len(images), desc=name, unit="frame", disable=not progress, leave=False)
    device = DevicePath(bundle, codec, **params)
    precomputed = features is not None and codec_kind(codec).has_device_stage
    lossless_input = not codec_kind(codec).has_device_stage  # the server sees the frames themselves
    top1, sizes = through_codec(
        features if precomputed else images,
        (lambda xs: xs) if precomputed else device.tensors,
        device.encoder, bundle.decoder_for(codec), device.shape,
        bundle.server_stage(codec), batch_size, bar, teacher_top1 if lossless_input else None,
    )  # fmt: skip
    bar.close()
    return BaselineResult(
        name=name,
        accuracy=float((top1 == labels).mean()) if labels is not None else None,
        agreement=float((top1 == teacher_top1).mean()),
        bytes_mean=float(np.mean(sizes)),
        bytes_p95=float(np.percentile(sizes, 95)),
    )
