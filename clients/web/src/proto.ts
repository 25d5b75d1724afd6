/**
 * The two messages a browser exchanges with the edge server on its datachannels, in protobuf's wire
 * format (proto/splitserve/v1/edge_inference.proto): it writes Frame and reads Result.
 *
 * Written by hand rather than generated: the subset is two messages of scalar fields, the SDK stays
 * free of a protobuf runtime (its whole bundle budget is 150 KB), and tests check every field against
 * the Python side's protobuf in both directions. Unknown fields are skipped, as protobuf requires.
 */

export interface Frame {
  frameId: number;
  model: string;
  version?: string;
  bundleSha256?: string;
  codec: string;
  width: number;
  payload: Uint8Array;
  shape: number[];
  captureTimeUs?: number;
  deadlineMs?: number;
  tags?: Record<string, string>;
  topK?: number;
}

export const Status = {
  UNSPECIFIED: 0,
  OK: 1,
  DEADLINE_EXCEEDED: 2,
  INVALID_FRAME: 3,
  UNKNOWN_MODEL: 4,
  OVERLOADED: 5,
  INTERNAL: 6,
  UNAVAILABLE: 7,
} as const;

export type StatusName = keyof typeof Status;
const STATUS_NAMES = Object.fromEntries(Object.entries(Status).map(([k, v]) => [v, k])) as Record<number, StatusName>;

export function statusName(status: number): string {
  return STATUS_NAMES[status] ?? String(status);
}

export interface ClassScore {
  index: number;
  label: string;
  score: number;
}

export interface ServerTimings {
  receivedUnixUs: number;
  decodeMs: number;
  queueMs: number;
  tailMs: number;
  totalMs: number;
  batchSize: number;
}

export interface Result {
  frameId: number;
  status: number;
  topK: ClassScore[];
  timings: ServerTimings;
  error: string;
  model: string;
  version: string;
  width: number;
  tags: Record<string, string>;
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

class Writer {
  private bytes: number[] = [];

  varint(value: number): void {
    // values up to 2**53: split so that no bit operation truncates them to 32 bits
    let v = value;
    while (v >= 0x80) {
      this.bytes.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.bytes.push(v);
  }

  tag(field: number, wireType: number): void {
    this.varint(field * 8 + wireType);
  }

  uint(field: number, value: number | undefined): void {
    if (value) {
      this.tag(field, 0);
      this.varint(value);
    }
  }

  bytesField(field: number, value: Uint8Array): void {
    this.tag(field, 2);
    this.varint(value.length);
    for (const b of value) this.bytes.push(b);
  }

  string(field: number, value: string | undefined): void {
    if (value) this.bytesField(field, utf8.encode(value));
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }
}

/** Frame -> its serialized bytes (proto3: fields at their default are left out). */
export function encodeFrame(frame: Frame): Uint8Array {
  const w = new Writer();
  w.uint(1, frame.frameId);
  w.string(2, frame.model);
  w.string(3, frame.version);
  w.string(4, frame.bundleSha256);
  w.string(5, frame.codec);
  w.uint(6, frame.width);
  if (frame.payload.length) w.bytesField(7, frame.payload);
  if (frame.shape.length) {
    const packed = new Writer();
    for (const s of frame.shape) packed.varint(s);
    w.bytesField(8, packed.finish());
  }
  if (frame.captureTimeUs) w.uint(9, frame.captureTimeUs);
  w.uint(10, frame.deadlineMs);
  for (const [k, v] of Object.entries(frame.tags ?? {})) {
    const entry = new Writer();
    entry.string(1, k);
    entry.string(2, v);
    w.bytesField(11, entry.finish());
  }
  w.uint(12, frame.topK);
  return w.finish();
}

class Reader {
  pos = 0;
  constructor(readonly buf: Uint8Array) {}

  get done(): boolean {
    return this.pos >= this.buf.length;
  }

  varint(): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.buf.length) throw new RangeError("truncated varint");
      const b = this.buf[this.pos++];
      value += (b & 0x7f) * scale;
      if (b < 0x80) return value;
      scale *= 0x80;
    }
    throw new RangeError("varint longer than 10 bytes");
  }

  bytes(): Uint8Array {
    const n = this.varint();
    if (this.pos + n > this.buf.length) throw new RangeError("truncated field");
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  float(): number {
    if (this.pos + 4 > this.buf.length) throw new RangeError("truncated float");
    const v = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 4).getFloat32(0, true);
    this.pos += 4;
    return v;
  }

  skip(wireType: number): void {
    if (wireType === 0) this.varint();
    else if (wireType === 1) this.pos += 8;
    else if (wireType === 2) this.bytes();
    else if (wireType === 5) this.pos += 4;
    else throw new RangeError(`unsupported wire type ${wireType}`);
    if (this.pos > this.buf.length) throw new RangeError("truncated field");
  }

  /** Each field's number and wire type, until the end. */
  *fields(): Generator<[number, number]> {
    while (!this.done) {
      const key = this.varint();
      yield [Math.floor(key / 8), key % 8];
    }
  }
}

function readEntry(buf: Uint8Array): [string, string] {
  const r = new Reader(buf);
  let key = "";
  let value = "";
  for (const [field, type] of r.fields()) {
    if (field === 1 && type === 2) key = fromUtf8.decode(r.bytes());
    else if (field === 2 && type === 2) value = fromUtf8.decode(r.bytes());
    else r.skip(type);
  }
  return [key, value];
}

function readScore(buf: Uint8Array): ClassScore {
  const r = new Reader(buf);
  const s: ClassScore = { index: 0, label: "", score: 0 };
  for (const [field, type] of r.fields()) {
    if (field === 1 && type === 0) s.index = r.varint();
    else if (field === 2 && type === 2) s.label = fromUtf8.decode(r.bytes());
    else if (field === 3 && type === 5) s.score = r.float();
    else r.skip(type);
  }
  return s;
}

function readTimings(buf: Uint8Array): ServerTimings {
  const r = new Reader(buf);
  const t: ServerTimings = { receivedUnixUs: 0, decodeMs: 0, queueMs: 0, tailMs: 0, totalMs: 0, batchSize: 0 };
  const floats: Record<number, keyof ServerTimings> = { 2: "decodeMs", 3: "queueMs", 4: "tailMs", 5: "totalMs" };
  for (const [field, type] of r.fields()) {
    if (field === 1 && type === 0) t.receivedUnixUs = r.varint();
    else if (field in floats && type === 5) t[floats[field]] = r.float();
    else if (field === 6 && type === 0) t.batchSize = r.varint();
    else r.skip(type);
  }
  return t;
}

/** A Result's bytes -> the Result; RangeError for bytes that are not one. */
export function decodeResult(buf: Uint8Array): Result {
  const r = new Reader(buf);
  const out: Result = {
    frameId: 0, status: 0, topK: [], error: "", model: "", version: "", width: 0, tags: {},
    timings: { receivedUnixUs: 0, decodeMs: 0, queueMs: 0, tailMs: 0, totalMs: 0, batchSize: 0 },
  };
  for (const [field, type] of r.fields()) {
    if (field === 1 && type === 0) out.frameId = r.varint();
    else if (field === 2 && type === 0) out.status = r.varint();
    else if (field === 3 && type === 2) out.topK.push(readScore(r.bytes()));
    else if (field === 4 && type === 2) out.timings = readTimings(r.bytes());
    else if (field === 5 && type === 2) out.error = fromUtf8.decode(r.bytes());
    else if (field === 6 && type === 2) out.model = fromUtf8.decode(r.bytes());
    else if (field === 7 && type === 2) out.version = fromUtf8.decode(r.bytes());
    else if (field === 8 && type === 0) out.width = r.varint();
    else if (field === 9 && type === 2) {
      const [k, v] = readEntry(r.bytes());
      out.tags[k] = v;
    } else r.skip(type);
  }
  return out;
}
