"""codecs.ans, the Python encoder for devices without constriction: the same bytes as constriction's."""

import json
import subprocess
import sys

import constriction
import numpy as np
import pytest
from helpers import table_symbols

from splitserve.codecs import ans
from splitserve.data.samples import load_sample
from splitserve.models.coding import CodingBundle
from splitserve.models.zoo import find_bundle


def constriction_bytes(symbols: np.ndarray, probabilities: list[np.ndarray]) -> bytes:
    coder = constriction.stream.stack.AnsCoder()
    for c in range(len(symbols) - 1, -1, -1):
        coder.encode_reverse(symbols[c], constriction.stream.model.Categorical(probabilities[c], perfect=False))
    return coder.get_compressed().astype("<u4").tobytes()


@pytest.mark.parametrize("model", ["fmnist-split", "lite0-imagenet"])
def test_the_same_bytes_as_constriction_for_every_shipped_table(model):
    bundle = CodingBundle.load(find_bundle(model), verify=False)
    rng = np.random.default_rng(7)
    for width in range(bundle.width_count):
        n = 64 if model == "lite0-imagenet" else int(np.prod(bundle.latent_shape(width)[1:]))
        probabilities, cdfs, batch = table_symbols(bundle.entropy_tables(width), n, rng)
        for symbols in batch:
            assert ans.encode(symbols, cdfs) == constriction_bytes(symbols, probabilities), f"width {width}"


def test_the_same_bytes_for_random_tables():
    rng = np.random.default_rng(3)
    for _ in range(30):
        channels = int(rng.integers(1, 5))
        probabilities = []
        for _ in range(channels):
            p = rng.exponential(size=int(rng.integers(2, 300))) ** 3  # very skewed, some near-zero symbols
            probabilities.append(p / p.sum())
        symbols = np.stack([rng.integers(0, len(p), size=200) for p in probabilities]).astype(np.int32)
        assert ans.encode(symbols, [ans.quantized_cdf(p) for p in probabilities]) == constriction_bytes(
            symbols, probabilities
        )


def test_quantized_cdf_refuses_what_constriction_refuses():
    with pytest.raises(ValueError, match="2 .. 2\\*\\*24 - 2 symbols"):
        ans.quantized_cdf(np.array([1.0]))
    with pytest.raises(ValueError, match="positive, finite sum"):
        ans.quantized_cdf(np.array([0.0, 0.0]))
    cdf = ans.quantized_cdf(np.array([0.0, 1.0, 0.0]))
    assert cdf[0] == 0 and cdf[-1] == 1 << 24 and all(b > a for a, b in zip(cdf, cdf[1:], strict=False))


def test_a_device_without_constriction_sends_the_same_payloads(fmnist):
    """No constriction, no torch (a Pi): the onnx head + codecs.ans give the bytes the server expects."""
    code = (
        "import sys, json\n"
        "sys.modules.update(constriction=None, numba=None, torch=None, torchvision=None, compressai=None)\n"
        "from splitserve.codecs import CodecError\n"
        "from splitserve.data.samples import load_sample\n"
        "from splitserve.device_client.bundles import local_bundle\n"
        "from splitserve.device_client.head import HeadRunner\n"
        "head = HeadRunner(local_bundle('fmnist-split'), runtime='onnx')\n"
        "images, _ = load_sample('fmnist-test')\n"
        "out = [[head.encode(img, 'entropic', w).payload.hex() for img in images[:10]]\n"
        "       for w in range(head.bundle.width_count)]\n"
        "try:\n"
        "    head.bundle.decoder_for('entropic', 0)\n"
        "except CodecError as exc:\n"
        "    out.append(str(exc))\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    *payloads, refusal = json.loads(proc.stdout)
    assert refusal == "entropic: decoding needs constriction or numba: pip install 'splitserve[server]'"
    from splitserve.device_client.head import HeadRunner

    reference = HeadRunner(fmnist, runtime="onnx")
    images, _ = load_sample("fmnist-test")
    for width, per_width in enumerate(payloads):
        expected = [reference.encode(img, "entropic", width).payload.hex() for img in images[:10]]
        assert per_width == expected, f"width {width}"
