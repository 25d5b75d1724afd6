"""The entropic codec: quantized bottleneck features, entropy-coded with a learned prior.

The prior is a factorized one (compressai's EntropyBottleneck): one discrete
distribution per channel, shipped in the bundle as integer frequency tables that
were fixed once, after training, by ``EntropyBottleneck.update()``. Device and
server build their coding models from those integers alone, so both sides code
with identical models on any machine; nothing is recomputed from float weights.

The stream format is constriction's ANS (a Rust library) rather than compressai's
rANS binding: the server decodes payloads from untrusted devices, and compressai's
decoder reads past the end of a crafted payload (it has no bounds checks and can
loop on escape codes). Devices encode with constriction (or ``codecs.ans``, the
same bytes); the server decodes whole batches with ``codecs.ansdecoder``, a
bounds-checked compiled kernel that runs outside the GIL (constriction where numba
is missing). Either checks that a payload was consumed exactly: a corrupt or
truncated payload fails that check and becomes a CodecError instead of silently
decoding to garbage.

Payload: the ANS words (little-endian uint32). Symbols are coded channel by
channel; a value outside a channel's table range is clamped to the range's edge
(the tables cover all but ~1e-9 of the probability mass, so clamping is lossless
in practice and keeps the stream free of escape codes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from splitserve.codecs import ans
from splitserve.codecs.base import CodecError, Decoder, Encoder, PayloadKind, as_array, numel, to_tensor

try:
    import constriction
except ModuleNotFoundError:  # Linux on ARM has no wheel: a device encodes with codecs.ans, the same bytes
    constriction = None
try:  # the server's decoder: compiled, and free of the GIL (numba comes with splitserve[server])
    from splitserve.codecs import ansdecoder
except ModuleNotFoundError:
    ansdecoder = None

if TYPE_CHECKING:  # a device codes numpy arrays without torch; training and the server pass tensors
    import torch

# A symbol costs at most ~24 bits in the coder's 24-bit precision, so a valid
# payload for n symbols never exceeds this many bytes (plus the final word).
_MAX_BYTES_PER_SYMBOL = 4


@dataclass(frozen=True)
class EntropyTables:
    """The factorized prior of one width: per channel, a median and integer frequencies.

    Symbol k of channel c stands for the value ``medians[c] + offsets[c] + k``.
    """

    medians: np.ndarray  # float32 (C,)
    offsets: np.ndarray  # int32 (C,)
    freqs: tuple[np.ndarray, ...]  # C arrays of int64 frequencies, one per channel

    def __post_init__(self) -> None:
        c = len(self.freqs)
        if self.medians.shape != (c,) or self.offsets.shape != (c,):
            raise ValueError(
                f"entropy tables disagree on the channel count: {c} frequency tables, "
                f"medians {self.medians.shape}, offsets {self.offsets.shape}"
            )
        if not np.all(np.isfinite(self.medians)):
            raise ValueError("entropy tables hold non-finite medians")
        for i, f in enumerate(self.freqs):
            if f.ndim != 1 or len(f) < 1 or np.any(f < 0) or f.sum() <= 0:
                raise ValueError(f"entropy table of channel {i} is not a valid frequency table")

    @property
    def channels(self) -> int:
        return len(self.freqs)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flatten into named arrays for an .npz file."""
        lengths = np.array([len(f) for f in self.freqs], dtype=np.int32)
        padded = np.zeros((self.channels, int(lengths.max())), dtype=np.int64)
        for i, f in enumerate(self.freqs):
            padded[i, : len(f)] = f
        return {
            f"{prefix}medians": self.medians.astype(np.float32),
            f"{prefix}offsets": self.offsets.astype(np.int32),
            f"{prefix}lengths": lengths,
            f"{prefix}freqs": padded,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> EntropyTables:
        try:
            medians = np.asarray(arrays[f"{prefix}medians"], dtype=np.float32)
            offsets = np.asarray(arrays[f"{prefix}offsets"], dtype=np.int32)
            lengths = np.asarray(arrays[f"{prefix}lengths"], dtype=np.int64)
            padded = np.asarray(arrays[f"{prefix}freqs"], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"entropy tables are missing array {exc}") from None
        if padded.ndim != 2 or lengths.shape != (padded.shape[0],) or np.any(lengths > padded.shape[1]):
            raise ValueError("entropy tables have inconsistent frequency table lengths")
        freqs = tuple(padded[i, : int(n)].copy() for i, n in enumerate(lengths))
        return cls(medians=medians, offsets=offsets, freqs=freqs)

    def dequantize(self, y: torch.Tensor) -> torch.Tensor:
        """What the decoder will see for features y (B, C, H, W): the codec's rounding and clamping.

        Bit-identical to encoding then decoding, without the coder (for training and evaluation).
        """
        import torch  # training and evaluation only: devices never call this

        lows = torch.from_numpy((self.medians + self.offsets).astype(np.float32)).to(y.device).view(1, -1, 1, 1)
        top = torch.tensor([len(f) - 1 for f in self.freqs], dtype=y.dtype, device=y.device).view(1, -1, 1, 1)
        sym = torch.round(y.float() - lows).clamp_(min=0).minimum(top)
        return sym + lows

    @classmethod
    def from_quantized_cdf(
        cls, medians: np.ndarray, offsets: np.ndarray, quantized_cdf: np.ndarray, cdf_lengths: np.ndarray
    ) -> EntropyTables:
        """From compressai's ``EntropyBottleneck`` buffers after ``update()``.

        compressai's CDF rows end with an escape bin for out-of-range values; we
        clamp instead of escaping, so that bin is dropped.
        """
        freqs = []
        for row, n in zip(np.asarray(quantized_cdf), np.asarray(cdf_lengths), strict=True):
            cdf = np.asarray(row[: int(n)], dtype=np.int64)
            freqs.append(np.diff(cdf)[:-1])
        return cls(
            medians=np.asarray(medians, dtype=np.float32).reshape(-1),
            offsets=np.asarray(offsets, dtype=np.int32).reshape(-1),
            freqs=tuple(freqs),
        )


class _Models:
    """The coding models of one table set, built once (building them is the slow part).

    ``cdfs``: constriction's fixed-point CDFs, for ``codecs.ans`` (encoding without constriction)
    and ``codecs.ansdecoder``; ``models``: constriction's own, where it is installed.
    """

    def __init__(self, tables: EntropyTables) -> None:
        self.tables = tables
        probabilities = [f.astype(np.float64) / float(f.sum()) for f in tables.freqs]
        self.cdfs = [ans.quantized_cdf(p) for p in probabilities]
        if constriction is not None:
            self.models = [constriction.stream.model.Categorical(p, perfect=False) for p in probabilities]
        self.lows = (tables.medians + tables.offsets).astype(np.float32)
        self.max_index = np.array([len(f) - 1 for f in tables.freqs], dtype=np.int64)


def _latent_shape(tables: EntropyTables, shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] != tables.channels:
        raise ValueError(
            f"entropic codec needs a (C, H, W) shape with C = {tables.channels} channels, got {list(shape)}"
        )
    return shape  # type: ignore[return-value]


class EntropicEncoder(Encoder):
    codec_id = "entropic"
    kind = PayloadKind.LATENT

    def __init__(self, tables: EntropyTables, shape: Sequence[int]) -> None:
        self.shape = _latent_shape(tables, shape)
        self._m = _Models(tables)

    def quantize(self, y: np.ndarray | torch.Tensor) -> np.ndarray:
        """Symbol indices (C, H*W) for features y (C, H, W), an array or a tensor."""
        if tuple(y.shape) != self.shape:
            raise CodecError(f"entropic: features have shape {list(y.shape)}, expected {list(self.shape)}")
        x = as_array(y).astype(np.float32, copy=False).reshape(self.shape[0], -1)
        sym = np.rint(x - self._m.lows[:, None]).astype(np.int64)
        np.clip(sym, 0, self._m.max_index[:, None], out=sym)
        return sym.astype(np.int32)

    def encode(self, data: np.ndarray | torch.Tensor) -> bytes:
        sym = self.quantize(data)
        if constriction is None:
            return ans.encode(sym, self._m.cdfs)
        coder = constriction.stream.stack.AnsCoder()
        for c in range(sym.shape[0] - 1, -1, -1):  # a stack: encode in reverse of decoding order
            coder.encode_reverse(sym[c], self._m.models[c])
        return coder.get_compressed().astype("<u4").tobytes()

    def dequantize(self, sym: np.ndarray) -> torch.Tensor:
        y = sym.astype(np.float32) + self._m.lows[:, None]
        return to_tensor(y.reshape(self.shape))


class EntropicDecoder(Decoder):
    """Decodes with ``codecs.ansdecoder`` (a batch in one call, outside the GIL) where numba is
    installed, else with constriction one frame at a time; both read the same bytes."""

    codec_id = "entropic"
    kind = PayloadKind.LATENT

    def __init__(self, tables: EntropyTables, shape: Sequence[int]) -> None:
        super().__init__(_latent_shape(tables, shape))
        if constriction is None and ansdecoder is None:
            raise CodecError("entropic: decoding needs constriction or numba: pip install 'splitserve[server]'")
        self._per_channel = self.shape[1] * self.shape[2]
        self._max_bytes = numel(self.shape) * _MAX_BYTES_PER_SYMBOL + 8
        self._m = _Models(tables)
        if ansdecoder is not None:
            self._kernel = ansdecoder.AnsTables(self._m.cdfs, self._m.lows)

    def _size_problem(self, payload: bytes) -> str:
        if not payload or len(payload) % 4 or len(payload) > self._max_bytes:
            return (
                f"entropic: payload of {len(payload)} bytes cannot hold {list(self.shape)} features "
                f"(expected a non-empty multiple of 4 bytes, at most {self._max_bytes})"
            )
        return ""

    def decode(self, payload: bytes, shape: Sequence[int]) -> torch.Tensor:
        self.check_shape(shape)
        out = np.empty((1, *self.shape), dtype=np.float32)
        problem = self.decode_batch([payload], out)[0]
        if problem:
            raise CodecError(problem)
        return to_tensor(out[0])

    def decode_batch(self, payloads: Sequence[bytes], out: np.ndarray) -> list[str]:
        problems = [self._size_problem(p) for p in payloads]
        good = [i for i, problem in enumerate(problems) if not problem]
        if ansdecoder is None:
            for i in good:
                problems[i] = self._decode_constriction(payloads[i], out[i])
            return problems
        direct = len(good) == len(payloads) and out.flags.c_contiguous
        if direct:
            rows = out.reshape(len(out), numel(self.shape))  # a view: the kernel writes straight into out
        else:
            rows = np.empty((len(good), numel(self.shape)), dtype=np.float32)
        kernel_problems = self._kernel.decode([payloads[i] for i in good], rows)
        for row, i, problem in zip(rows, good, kernel_problems, strict=True):
            problems[i] = f"entropic: corrupt payload ({problem})" if problem else ""
            if not direct:
                out[i] = row.reshape(self.shape)
        return problems

    def _decode_constriction(self, payload: bytes, out: np.ndarray) -> str:
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            sym = np.stack([coder.decode(m, self._per_channel) for m in self._m.models])
            consumed = coder.is_empty()
        except (ValueError, RuntimeError) as exc:
            return f"entropic: corrupt payload ({exc})"
        if not consumed:
            return "entropic: corrupt payload (the stream does not end where the features do)"
        out[...] = (sym.astype(np.float32) + self._m.lows[:, None]).reshape(self.shape)
        return ""
