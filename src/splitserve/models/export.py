"""Export a head (one width) for devices that do not run PyTorch: ONNX or TorchScript.

The exported graph takes the camera frame as it comes, uint8 (1, H, W, C), and
returns the bottleneck features y (1, C_w, h, w); the entropy coding stays in the
SDK (its integer tables are written beside the graph as JSON). Files:

    head-w<W>.onnx | head-w<W>.pt     the network
    head-w<W>.json                    shapes, normalization, codec and the entropy tables
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from splitserve.models.bottleneck import FixedWidthEncoder
from splitserve.models.bundle import Bundle

FORMATS = ("onnx", "torchscript")


class _FrameToFeatures(nn.Module):
    def __init__(self, bundle: Bundle, width: int) -> None:
        super().__init__()
        self.pre = bundle.preprocess()
        self.encoder = FixedWidthEncoder(bundle.encoder(), width)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.pre(frame))


def head_module(bundle: Bundle, width: int) -> nn.Module:
    bundle.check_width(width)
    return _FrameToFeatures(bundle, width).eval()


def export_head(bundle: Bundle, width: int, fmt: str, out_dir: Path) -> list[Path]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    module = head_module(bundle, width)
    example = torch.zeros(1, *bundle.input.image_shape, dtype=torch.uint8)
    stem = out_dir / f"head-w{width}"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant here
        if fmt == "onnx":
            graph = stem.with_suffix(".onnx")
            torch.onnx.export(
                module, (example,), str(graph), dynamo=False, input_names=["frame"], output_names=["features"],
                opset_version=17,
            )  # fmt: skip
        else:
            graph = stem.with_suffix(".pt")
            torch.jit.save(torch.jit.trace(module, (example,)), str(graph))
    tables = bundle.entropy_tables(width)
    meta = {
        "model": bundle.name, "version": bundle.version, "bundle_sha256": bundle.sha256, "width": width,
        "input": {"shape": list(bundle.input.image_shape), "dtype": "uint8", "layout": "NHWC"},
        "output": {"shape": [1, *bundle.latent_shape(width)], "dtype": "float32"},
        "codec": "entropic",
        "entropy": {
            "medians": tables.medians.tolist(), "offsets": tables.offsets.tolist(),
            "freqs": [f.tolist() for f in tables.freqs],
        },
    }  # fmt: skip
    meta_path = stem.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return [graph, meta_path]
