import io

import numpy as np
import pytest
import torch
from helpers import jpeg_bomb, png_bomb
from PIL import Image

from splitserve.codecs import CodecError, get_decoder, get_encoder


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:48]
    img = np.stack([x * 5, y * 7, (x + y) * 3], axis=-1) % 256 + rng.integers(0, 8, (32, 48, 3))
    return torch.from_numpy(img.astype(np.uint8))


@pytest.mark.parametrize("codec", ["jpeg", "webp", "png"])
def test_round_trip(rgb, codec):
    payload = get_encoder(codec, quality=90).encode(rgb)
    out = get_decoder(codec, shape=tuple(rgb.shape)).decode(payload, tuple(rgb.shape))
    assert out.shape == rgb.shape and out.dtype == torch.uint8
    err = (out.float() - rgb.float()).abs().mean()
    assert err == 0 if codec == "png" else err < 8


def test_grey_frames(rgb):
    grey = rgb[:, :, :1].contiguous()
    out = get_decoder("png", shape=(32, 48, 1)).decode(get_encoder("png").encode(grey), (32, 48, 1))
    assert torch.equal(out, grey)


def test_quality_trades_bytes(rgb):
    assert len(get_encoder("jpeg", quality=10).encode(rgb)) < len(get_encoder("jpeg", quality=95).encode(rgb))


def test_image_of_the_wrong_size_is_refused_before_decoding():
    big = Image.new("RGB", (4000, 4000))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    with pytest.raises(CodecError, match="expected 48x32"):
        get_decoder("png", shape=(32, 48, 3)).decode(buf.getvalue(), (32, 48, 3))


def test_wrong_format_is_refused(rgb):
    payload = get_encoder("png").encode(rgb)
    with pytest.raises(CodecError):
        get_decoder("jpeg", shape=(32, 48, 3)).decode(payload, (32, 48, 3))


@pytest.mark.parametrize("codec", ["jpeg", "webp", "png"])
def test_thousand_garbage_payloads_only_raise_codec_error(rgb, codec):
    good = get_encoder(codec).encode(rgb)
    dec = get_decoder(codec, shape=(32, 48, 3))
    rng = np.random.default_rng(3)
    for i in range(1000):
        if i % 2:
            data = bytearray(good)
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            data = bytes(data[: int(rng.integers(0, len(data) + 1))])
        else:
            data = rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        try:
            out = dec.decode(data, (32, 48, 3))
            assert out.shape == (32, 48, 3)
        except CodecError:
            pass


@pytest.mark.parametrize(
    "codec, payload",
    [("png", png_bomb()), ("jpeg", jpeg_bomb()), ("png", png_bomb(10000, 10000)), ("jpeg", jpeg_bomb(12000, 9000))],
)
def test_decompression_bombs_are_codec_errors(codec, payload):
    # beyond PIL's hard limit (an error) and between its soft and hard limits (a warning)
    with pytest.raises(CodecError, match="huge size"):
        get_decoder(codec, shape=(32, 48, 3)).decode(payload, (32, 48, 3))
