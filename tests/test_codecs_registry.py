"""The codec registry and what each codec says about itself: its kind, shape, device stage, batch key."""

import dataclasses

import numpy as np
import pytest

from splitserve.codecs import CODEC_IDS, BatchKey, PayloadKind, codec_kind, get_decoder, get_encoder


def test_every_codec_has_one_kind_on_both_halves():
    kinds = {c: codec_kind(c) for c in CODEC_IDS}
    assert kinds == {
        "entropic": PayloadKind.LATENT, "fp16": PayloadKind.FEATURES, "int8": PayloadKind.FEATURES,
        "jpeg": PayloadKind.IMAGE, "webp": PayloadKind.IMAGE, "png": PayloadKind.IMAGE,
    }  # fmt: skip
    for c in ("jpeg", "webp", "png", "fp16", "int8"):
        shape = (4, 4, 3) if kinds[c] is PayloadKind.IMAGE else (2, 2, 2)
        assert get_encoder(c).kind is get_decoder(c, shape=shape).kind


def test_unknown_codec_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown codec 'h264'; known codecs: entropic, fp16, int8, jpeg, png, webp"):
        codec_kind("h264")


def test_what_each_kind_says(fmnist):
    latent, features, image = PayloadKind.LATENT, PayloadKind.FEATURES, PayloadKind.IMAGE
    assert [k.has_device_stage for k in (latent, features, image)] == [True, True, False]
    assert [k.has_widths for k in (latent, features, image)] == [True, False, False]
    assert [k.has_quality for k in (latent, features, image)] == [False, False, True]
    assert image.dtype == np.uint8 and latent.dtype == np.float32
    assert latent.payload_shape(fmnist, 2) == fmnist.latent_shape(2)
    assert features.payload_shape(fmnist, 2) == fmnist.feature_shape
    assert image.payload_shape(fmnist, 2) == (28, 28, 1)
    assert fmnist.payload_shape("png", 3) == (28, 28, 1)


def test_batch_keys_are_values_not_strings():
    assert PayloadKind.LATENT.batch_key(2) == BatchKey(PayloadKind.LATENT, 2) != PayloadKind.LATENT.batch_key(3)
    assert PayloadKind.IMAGE.batch_key(3) == PayloadKind.IMAGE.batch_key(0) == BatchKey(PayloadKind.IMAGE, 0)
    assert PayloadKind.FEATURES.batch_key(1) != PayloadKind.IMAGE.batch_key(1)
    assert len({PayloadKind.LATENT.batch_key(1), BatchKey(PayloadKind.LATENT, 1)}) == 1  # hashable, equal
    assert [k.label for k in (PayloadKind.LATENT.batch_key(1), PayloadKind.FEATURES.batch_key(1),
                              PayloadKind.IMAGE.batch_key(1))] == ["1", "features", "image"]  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        BatchKey(PayloadKind.LATENT, 1).width = 2  # type: ignore[misc]
