"""Exported heads compute what the bundle's head computes."""

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import BIN

from splitserve.data.samples import load_sample
from splitserve.models.export import export_head, head_module


@pytest.mark.parametrize("width", [0, -1])
def test_onnx_head_matches_torch(tmp_path, fmnist, width):
    ort = pytest.importorskip("onnxruntime")
    width = fmnist.student.widths - 1 if width < 0 else width
    graph, meta = export_head(fmnist, width, "onnx", tmp_path)
    images, _ = load_sample("fmnist-test")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    module = head_module(fmnist, width)
    for img in images[:16]:
        frame = img[None]
        got = session.run(None, {"frame": frame})[0]
        with torch.inference_mode():
            want = module(torch.from_numpy(frame)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
        # what matters for the codec: the same symbols after rounding (almost always)
    info = json.loads(meta.read_text())
    assert info["output"]["shape"] == [1, *fmnist.latent_shape(width)]
    assert len(info["entropy"]["freqs"]) == fmnist.latent_shape(width)[0]


def test_a_half_precision_bundle_exports_heads_that_store_half_and_compute_what_torch_does(tmp_path, fmnist,
                                                                                          fmnist_half):  # fmt: skip
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    width = fmnist.student.widths - 1
    full, _ = export_head(fmnist, width, "onnx", tmp_path / "full")
    half, _ = export_head(fmnist_half, width, "onnx", tmp_path / "half")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    graph = onnx.load(str(half)).graph
    stored = {i.name: i.data_type for i in graph.initializer}
    weights = [n for n in graph.node if n.op_type == "Cast" and n.input[0] in stored]  # not the frame's cast
    assert len(weights) >= 4 and all(stored[n.input[0]] == onnx.TensorProto.FLOAT16 for n in weights)
    session = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    module = head_module(fmnist_half, width)
    tables = fmnist_half.entropy_tables(width)
    images, _ = load_sample("fmnist-test")
    for img in images[:32]:
        frame = img[None]
        got = session.run(None, {"frame": frame})[0]
        with torch.inference_mode():
            want = module(torch.from_numpy(frame))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)  # the same weights; only op order differs
        assert torch.equal(tables.dequantize(torch.from_numpy(got)), tables.dequantize(want))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated upstream
def test_torchscript_head_matches_torch(tmp_path, fmnist):
    graph, _ = export_head(fmnist, 1, "torchscript", tmp_path)
    loaded = torch.jit.load(str(graph))
    images, _ = load_sample("fmnist-test")
    frame = torch.from_numpy(images[:1])
    with torch.inference_mode():
        assert torch.allclose(loaded(frame), head_module(fmnist, 1)(frame), atol=1e-5)


def test_export_cli(tmp_path):
    proc = subprocess.run(
        [str(BIN / "splitserve"), "export", "--model", "fmnist-split", "--width", "0", "--format", "onnx",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "head-w0.onnx").is_file() and (tmp_path / "head-w0.json").is_file()
