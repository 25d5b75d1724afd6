import pytest
import torch

from splitserve.models.backbones import build_teacher, feature_shape, split_model, tap_outputs


def test_split_halves_compose_to_the_whole_model():
    model = build_teacher("fmnist-cnn").eval()
    head, tail = split_model(model, "block2")
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(tail(head(x)), model(x), atol=1e-6)
    assert feature_shape(head, (1, 28, 28)) == (64, 7, 7)


def test_split_shares_weights_with_the_teacher():
    model = build_teacher("fmnist-cnn")
    _, tail = split_model(model, "block2")
    assert getattr(tail.classifier, "2").weight is model.classifier[2].weight


def test_torchvision_classifier_splits_at_a_block():
    model = build_teacher("torchvision", {"name": "resnet18", "num_classes": 10}).eval()
    head, tail = split_model(model, "layer2")
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(tail(head(x)), model(x), atol=1e-5)


def test_split_errors_are_clear():
    model = build_teacher("torchvision", {"name": "resnet18"})
    with pytest.raises(ValueError, match="no such layer"):
        split_model(model, "layer9")
    with pytest.raises(ValueError, match="skip connection"):
        split_model(model, "layer2.0.conv1")
    with pytest.raises(ValueError, match="unknown teacher family"):
        build_teacher("vgg-of-my-dreams")


def test_tapped_tail_returns_intermediate_outputs():
    model = build_teacher("fmnist-cnn").eval()
    head, tail = split_model(model, "block2")
    tapped = tap_outputs(tail, ["block3"])
    x = head(torch.randn(2, 1, 28, 28))
    out, taps = tapped(x)
    assert torch.allclose(out, tail(x)) and taps[0].shape == (2, 128, 1, 1)
