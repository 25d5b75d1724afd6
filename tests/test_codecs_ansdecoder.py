"""codecs.ansdecoder, the server's compiled decoder: constriction's answers, symbol for symbol, a batch at a time."""

import constriction
import numpy as np
import pytest
import torch
from helpers import table_symbols

from splitserve.codecs import ans, ansdecoder, entropic
from splitserve.codecs.entropic import EntropicDecoder, EntropicEncoder, EntropyTables
from splitserve.models.coding import CodingBundle
from splitserve.models.zoo import find_bundle


def constriction_decode(payload: bytes, probabilities: list[np.ndarray], per_channel: int) -> np.ndarray | None:
    """constriction's symbols for a payload, or None where it refuses the payload."""
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        models = [constriction.stream.model.Categorical(p, perfect=False) for p in probabilities]
        symbols = np.stack([coder.decode(m, per_channel) for m in models])
    except (ValueError, RuntimeError):
        return None
    return symbols if coder.is_empty() else None


def kernel_for(freqs: list[np.ndarray], lows: np.ndarray | None = None):
    probabilities = [f.astype(np.float64) / float(f.sum()) for f in freqs]
    lows = np.zeros(len(freqs), dtype=np.float32) if lows is None else lows
    return ansdecoder.AnsTables([ans.quantized_cdf(p) for p in probabilities], lows), probabilities


@pytest.mark.parametrize("model", ["fmnist-split", "lite0-imagenet"])
def test_every_shipped_table_decodes_a_batch_to_the_encoded_symbols(model):
    bundle = CodingBundle.load(find_bundle(model), verify=False)
    rng = np.random.default_rng(3)
    for width in range(bundle.width_count):
        tables = bundle.entropy_tables(width)
        c, h, w = bundle.latent_shape(width)
        kernel, _ = kernel_for(list(tables.freqs))
        probabilities, cdfs, batch = table_symbols(tables, h * w, rng)
        batch.append(np.zeros_like(batch[0]))
        payloads = [ans.encode(s, cdfs) for s in batch]
        out = np.empty((len(batch), c * h * w), dtype=np.float32)
        assert kernel.decode(payloads, out) == [""] * len(batch)
        for symbols, row, payload in zip(batch, out, payloads, strict=True):
            assert np.array_equal(row.reshape(c, -1).astype(np.int64), symbols), f"width {width}"
            assert np.array_equal(constriction_decode(payload, probabilities, h * w), symbols)


def test_extreme_tables_a_near_certain_symbol_and_three_hundred_symbols():
    freqs = [
        np.array([1, 10**9], dtype=np.int64),  # the rare symbol gets constriction's minimum probability
        np.array([10**9, 1, 1], dtype=np.int64),
        np.random.default_rng(0).integers(1, 50, size=300).astype(np.int64),  # many symbols per lookup bucket
        np.ones(5000, dtype=np.int64),  # more symbols than lookup buckets
    ]
    kernel, probabilities = kernel_for(freqs, np.array([-1, 0, -150, 7], dtype=np.float32))
    cdfs = [ans.quantized_cdf(p) for p in probabilities]
    rng = np.random.default_rng(1)
    symbols = np.stack([rng.integers(0, len(f), size=400) for f in freqs]).astype(np.int32)
    out = np.empty((1, 4 * 400), dtype=np.float32)
    assert kernel.decode([ans.encode(symbols, cdfs)], out) == [""]
    assert np.array_equal(out.reshape(4, -1), symbols + np.array([-1, 0, -150, 7])[:, None])


def test_garbage_gets_the_same_verdict_as_constriction():
    """Random word-aligned payloads: refused where constriction refuses, the same symbols where it accepts."""
    rng = np.random.default_rng(5)
    freqs = [rng.integers(1, 4000, size=rng.integers(2, 12)).astype(np.int64) for _ in range(3)]
    kernel, probabilities = kernel_for(freqs)
    per_channel = 4
    cdfs = [ans.quantized_cdf(p) for p in probabilities]
    valid = [ans.encode(rng.integers(0, [[len(f)] for f in freqs], size=(3, per_channel)), cdfs) for _ in range(300)]
    flipped = [bytes([v[0] ^ (1 << int(rng.integers(8))), *v[1:]]) for v in valid]  # one bit off, low word
    garbage = [rng.integers(0, 256, size=4 * int(rng.integers(1, 5)), dtype=np.uint8).tobytes() for _ in range(3000)]
    payloads = valid + flipped + garbage
    payloads += [b"\x00\x00\x00\x00", b"\x05\x00\x00\x00\x00\x00\x00\x00"]  # a zero word on top of the stack
    out = np.empty((len(payloads), 3 * per_channel), dtype=np.float32)
    problems = kernel.decode(payloads, out)
    accepted = 0
    for payload, problem, row in zip(payloads, problems, out, strict=True):
        expected = constriction_decode(payload, probabilities, per_channel)
        assert (expected is None) == bool(problem), payload.hex()
        if expected is not None:
            accepted += 1
            assert np.array_equal(row.reshape(3, -1), expected)
    assert problems[-2:] == [ansdecoder.PROBLEMS[ansdecoder.LEADING_ZERO_WORD]] * 2
    assert len(valid) <= accepted < len(payloads) // 4  # both verdicts were exercised


def make_codec(shape=(6, 5, 7)):
    rng = np.random.default_rng(0)
    freqs = tuple(rng.integers(1, 4000, size=rng.integers(3, 24)).astype(np.int64) for _ in range(shape[0]))
    tables = EntropyTables(
        medians=rng.normal(size=shape[0]).astype(np.float32),
        offsets=-np.array([len(f) // 2 for f in freqs], dtype=np.int32),
        freqs=freqs,
    )
    return EntropicEncoder(tables, shape), EntropicDecoder(tables, shape), shape


def test_a_bad_frame_in_a_batch_leaves_its_batch_mates_exact():
    enc, dec, shape = make_codec()
    ys = [torch.randn(shape) * 3 for _ in range(5)]
    payloads = [enc.encode(y) for y in ys]
    payloads[1] = payloads[1][:-4]  # truncated
    payloads[3] = b"\x01\x02\x03"  # not whole words
    out = np.empty((5, *shape), dtype=np.float32)
    problems = dec.decode_batch(payloads, out)
    assert [bool(p) for p in problems] == [False, True, False, True, False]
    assert "corrupt payload" in problems[1] and "multiple of 4 bytes" in problems[3]
    for i in (0, 2, 4):
        assert torch.equal(torch.from_numpy(out[i]), enc.dequantize(enc.quantize(ys[i])))


def test_constriction_decodes_the_same_where_numba_is_missing(monkeypatch):
    enc, kernel_decoder, shape = make_codec()
    payloads = [enc.encode(torch.randn(shape) * 3) for _ in range(4)] + [b"\x00" * 8]
    with_kernel = np.empty((5, *shape), dtype=np.float32)
    problems = kernel_decoder.decode_batch(payloads, with_kernel)
    monkeypatch.setattr(entropic, "ansdecoder", None)
    _, fallback, _ = make_codec()
    without = np.empty_like(with_kernel)
    fallback_problems = fallback.decode_batch(payloads, without)
    assert [bool(p) for p in problems] == [bool(p) for p in fallback_problems] == [False] * 4 + [True]
    assert np.array_equal(with_kernel[:4], without[:4])


def test_without_a_writable_cache_the_kernel_compiles_uncached(monkeypatch):
    """numba refuses cache=True where it can write nowhere (read-only install, no home)."""
    import numba

    real, asked = numba.njit, []

    def njit(**options):
        asked.append(options)
        if options.get("cache"):
            raise RuntimeError("cannot cache function '_decode': no locator available for file")
        return real(**options)

    monkeypatch.setattr(numba, "njit", njit)
    kernel = ansdecoder._compiled(ansdecoder._decode.py_func)
    assert asked == [{"nogil": True, "cache": True}, {"nogil": True}]
    tables, _ = kernel_for([np.array([1, 3], dtype=np.int64)])
    payload = ans.encode(np.array([[1, 0, 1]], dtype=np.int32), [ans.quantized_cdf(np.array([0.25, 0.75]))])
    words = np.frombuffer(payload, dtype="<u4")
    out, status = np.empty((1, 3), dtype=np.float32), np.empty(1, dtype=np.int64)
    kernel(words, np.array([len(words)]), tables.cdf, tables.cdf_start, tables.lookup, tables.lows, 3, out, status)
    assert status.tolist() == [ansdecoder.OK] and out.tolist() == [[1.0, 0.0, 1.0]]
