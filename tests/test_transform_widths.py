"""Transform widths: the teacher's own features, on their principal components, entropy-coded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from splitserve.codecs import get_decoder, get_encoder
from splitserve.data.samples import load_sample
from splitserve.models import zoo
from splitserve.models.bundle import Bundle
from splitserve.models.manifest import BundleError, Manifest
from splitserve.models.transform import FeatureTransform
from splitserve.training.config import ConfigError, parse_config
from splitserve.training.evaluate import predict_local
from splitserve.training.transform import add_transform_widths


def correlated_features(n: int = 64, c: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(c, c)) * np.linspace(3, 0.2, c)  # some directions carry far more than others
    z = rng.normal(size=(n, 5, 5, c))
    return (z @ mix.T + rng.normal(size=c)).transpose(0, 3, 1, 2).astype(np.float32)


def test_the_basis_is_orthonormal_sorted_by_variance_and_decodes_what_it_encodes():
    x = correlated_features()
    t = FeatureTransform(x.shape[1], [1.0, 0.01]).fit(x)
    basis = t.basis.numpy()
    np.testing.assert_allclose(basis.T @ basis, np.eye(x.shape[1]), atol=1e-5)
    z = t.encode(torch.from_numpy(x), 0).numpy()
    variances = z.transpose(1, 0, 2, 3).reshape(x.shape[1], -1).var(1)
    assert np.all(np.diff(variances) <= 1e-6), variances  # component 0 carries the most
    fine = t.encode(torch.from_numpy(x), 1)
    back = t.decode(torch.round(fine), 1).numpy()
    assert np.abs(back - x).max() < 0.01 * np.sqrt(x.shape[1])  # half a step per component, at most
    coarse = t.decode(torch.round(t.encode(torch.from_numpy(x), 0)), 0).numpy()
    assert np.abs(coarse - x).mean() > np.abs(back - x).mean()  # a coarser step loses more


def test_tables_code_every_fitted_value_exactly_and_clamp_beyond_them():
    x = correlated_features()
    t = FeatureTransform(x.shape[1], [0.5]).fit(x)
    tables = t.tables(x, 0)
    assert tables.channels == x.shape[1]
    shape = tuple(x.shape[1:])
    enc, dec = get_encoder("entropic", tables=tables, shape=shape), get_decoder("entropic", tables=tables, shape=shape)
    z = t.encode(torch.from_numpy(x[:4]), 0)
    for frame in z:
        decoded = dec.decode(enc.encode(frame), shape)
        torch.testing.assert_close(decoded, torch.round(frame))
    far = z[0].clone()
    far[0, 0, 0] = 1e4  # a frame far outside what the photos showed: clamped to the table's edge, still decodes
    decoded = dec.decode(enc.encode(far), shape)
    assert decoded[0, 0, 0] == tables.offsets[0] + len(tables.freqs[0]) - 1


@pytest.fixture(scope="module")
def widened(tmp_path_factory):
    """The bundled lite0-imagenet, its transform widths (if any) fitted anew on the shipped sample photos."""
    base = zoo.load("lite0-imagenet")
    frames, _ = load_sample(base.manifest["sample"])
    cfg = parse_config({"student": {"prefix": base.student.prefix}, "transform": {"steps": [12.0, 4.0],
                                                                                "frames": len(frames)}})  # fmt: skip
    dest = tmp_path_factory.mktemp("bundles") / base.name / "t"
    return base, add_transform_widths(base, cfg.transform, frames, dest, "t"), frames


def test_a_widened_bundle_keeps_its_student_and_adds_widths_that_approach_the_teacher(widened):
    base, bundle, frames = widened
    first = base.student.widths
    assert bundle.width_count == first + 2
    assert bundle.manifest.transform_steps == [12.0, 4.0]
    for w in range(first):  # the student's widths code exactly as before
        assert bundle.widths[w] == base.widths[w]
        np.testing.assert_array_equal(bundle.entropy_tables(w).offsets, base.entropy_tables(w).offsets)
    teacher = predict_local(bundle, frames)
    pre = bundle.preprocess()
    agreement, sizes = [], []
    for w in (first, first + 1):
        device, server = bundle.device_stage("entropic", w), bundle.server_stage("entropic", w)
        enc, dec = bundle.encoder_for("entropic", w), bundle.decoder_for("entropic", w)
        shape = bundle.latent_shape(w)
        assert shape == tuple(bundle.feature_shape)
        with torch.inference_mode():
            y = device(pre(torch.from_numpy(frames)))
            payloads = [enc.encode(t) for t in y]
            logits = server(torch.stack([dec.decode(p, shape) for p in payloads]))
        agreement.append(float((logits.argmax(1).numpy() == teacher).mean()))
        sizes.append(np.mean([len(p) for p in payloads]))
    assert sizes[1] > sizes[0]  # the finer step costs more bytes...
    assert agreement[1] >= agreement[0] and agreement[1] >= 0.9, agreement  # ...and comes closer to the teacher


def test_the_onnx_head_of_a_transform_width_computes_what_torch_does(widened):
    from splitserve.models.export import export_into_bundle

    _, bundle, frames = widened
    bundle = export_into_bundle(bundle)
    import onnxruntime as ort

    w = bundle.width_count - 1
    prefix = ort.InferenceSession(str(bundle.manifest.onnx_prefix()))
    head = ort.InferenceSession(str(bundle.manifest.onnx_head(w)))
    x = prefix.run(None, {"frame": frames[:1]})[0]
    got = head.run(None, {"prefix": x})[0]
    with torch.inference_mode():
        want = bundle.device_stage("entropic", w)(bundle.preprocess()(torch.from_numpy(frames[:1]))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_transform_widths_must_follow_the_students(widened, tmp_path):
    _, bundle, _ = widened
    data = json.loads((bundle.path / "manifest.json").read_text())
    data["widths"] = data["widths"][-1:] + data["widths"][:-1]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="then transform widths"):
        Manifest.read(tmp_path)
    assert Bundle.load(bundle.path).width_count == bundle.width_count


@pytest.mark.parametrize("transform, match", [
    ({"steps": [4.0, 8.0]}, "decrease"),
    ({"steps": [0.0]}, "positive"),
    ({"steps": [8.0], "base": "lite0-imagenet"}, "name:version"),
    ({"base": "lite0-imagenet:8"}, "with steps"),
])  # fmt: skip
def test_bad_transform_sections_are_refused(transform, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"student": {"prefix": "_blocks.7"}, "transform": transform})


def test_transform_widths_need_a_prefix():
    with pytest.raises(ConfigError, match="prefix"):
        parse_config({"transform": {"steps": [8.0]}})
