/**
 * The entropic codec's device side, as src/splitserve/codecs/entropic.py does it: bottleneck
 * features -> symbols (rounded around each channel's table, clamped into it) -> ANS words.
 *
 * A width's tables are the integer frequencies the bundle ships (entropy.npz); the coding models
 * are built from those integers alone, exactly as the server builds its own, so both sides code
 * with identical models on any machine.
 */

import { encode, quantizedCdf } from "./ans.js";

/** One width's factorized prior: per channel a median, an offset and integer frequencies. */
export interface EntropyTables {
  medians: Float32Array;
  offsets: Int32Array;
  freqs: Float64Array[];
}

export class EntropicEncoder {
  readonly channels: number;
  readonly perChannel: number;
  private readonly cdfs: Uint32Array[];
  private readonly lows: Float32Array;
  private readonly maxIndex: Int32Array;

  /** shape: the latent's (C, H, W) at this width. */
  constructor(tables: EntropyTables, readonly shape: readonly [number, number, number]) {
    const c = tables.freqs.length;
    if (shape[0] !== c || tables.medians.length !== c || tables.offsets.length !== c) {
      throw new RangeError(`entropic: tables for ${c} channels do not fit a latent of shape [${shape.join(", ")}]`);
    }
    this.channels = c;
    this.perChannel = shape[1] * shape[2];
    this.cdfs = tables.freqs.map((f) => {
      let total = 0;
      for (const v of f) total += v;
      return quantizedCdf(Float64Array.from(f, (v) => v / total));
    });
    // float32 medians + int32 offsets add in float64 in numpy, then round to float32
    this.lows = Float32Array.from(tables.medians, (m, i) => m + tables.offsets[i]);
    this.maxIndex = Int32Array.from(tables.freqs, (f) => f.length - 1);
  }

  /** Symbol indices (C x H*W, row-major) of features y (C, H, W, row-major float32). */
  quantize(y: Float32Array): Int32Array {
    if (y.length !== this.channels * this.perChannel) {
      throw new RangeError(`entropic: ${y.length} features, expected ${this.channels * this.perChannel}`);
    }
    const sym = new Int32Array(y.length);
    for (let c = 0; c < this.channels; c++) {
      const low = this.lows[c];
      const top = this.maxIndex[c];
      for (let i = c * this.perChannel, end = i + this.perChannel; i < end; i++) {
        const k = roundHalfEven(Math.fround(y[i] - low)); // the difference in float32, as numpy takes it
        sym[i] = k < 0 ? 0 : k > top ? top : k;
      }
    }
    return sym;
  }

  /** The payload the server decodes: the ANS words of the quantized features. */
  encode(y: Float32Array): Uint8Array {
    return encode(this.quantize(y), this.channels, this.cdfs);
  }
}

/** numpy's rint: to the nearest integer, ties to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // ties toward +infinity
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** One width's tables from a bundle's entropy.npz (arrays w<W>_medians, _offsets, _lengths, _freqs). */
export function tablesFromNpz(arrays: Record<string, import("./npz.js").NdArray>, width: number): EntropyTables {
  const get = (key: string) => {
    const a = arrays[`w${width}_${key}`];
    if (!a) throw new RangeError(`entropy tables have no width ${width} (${key} missing)`);
    return a;
  };
  const lengths = get("lengths").data;
  const padded = get("freqs");
  const cols = padded.shape[1];
  const freqs = Array.from(lengths, (n, c) => Float64Array.from(padded.data.subarray(c * cols, c * cols + n)));
  return {
    medians: Float32Array.from(get("medians").data),
    offsets: Int32Array.from(get("offsets").data),
    freqs,
  };
}
