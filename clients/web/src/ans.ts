/**
 * constriction's ANS encoder in TypeScript: the same bytes as the Python device encoder
 * (src/splitserve/codecs/ans.py) and constriction itself, so the edge server decodes a
 * browser's frames unchanged.
 *
 * - quantizedCdf: constriction's "fast" quantization of float probabilities into a 24-bit
 *   fixed-point CDF (Categorical(probabilities, perfect=false));
 * - encode: the default ANS stack coder (64-bit state, 32-bit words, 24-bit precision),
 *   rows coded last to first, each row's symbols last to first (encode_reverse), then
 *   get_compressed() as little-endian uint32 words.
 *
 * The 64-bit state is kept as two uint32 halves: every intermediate stays below 2**53, so
 * plain numbers compute it exactly (BigInt would, ~20x slower).
 */

export const PRECISION = 24;
const TWO24 = 2 ** 24;

/** The left-sided CDF (n + 1 entries, ending at 2**24); each symbol gets at least one unit. */
export function quantizedCdf(probabilities: ArrayLike<number>): Uint32Array {
  const n = probabilities.length;
  if (n < 2 || n >= TWO24 - 1) {
    throw new RangeError(`a categorical model needs 2 .. 2**24 - 2 symbols, got ${n}`);
  }
  // sequential sums in float64, as Rust's iterator sum and numpy's add.accumulate
  const running = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    sum += probabilities[i];
    running[i] = sum;
  }
  if (!Number.isFinite(sum) || sum <= 0) throw new RangeError("probabilities must have a positive, finite sum");
  const scale = (TWO24 - n) / sum;
  const cdf = new Uint32Array(n + 1);
  for (let i = 0; i < n; i++) {
    const left = i === 0 ? 0 : running[i - 1] * scale;
    cdf[i] = Math.trunc(left) + i; // truncation toward zero, then one unit per symbol before it
  }
  cdf[n] = TWO24;
  return cdf;
}

/**
 * Rows of symbols (row c coded with cdfs[c]) to the coder's words as bytes.
 * symbols: row-major (rows x perRow) symbol indices; each must be a valid index of its row's CDF.
 */
export function encode(symbols: ArrayLike<number>, rows: number, cdfs: readonly Uint32Array[]): Uint8Array {
  if (cdfs.length !== rows) throw new RangeError(`${rows} rows need ${rows} CDFs, got ${cdfs.length}`);
  const perRow = rows ? symbols.length / rows : 0;
  if (!Number.isInteger(perRow)) throw new RangeError(`${symbols.length} symbols do not split into ${rows} rows`);
  let hi = 0; // state = hi * 2**32 + lo, both uint32
  let lo = 0;
  const words: number[] = [];
  for (let c = rows - 1; c >= 0; c--) {
    const cdf = cdfs[c];
    const top = cdf.length - 2;
    for (let i = perRow - 1; i >= 0; i--) {
      const s = symbols[c * perRow + i];
      if (!(s >= 0 && s <= top && Number.isInteger(s))) {
        throw new RangeError(`symbol ${s} of row ${c} is outside its table (0..${top})`);
      }
      const left = cdf[s];
      const p = cdf[s + 1] - left;
      if (hi >>> 8 >= p) {
        // state >> 40 >= p: renormalize, push the low word
        words.push(lo);
        lo = hi;
        hi = 0;
      }
      // q = floor(state / p), r = state % p, in two steps that stay exact in float64: hi < p * 2**8 after
      // renormalization, so a < 2**40 and b < 2**48, and each quotient's distance from the next integer
      // (at least 1/p) is wider than half its spacing. q = q1 * 2**24 + q0 with q0 < 2**24.
      const a = hi * 256 + (lo >>> 24);
      const q1 = Math.floor(a / p);
      const b = (a - q1 * p) * TWO24 + (lo & 0xffffff);
      const q0 = Math.floor(b / p);
      const r = b - q0 * p;
      // state = (q << 24) | (r + left), r + left < 2**24
      lo = ((q0 & 255) * TWO24 + r + left) >>> 0;
      hi = q1 * 65536 + (q0 >>> 8);
    }
  }
  if (hi) words.push(lo, hi);
  else if (lo) words.push(lo);
  const out = new Uint8Array(words.length * 4);
  const view = new DataView(out.buffer);
  words.forEach((w, i) => view.setUint32(4 * i, w, true));
  return out;
}
