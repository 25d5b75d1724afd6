"""Student widths are nested: every one sends a prefix of the widest's channels, made by a prefix of its filters.

Transform widths (above the student's) share one basis instead: each is the same rotation, by another step.
"""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from splitserve.models.zoo import BUNDLED, bundle_dirs, load


def _bottleneck_filters(path) -> np.ndarray:
    """The weights of the head's last convolution (the one that makes the bottleneck), as stored."""
    graph = onnx.load(str(path)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    stored = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    name = [n for n in graph.node if n.op_type == "Conv"][-1].input[1]
    while name not in stored:  # weights kept at float16 reach the Conv through a Cast
        name = made_by[name].input[0]
    return stored[name].astype(np.float32)


@pytest.mark.parametrize("model", sorted(bundle_dirs(BUNDLED)))
def test_every_width_is_a_prefix_of_the_widest(model):
    bundle = load(model)
    channels = [w["channels"] for w in bundle.widths[: bundle.student.widths]]
    assert channels == list(bundle.student.bottleneck_channels())
    assert all(a < b for a, b in zip(channels, channels[1:], strict=False)), channels
    widest = _bottleneck_filters(bundle.path / f"head-w{len(channels) - 1}.onnx")
    assert widest.shape[0] == channels[-1]
    for w, c in enumerate(channels[:-1]):
        filters = _bottleneck_filters(bundle.path / f"head-w{w}.onnx")
        # the first c output channels, reading the first inputs of the narrower stage: the same numbers
        assert filters.shape[0] == c and filters.shape[1] < widest.shape[1]
        np.testing.assert_array_equal(filters, widest[:c, : filters.shape[1]])


@pytest.mark.parametrize("model", sorted(bundle_dirs(BUNDLED)))
def test_transform_widths_share_one_basis_and_differ_by_their_step(model):
    bundle = load(model)
    steps = bundle.manifest.transform_steps
    if not steps:
        pytest.skip(f"{model} has no transform widths")
    first = bundle.student.widths
    rotations = [_bottleneck_filters(bundle.path / f"head-w{first + i}.onnx") * s for i, s in enumerate(steps)]
    for r in rotations[1:]:
        np.testing.assert_allclose(r, rotations[0], rtol=1e-5, atol=1e-6)
    assert steps == sorted(steps, reverse=True)  # finest last: the widest width
