/**
 * numpy's .npz (a zip of .npy files, deflated by savez_compressed): how a bundle ships its entropy
 * tables and sample frames. Only what those hold is read: little-endian numbers, C order.
 */

import { unzipSync } from "fflate";

export interface NdArray {
  dtype: string;
  shape: number[];
  data: Float32Array | Float64Array | Int32Array | Uint8Array | Int8Array | Int16Array | Uint16Array | Uint32Array;
}

const TYPES: Record<string, (b: ArrayBuffer, o: number, n: number) => NdArray["data"]> = {
  "<f4": (b, o, n) => new Float32Array(b, o, n),
  "<f8": (b, o, n) => new Float64Array(b, o, n),
  "<i4": (b, o, n) => new Int32Array(b, o, n),
  "<u4": (b, o, n) => new Uint32Array(b, o, n),
  "<i2": (b, o, n) => new Int16Array(b, o, n),
  "<u2": (b, o, n) => new Uint16Array(b, o, n),
  "|u1": (b, o, n) => new Uint8Array(b, o, n),
  "|i1": (b, o, n) => new Int8Array(b, o, n),
  // int64 values here are table frequencies and labels, far below 2**53: read as float64-exact numbers
  "<i8": (b, o, n) => Float64Array.from(new BigInt64Array(b, o, n), (v) => Number(v)),
};

/** One .npy file's array. */
export function parseNpy(bytes: Uint8Array): NdArray {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (bytes.length < 10 || magic.some((m, i) => bytes[i] !== m)) throw new RangeError("not a .npy file");
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new RangeError(`cannot read the .npy header ${header}`);
  if (fortran === "True") throw new RangeError("Fortran-order arrays are not supported");
  const make = TYPES[descr];
  if (!make) throw new RangeError(`unsupported dtype ${descr}`);
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  // copy out: typed arrays need an offset aligned to their element size
  const body = bytes.slice(start + headerLength);
  return { dtype: descr, shape, data: make(body.buffer, 0, count) };
}

/** Every array of an .npz, by name (without the .npy suffix). */
export function parseNpz(bytes: Uint8Array): Record<string, NdArray> {
  const files = unzipSync(bytes);
  const out: Record<string, NdArray> = {};
  for (const [name, data] of Object.entries(files)) {
    if (name.endsWith(".npy")) out[name.slice(0, -4)] = parseNpy(data);
  }
  return out;
}
