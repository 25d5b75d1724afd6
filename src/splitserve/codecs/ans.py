"""constriction's ANS encoder, in Python: the same bytes, for devices where constriction does not install.

constriction publishes no wheel for Linux on ARM (a Raspberry Pi) and no sdist, so a Pi
would need a Rust toolchain to install it. The device only encodes, and encoding is short:
this module reproduces, bit for bit, what the entropic codec asks of constriction:

- ``Categorical(probabilities, perfect=False)``: the "fast" quantization of float
  probabilities into a 24-bit fixed-point CDF (constriction's ``fast_quantized_cdf``);
- ``AnsCoder().encode_reverse(symbols, model)`` then ``get_compressed()``: the default
  ANS stack coder (64-bit state, 32-bit words, 24-bit precision).

The server decodes with constriction as always; tests check the bytes against constriction's.
It is a fallback: one Python step per symbol (lite0's widest width: ~38 k symbols a frame).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PRECISION = 24  # constriction's default models: u32 probabilities at 24-bit precision
_WORD_MASK = (1 << 32) - 1
_RENORM_SHIFT = 64 - PRECISION  # State::BITS - PRECISION


def quantized_cdf(probabilities: np.ndarray) -> list[int]:
    """The left-sided CDF (n + 1 entries, ending at 2**24) of constriction's fast quantization.

    Each symbol gets at least one unit of probability; the float arithmetic is the same as
    constriction's (sequential sums in float64, truncation toward zero).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    n = len(p)
    if n < 2 or n >= (1 << PRECISION) - 1:
        raise ValueError(f"a categorical model needs 2 .. 2**24 - 2 symbols, got {n}")
    running = np.add.accumulate(p)  # sequential, as Rust's iterator sum
    normalization = float(running[-1])
    if not np.isfinite(normalization) or normalization <= 0:
        raise ValueError("probabilities must have a positive, finite sum")
    scale = float((1 << PRECISION) - n) / normalization
    left = np.concatenate([[0.0], running[:-1]]) * scale
    cdf = left.astype(np.uint64).astype(np.int64) + np.arange(n, dtype=np.int64)
    return [*cdf.tolist(), 1 << PRECISION]


def encode(symbols: np.ndarray, cdfs: Sequence[list[int]]) -> bytes:
    """Rows of symbols (row c coded with ``cdfs[c]``) -> the words constriction's coder would give.

    Same as, for c from the last row to the first, ``coder.encode_reverse(symbols[c], model_c)``
    and then ``coder.get_compressed()`` as little-endian uint32.
    """
    state = 0
    bulk: list[int] = []
    for c in range(len(symbols) - 1, -1, -1):
        cdf = cdfs[c]
        for s in reversed(symbols[c].tolist()):
            left = cdf[s]
            probability = cdf[s + 1] - left
            if (state >> _RENORM_SHIFT) >= probability:
                bulk.append(state & _WORD_MASK)
                state >>= 32
            state = ((state // probability) << PRECISION) | (state % probability + left)
    if state >> 32:  # the state's words, least significant first, leading zero words left out
        bulk += [state & _WORD_MASK, state >> 32]
    elif state:
        bulk.append(state)
    return np.asarray(bulk, dtype="<u4").tobytes()
