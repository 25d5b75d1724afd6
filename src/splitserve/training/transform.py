"""``[transform]``: add transform widths (``models.transform``) above a bundle's student widths.

The basis and each width's coding tables are fitted on training views (no labels), so a
bundle can gain them right after its student is trained, or later from a bundle that
already ships (``[transform] base``) without training anything again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitserve.models.bundle import HEAD_FILE, TAIL_FILE, Bundle, write_bundle
from splitserve.models.transform import KIND, STATE_PREFIX, FeatureTransform
from splitserve.training.config import ConfigError, TransformSection
from splitserve.training.data import TrainData
from splitserve.training.evaluate import split_features

log = logging.getLogger("splitserve.train")


def fitting_frames(data: TrainData, n: int, seed: int) -> np.ndarray:
    """``n`` uint8 training views, as training draws them (the test frames are never among them)."""
    gen = torch.Generator().manual_seed(seed)
    views: list[np.ndarray] = []
    for x, _ in data.train.batches(min(n, 256), gen):
        views.append(x.cpu().numpy())
        if sum(len(v) for v in views) >= n:
            break
    frames = np.concatenate(views)[:n]
    if len(frames) < n:
        log.warning("[transform] frames = %d, but training has %d views: fitted on those", n, len(frames))
    return frames


def add_transform_widths(bundle: Bundle, cfg: TransformSection, frames: np.ndarray, dest: Path,
                         version: str, **manifest_updates: Any) -> Bundle:  # fmt: skip
    """Write ``bundle`` with transform widths above its own (at ``dest``, as ``version``); returns it.

    ``manifest_updates``: other manifest keys the new bundle gets instead of the base's (name, training...).

    The student's weights and tables are copied unchanged, so its widths code exactly as before;
    transform widths the bundle already has are replaced.
    """
    if bundle.student.prefix != bundle.teacher_spec["split"]:
        raise ConfigError(
            "[transform] codes the teacher's split features: the student's prefix must be the split layer "
            f"({bundle.student.prefix!r} against {bundle.teacher_spec['split']!r})"
        )
    log.info("[transform] fitting the basis and %d widths' tables on %d views", len(cfg.steps), len(frames))
    features = split_features(bundle, frames)
    transform = FeatureTransform(features.shape[1], cfg.steps).fit(features)
    if bundle.weights == "float16":  # what the bundle will hold; the tables must fit those values
        with torch.no_grad():
            for t in (transform.mean, transform.basis):
                t.copy_(t.half())
    first = bundle.student.widths  # a base with transform widths already gets them fitted anew
    tables = [bundle.entropy_tables(w) for w in range(first)]
    tables += [transform.tables(features, i) for i in range(transform.widths)]
    extra = {f"{STATE_PREFIX}{k}": v for k, v in transform.state_dict().items() if k != "steps"}
    states = {
        name: {**{k: v for k, v in bundle._state(name).items() if not k.startswith(STATE_PREFIX)}, **extra}
        for name in (HEAD_FILE, TAIL_FILE)
    }
    latent = list(bundle.feature_shape)
    widths = [dict(w) for w in bundle.widths[:first]] + [
        {"index": first + i, "kind": KIND, "step": float(step), "fraction": 1.0, "channels": latent[0],
         "latent_shape": latent}
        for i, step in enumerate(cfg.steps)
    ]  # fmt: skip
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("format", "files", "weights", "onnx",
                                                                      "evaluation")}  # fmt: skip
    manifest.update(manifest_updates, version=version, widths=widths)
    manifest["transform"] = {"frames": int(len(frames)), "base": f"{bundle.name}:{bundle.version}"}
    return write_bundle(dest, manifest, states, tables, weights=bundle.weights)
