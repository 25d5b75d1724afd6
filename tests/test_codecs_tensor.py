import zlib

import numpy as np
import pytest
import torch

from splitserve.codecs import CodecError, get_decoder, get_encoder

SHAPE = (16, 7, 7)


@pytest.fixture
def features():
    return torch.relu(torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)))


def test_fp16_round_trip(features):
    payload = get_encoder("fp16").encode(features)
    assert len(payload) == 2 * features.numel()
    out = get_decoder("fp16", shape=SHAPE).decode(payload, SHAPE)
    assert torch.allclose(out, features, atol=1e-3)


@pytest.mark.parametrize("compressor", ["zlib", "zstd"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_round_trip(features, compressor, per_channel):
    payload = get_encoder("int8", compressor=compressor, per_channel=per_channel).encode(features)
    out = get_decoder("int8", shape=SHAPE).decode(payload, SHAPE)
    step = (features.max() - features.min()) / 255
    assert (out - features).abs().max() <= step / 2 + 1e-6
    assert len(payload) < features.numel()  # it compresses


def test_constant_tensor(features):
    x = torch.full(SHAPE, 2.5)
    out = get_decoder("int8", shape=SHAPE).decode(get_encoder("int8").encode(x), SHAPE)
    assert torch.allclose(out, x)


def test_wrong_sizes_and_bad_values_are_codec_errors(features):
    dec16 = get_decoder("fp16", shape=SHAPE)
    with pytest.raises(CodecError):
        dec16.decode(get_encoder("fp16").encode(features)[:-2], SHAPE)
    with pytest.raises(CodecError, match="NaN"):
        dec16.decode(np.full(SHAPE, np.nan, dtype="<f2").tobytes(), SHAPE)
    with pytest.raises(CodecError, match="declared shape"):
        dec16.decode(b"", (1 << 20, 1 << 20, 4))


def test_decompression_bomb_is_refused():
    dec = get_decoder("int8", shape=SHAPE)
    n = int(np.prod(SHAPE))
    header = bytes([1, 0]) + np.array([0.0, 1.0], dtype="<f4").tobytes()
    bomb = zlib.compress(b"\x00" * (n * 1000))
    with pytest.raises(CodecError, match="exactly"):
        dec.decode(header + bomb, SHAPE)


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_thousand_garbage_payloads_only_raise_codec_error(codec):
    dec = get_decoder(codec, shape=SHAPE)
    rng = np.random.default_rng(2)
    for _ in range(1000):
        garbage = rng.integers(0, 256, size=int(rng.integers(0, 1600)), dtype=np.uint8).tobytes()
        if codec == "int8" and garbage:
            garbage = bytes([1, int(rng.integers(0, 2)) | (int(rng.integers(0, 2)) << 4)]) + garbage
        try:
            out = dec.decode(garbage, SHAPE)
            assert out.shape == SHAPE and torch.isfinite(out).all()
        except CodecError:
            pass


def test_unknown_codec_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown codec 'h265'"):
        get_decoder("h265", shape=SHAPE)
