"""Entropy coder speed: our entropic codec vs compressai's own rANS coder, on the same latents.

    python benchmarks/codec_speed.py [--model lite0-imagenet] [--frames 32] [--seconds 2]

Both coders code the same symbols with the same integer tables: the bundle's
per-channel frequencies (compressai's quantized CDFs after ``update()``, less the
escape bin), for real latents of the model's sample images at every width. For
compressai the CDF rows get their escape bin back, so its coder sees exactly the
tables it was trained to produce. Reported per width, per coder:

  encode / decode   frames/s and symbols/s, one thread
  ours: constriction's encoder (what devices run), and on the server side
        constriction's decoder one frame at a time (the old server path),
        codecs.ansdecoder one frame at a time, and codecs.ansdecoder a batch of
        --frames frames in one call (the server's path: frames advance in lockstep)
  decode x2 threads frames/s with two threads decoding at once (does the coder
                    release the GIL? 2x if it does, 1x if it does not)

compressai's rANS is timed twice: on Python lists built beforehand (the coder
alone) and with the tensor <-> list conversion its EntropyBottleneck does on
every call. The round trip must be byte-exact: every decoded symbol equals the
encoded one, and our decoder's tensor equals the bundle's own dequantization.
Prints a table and writes benchmarks/results/codec_speed_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import constriction
import numpy as np
import torch

from splitserve.data.samples import load_sample
from splitserve.models.zoo import load


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Calls of ``fn`` per second (it returns how many frames it did), after one warm-up call."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def threaded_rate(fn: Callable[[], int], threads: int, seconds: float) -> float:
    """Frames/s of ``threads`` threads each calling ``fn`` for ``seconds``."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            counts[i] += fn()

    t0 = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def constriction_decode(payload: bytes, models: list, per_channel: int) -> np.ndarray:
    """(C, per_channel) symbols by constriction's own decoder: what the server ran before codecs.ansdecoder."""
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    return np.stack([coder.decode(m, per_channel) for m in models])


def compressai_tables(freqs: tuple[np.ndarray, ...]) -> tuple[list[list[int]], list[int], list[int]]:
    """compressai's (cdfs, cdf_lengths, offsets) for our frequency tables: the escape bin put back."""
    cdfs = []
    for f in freqs:
        cdf = np.concatenate([[0], np.cumsum(f)])
        if cdf[-1] >= 1 << 16:
            raise ValueError("tables are not 16-bit: compressai's coder cannot use them")
        cdfs.append([int(v) for v in cdf] + [1 << 16])  # escape bin: what the tables leave of 2^16
    return cdfs, [len(c) for c in cdfs], [0] * len(cdfs)


def bench_width(bundle, width: int, images: np.ndarray, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    from compressai import ans

    enc = bundle.encoder_for("entropic", width)
    dec = bundle.decoder_for("entropic", width)
    tables = bundle.entropy_tables(width)
    shape = bundle.latent_shape(width)
    with torch.inference_mode():
        head = bundle.device_stage("entropic", width)
        ys = [head(bundle.preprocess()(torch.from_numpy(img[None])))[0] for img in images]
    symbols = [enc.quantize(y) for y in ys]  # (C, H*W) int32
    n_sym = int(symbols[0].size)

    # ours
    payloads = [enc.encode(y) for y in ys]
    batch = np.empty((len(payloads), *shape), dtype=np.float32)
    if any(dec.decode_batch(payloads, batch)):
        raise AssertionError(f"width {width}: a batch did not decode")
    models = [constriction.stream.model.Categorical(f / f.sum(), perfect=False) for f in tables.freqs]
    for y, s, p, row in zip(ys, symbols, payloads, batch, strict=True):
        expected = tables.dequantize(y[None])[0]
        if not (torch.equal(dec.decode(p, shape), expected) and torch.equal(torch.from_numpy(row), expected)):
            raise AssertionError(f"width {width}: round trip is not exact")
        if not np.array_equal(constriction_decode(p, models, shape[1] * shape[2]), s):
            raise AssertionError(f"width {width}: constriction decodes other symbols")

    # compressai's rANS on the same symbols, channel-major like ours
    cdfs, lengths, offsets = compressai_tables(tables.freqs)
    indexes = np.repeat(np.arange(shape[0], dtype=np.int32), shape[1] * shape[2])
    index_list = indexes.tolist()
    symbol_lists = [s.reshape(-1).tolist() for s in symbols]
    rans_enc, rans_dec = ans.RansEncoder(), ans.RansDecoder()
    cai = [rans_enc.encode_with_indexes(s, index_list, cdfs, lengths, offsets) for s in symbol_lists]
    for s, p in zip(symbols, cai, strict=True):
        out = np.asarray(rans_dec.decode_with_indexes(p, index_list, cdfs, lengths, offsets), dtype=np.int32)
        if not np.array_equal(out, s.reshape(-1)):
            raise AssertionError(f"width {width}: compressai round trip is not exact")

    def ours_encode() -> int:
        for y in ys:
            enc.encode(y)
        return len(ys)

    def constriction_one() -> int:
        for p in payloads:
            constriction_decode(p, models, shape[1] * shape[2])
        return len(payloads)

    def ours_decode() -> int:
        for p in payloads:
            dec.decode(p, shape)
        return len(payloads)

    def ours_decode_batch() -> int:  # each call its own output: threads may call it at once
        dec.decode_batch(payloads, np.empty((len(payloads), *shape), dtype=np.float32))
        return len(payloads)

    def cai_encode() -> int:
        for s in symbol_lists:
            rans_enc.encode_with_indexes(s, index_list, cdfs, lengths, offsets)
        return len(symbol_lists)

    def cai_decode() -> int:
        for p in cai:
            rans_dec.decode_with_indexes(p, index_list, cdfs, lengths, offsets)
        return len(cai)

    def cai_decode_tensors() -> int:  # what EntropyBottleneck.decompress pays: lists in, a tensor out
        for p in cai:
            out = rans_dec.decode_with_indexes(p, indexes.tolist(), cdfs, lengths, offsets)
            torch.tensor(out, dtype=torch.float32).reshape(shape)
        return len(cai)

    row: dict = {"width": width, "latent_shape": list(shape), "symbols_per_frame": n_sym,
                 "bytes_per_frame": {"ours": float(np.mean([len(p) for p in payloads])),
                                     "compressai": float(np.mean([len(p) for p in cai]))},
                 "round_trip_exact": True}  # fmt: skip
    for name, fn in (("ours_encode", ours_encode), ("constriction_decode", constriction_one),
                     ("ours_decode", ours_decode), ("ours_decode_batch", ours_decode_batch),
                     ("compressai_encode", cai_encode), ("compressai_decode", cai_decode),
                     ("compressai_decode_with_tensors", cai_decode_tensors)):  # fmt: skip
        fps = rate(fn, seconds)
        row[name] = {"frames_per_s": fps, "symbols_per_s": fps * n_sym}
    for name, fn in (("ours_decode_batch", ours_decode_batch), ("compressai_decode", cai_decode)):
        row[name]["frames_per_s_2_threads"] = threaded_rate(fn, 2, seconds)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite0-imagenet")
    p.add_argument("--frames", type=int, default=32, help="sample images encoded; also the size of the decoded batch")
    p.add_argument("--seconds", type=float, default=2.0, help="timing window per measurement")
    p.add_argument("--json", type=Path, help="default: benchmarks/results/codec_speed_<model>.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    bundle = load(args.model)
    images, _ = load_sample(bundle.manifest.get("sample") or "")
    images = images[: args.frames]
    rows = [bench_width(bundle, w, images, args.seconds) for w in range(bundle.width_count)]

    head = (f"{'width':>5} {'symbols':>8} {'enc ours':>9} {'enc cai':>8} {'dec constr':>10} {'dec ours':>9} "
            f"{'dec batch':>9} {'dec cai':>8} {'cai+lists':>9} {'batch/cai':>9} {'batch 2thr':>10} {'cai 2thr':>8} "
            f"{'Msym/s batch':>12}")  # fmt: skip
    print(f"{args.model}: frames/s, one thread unless said (load average {os.getloadavg()[0]:.2f}; "
          f"batches of {len(images)} frames)")  # fmt: skip
    print(head + "\n" + "-" * len(head))
    for r in rows:
        ob, cd = r["ours_decode_batch"], r["compressai_decode"]
        print(f"{r['width']:>5} {r['symbols_per_frame']:>8} {r['ours_encode']['frames_per_s']:>9.0f} "
              f"{r['compressai_encode']['frames_per_s']:>8.0f} {r['constriction_decode']['frames_per_s']:>10.0f} "
              f"{r['ours_decode']['frames_per_s']:>9.0f} {ob['frames_per_s']:>9.0f} {cd['frames_per_s']:>8.0f} "
              f"{r['compressai_decode_with_tensors']['frames_per_s']:>9.0f} "
              f"{ob['frames_per_s'] / cd['frames_per_s']:>9.2f} {ob['frames_per_s_2_threads']:>10.0f} "
              f"{cd['frames_per_s_2_threads']:>8.0f} {ob['symbols_per_s'] / 1e6:>12.1f}")  # fmt: skip
    print("\nenc: constriction (ours) and compressai's RansEncoder; dec constr: constriction's decoder, a frame at "
          "a time; dec ours: codecs.ansdecoder a frame at a time; dec batch: codecs.ansdecoder on the whole batch "
          "in one call (the server's path); cai = compressai's RansDecoder on prebuilt lists, cai+lists with the "
          "tensor<->list conversion EntropyBottleneck does; 2thr: two threads at once (no gain = the coder holds "
          "the GIL); every round trip checked symbol-exact")  # fmt: skip
    out = {
        "model": args.model,
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "rows": rows,
    }
    args.json = args.json or Path(__file__).parent / "results" / f"codec_speed_{args.model}.json"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
