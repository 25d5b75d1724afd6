"""Export a head (one width) for devices that do not run PyTorch: ONNX or TorchScript.

The exported graph takes the camera frame as it comes, uint8 (1, H, W, C), and
returns the bottleneck features y (1, C_w, h, w); the entropy coding stays in the
SDK (its integer tables are written beside the graph as JSON). Files:

    head-w<W>.onnx | head-w<W>.pt     the network
    head-w<W>.json                    shapes, normalization, codec and the entropy tables

``export_into_bundle`` writes the ONNX heads of every width into the bundle itself
(and the whole teacher, when the bundle carries its weights), listed with their
sha256 in the manifest, for the SDK's onnx runtime (``device-client --runtime onnx``).
Where the head starts with the teacher's first layers (``[student] prefix``), those
go in once, as ``prefix.onnx`` (frame -> the prefix's features), and each width's
graph starts from its output: every width runs the same frozen layers, and four
copies of them made most of the bundle. A bundle whose weights are stored at half
precision (manifest ``weights: float16``) gets heads that store theirs the same way:
each float16 weight behind a Cast to float32, folded once when onnxruntime loads the
graph, so the head computes in float32 with exactly the weights the torch runtime uses.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitserve.models.bottleneck import FixedWidthEncoder
from splitserve.models.bundle import Bundle
from splitserve.models.manifest import (
    MANIFEST,
    ONNX_FILE,
    ONNX_PREFIX_FILE,
    ONNX_TEACHER_FILE,
    TEACHER_FILE,
    Manifest,
    file_sha256,
    onnx_head_file,
)

FORMATS = ("onnx", "torchscript")


class _FrameToFeatures(nn.Module):
    def __init__(self, bundle: Bundle, width: int) -> None:
        super().__init__()
        self.pre = bundle.preprocess()
        self.encoder = FixedWidthEncoder(bundle.encoder(), width)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.pre(frame))


class _FrameToPrefix(nn.Module):
    """The teacher's first layers, shared by every width: uint8 frame -> the prefix's features."""

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        self.pre = bundle.preprocess()
        self.prefix = bundle.encoder().prefix

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.prefix(self.pre(frame))


class _PrefixToFeatures(nn.Module):
    """One width's slimmable layers, from the prefix's features."""

    def __init__(self, bundle: Bundle, width: int) -> None:
        super().__init__()
        self.encoder = bundle.encoder()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, self.width, prefixed=True)


def head_module(bundle: Bundle, width: int) -> nn.Module:
    bundle.check_width(width)
    return _FrameToFeatures(bundle, width).eval()


OPSET = 17


def _frame(bundle: Bundle) -> torch.Tensor:
    return torch.zeros(1, *bundle.input.image_shape, dtype=torch.uint8)


def _onnx(module: nn.Module, graph: Path, example: torch.Tensor, names: tuple[str, str]) -> None:
    """Trace ``module`` (input ``example``) into an ONNX graph with these (input, output) names."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant here
        torch.onnx.export(
            module, (example,), str(graph), dynamo=False, input_names=[names[0]], output_names=[names[1]],
            opset_version=OPSET,
        )  # fmt: skip


def _store_half(graph: Path) -> None:
    """Store each float32 weight of an ONNX graph that float16 holds exactly as float16, behind a Cast.

    Only exact ones: the graph computes what it did, bit for bit (weights derived in the
    export, such as a folded constant, stay float32 unless they happen to be exact).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(graph))
    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(init)
        half = value.astype(np.float16)
        if value.size < 2 or not np.array_equal(half.astype(np.float32), value):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}.float16"))
        casts.append(helper.make_node("Cast", [init.name], [name], to=TensorProto.FLOAT))
    nodes = [*casts, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(graph))


def _head_onnx(bundle: Bundle, module: nn.Module, graph: Path, example: torch.Tensor, names: tuple[str, str]) -> None:
    _onnx(module, graph, example, names)
    if bundle.weights == "float16":
        _store_half(graph)


def export_head(bundle: Bundle, width: int, fmt: str, out_dir: Path) -> list[Path]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    module = head_module(bundle, width)
    example = _frame(bundle)
    stem = out_dir / f"head-w{width}"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant here
        if fmt == "onnx":
            graph = stem.with_suffix(".onnx")
            _head_onnx(bundle, module, graph, example, ("frame", "features"))
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


def export_into_bundle(bundle: Bundle) -> Bundle:
    """Write every width's ONNX head into the bundle directory, listed with its sha256 in the manifest.

    The whole teacher goes in too (``teacher.onnx``) when the bundle carries its weights
    (``teacher.pt``), so that the onnx runtime can run locally; a teacher whose weights come from a
    package is left out (tens of MB in git): local inference with it needs the torch runtime.
    Rewriting the manifest changes the bundle's sha256, as any change to a bundle does. Returns
    the bundle reloaded and verified.
    """
    path = bundle.path
    manifest = dict(Manifest.read(path))
    files = {k: v for k, v in manifest["files"].items() if not ONNX_FILE.fullmatch(k)}  # replaced, not merged
    names = []
    heads = [onnx_head_file(width) for width in range(bundle.width_count)]
    if bundle.student.prefix:
        prefix = _FrameToPrefix(bundle).eval()
        _onnx(prefix, path / ONNX_PREFIX_FILE, _frame(bundle), ("frame", "prefix"))
        names.append(ONNX_PREFIX_FILE)
        with torch.no_grad():
            example = prefix(_frame(bundle))
        for width, name in enumerate(heads):
            _head_onnx(bundle, _PrefixToFeatures(bundle, width).eval(), path / name, example, ("prefix", "features"))
    else:
        for width, name in enumerate(heads):
            _head_onnx(bundle, head_module(bundle, width), path / name, _frame(bundle), ("frame", "features"))
    names += heads
    if bundle.has_file(TEACHER_FILE):
        names.append(ONNX_TEACHER_FILE)
        _onnx(bundle.whole_model(), path / ONNX_TEACHER_FILE, _frame(bundle), ("frame", "logits"))
    for stale in path.glob("*.onnx"):
        if stale.name not in names:
            stale.unlink()
    for name in names:
        files[name] = {"sha256": file_sha256(path / name), "size": (path / name).stat().st_size}
    manifest["files"] = files
    manifest["onnx"] = {"opset": OPSET, "heads": heads, "teacher": ONNX_TEACHER_FILE in names}
    if ONNX_PREFIX_FILE in names:
        manifest["onnx"]["prefix"] = ONNX_PREFIX_FILE
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle.load(path)
