"""constriction's ANS stream, decoded by a compiled kernel that releases the interpreter lock.

The server decodes every entropic frame, from many devices at once. constriction's own
decoder holds the GIL, so frames decode one at a time whatever the core count, and it
finds each symbol by a binary search over a 24-bit CDF. This kernel (numba, compiled
once and cached on disk) reads the same words with the same arithmetic:

- the stack's initial state: the last word first, up to two words, no leading zero word;
- per symbol: quantile = state mod 2**24; the symbol whose CDF interval holds it; then
  ``state = (state >> 24) * probability + quantile - cdf[symbol]``, refilled with the
  next word whenever it drops below 2**32;
- the stream is valid only if it ends exactly where the features do (state 0, no word left).

A symbol is found through a per-channel table indexed by the quantile's top bits, which
points at (or just before) the answer; the short forward scan from there is bounded by the
CDF's last entry (2**24, above every quantile). Every word read is guarded by the read
position, so a hostile payload can end in an error, never in an out-of-bounds read.

The CDFs are constriction's own (``ans.quantized_cdf``), so the bytes mean the same to
both decoders; tests check it symbol for symbol.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from splitserve.codecs import ans

_LOOKUP_BITS = 12  # 4096 entries a channel (16 KB): one channel's table stays in L1 while it decodes
_LOOKUP_SHIFT = ans.PRECISION - _LOOKUP_BITS

OK, LEADING_ZERO_WORD, NOT_CONSUMED = 0, 1, 2
PROBLEMS = {
    LEADING_ZERO_WORD: "the stream's last word is zero",
    NOT_CONSUMED: "the stream does not end where the features do",
}


def _compiled(fn):  # type: ignore[no-untyped-def]
    """``fn`` compiled without the GIL, cached on disk where numba finds a writable place.

    A read-only install with no writable home (a locked-down container) has none: numba then
    refuses ``cache=True`` outright, and the kernel compiles at every start instead (about 1.5 s).
    """
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:
        return numba.njit(nogil=True)(fn)


@_compiled
def _decode(words, ends, cdf, cdf_start, lookup, lows, per_channel, out, status):  # type: ignore[no-untyped-def]
    """Decode frame f from ``words[ends[f-1]:ends[f]]`` into ``out[f]`` (float32: low + symbol).

    The frames advance in lockstep, one symbol each in turn: their states are independent,
    so the processor overlaps their dependency chains (one frame alone waits on every
    load and multiply). ``status[f]`` gets OK or what is wrong with frame f.
    """
    refill_below = np.uint64(1) << np.uint64(32)
    mask = np.uint64((1 << 24) - 1)
    precision = np.uint64(24)
    word_bits = np.uint64(32)
    shift = np.uint64(_LOOKUP_SHIFT)
    frames = ends.shape[0]
    state = np.zeros(frames, np.uint64)
    pos = ends.copy()
    start = np.zeros(frames, np.int64)
    for f in range(frames):
        start[f] = ends[f - 1] if f > 0 else 0
        status[f] = OK
        p = pos[f]
        s = np.uint64(0)
        if p > start[f]:
            p -= 1
            s = np.uint64(words[p])
            if s == 0:
                status[f] = LEADING_ZERO_WORD
            while p > start[f]:
                p -= 1
                s = (s << word_bits) | np.uint64(words[p])
                if s >= refill_below:
                    break
        state[f] = s
        pos[f] = p

    k = 0
    for c in range(lows.shape[0]):
        base = cdf_start[c]
        low = lows[c]
        table = lookup[c]
        for _ in range(per_channel):
            for f in range(frames):
                s = state[f]
                quantile = s & mask
                i = base + table[quantile >> shift]
                while cdf[i + 1] <= quantile:
                    i += 1
                left = cdf[i]
                s = (s >> precision) * (cdf[i + 1] - left) + (quantile - left)
                if s < refill_below and pos[f] > start[f]:
                    pos[f] -= 1
                    s = (s << word_bits) | np.uint64(words[pos[f]])
                state[f] = s
                out[f, k] = low + np.float32(i - base)
            k += 1
    for f in range(frames):
        if status[f] == OK and (state[f] != 0 or pos[f] != start[f]):
            status[f] = NOT_CONSUMED


class AnsTables:
    """One width's CDFs, flattened for the kernel, and its symbol lookup tables."""

    def __init__(self, cdfs: Sequence[Sequence[int]], lows: np.ndarray) -> None:
        if len(cdfs) != len(lows):
            raise ValueError(f"{len(cdfs)} CDFs for {len(lows)} channels")
        self.lows = np.ascontiguousarray(lows, dtype=np.float32)
        arrays = [np.asarray(c, dtype=np.uint64) for c in cdfs]
        self.cdf_start = np.cumsum([0] + [len(a) for a in arrays[:-1]]).astype(np.int64)
        self.cdf = np.concatenate(arrays)
        buckets = np.arange(1 << _LOOKUP_BITS, dtype=np.uint64) << np.uint64(_LOOKUP_SHIFT)
        # the last symbol whose interval starts at or before the bucket's first quantile
        self.lookup = np.stack([np.searchsorted(a[:-1], buckets, side="right").astype(np.int64) - 1 for a in arrays])

    def decode(self, payloads: Sequence[bytes], out: np.ndarray) -> list[str]:
        """Decode each payload (ANS words, little-endian uint32) into its row of ``out`` (frames, C * H * W).

        Returns one problem per frame, "" where the frame decoded.
        """
        words = np.frombuffer(b"".join(payloads), dtype="<u4")
        ends = np.cumsum([len(p) // 4 for p in payloads], dtype=np.int64)
        status = np.empty(len(payloads), dtype=np.int64)
        _decode(words, ends, self.cdf, self.cdf_start, self.lookup, self.lows, out.shape[1] // len(self.lows),
                out, status)  # fmt: skip
        return [PROBLEMS.get(int(s), "") for s in status]
