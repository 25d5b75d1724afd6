// Byte parity with the Python device encoder: golden vectors that tests/test_web_sdk.py writes at
// test time (random tables and every shipped table), read from $SPLITSERVE_GOLDEN.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { ansEncode, EntropicEncoder, quantizedCdf, roundHalfEven } from "../dist/splitserve.js";

const path = process.env.SPLITSERVE_GOLDEN;
const golden = path ? JSON.parse(readFileSync(path, "utf8")) : null;
const hex = (bytes) => Buffer.from(bytes).toString("hex");

test("ties round to even, as numpy's rint", () => {
  assert.deepEqual([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999, -0.2].map(roundHalfEven), [-2, -2, -0, 0, 2, 2, 2, -0]);
});

test("a model needs two symbols and a positive sum", () => {
  assert.throws(() => quantizedCdf([1]), RangeError);
  assert.throws(() => quantizedCdf([0, 0]), RangeError);
  assert.throws(() => ansEncode([5], 1, [quantizedCdf([0.5, 0.5])]), /outside its table/);
});

test("golden vectors are there", { skip: !golden && "SPLITSERVE_GOLDEN not set (tests/test_web_sdk.py sets it)" }, () => {
  assert.ok(golden.ans.length > 0 && golden.entropic.length > 0);
});

for (const c of golden?.ans ?? []) {
  test(`ANS: ${c.name}`, () => {
    const cdfs = c.probabilities.map((p) => quantizedCdf(p));
    cdfs.forEach((cdf, i) => assert.deepEqual(Array.from(cdf), c.cdfs[i], `CDF of row ${i}`));
    assert.equal(hex(ansEncode(c.symbols, c.probabilities.length, cdfs)), c.payload);
  });
}

for (const c of golden?.entropic ?? []) {
  test(`entropic: ${c.name}`, () => {
    const tables = {
      medians: Float32Array.from(c.medians),
      offsets: Int32Array.from(c.offsets),
      freqs: c.freqs.map((f) => Float64Array.from(f)),
    };
    const encoder = new EntropicEncoder(tables, c.shape);
    const features = Float32Array.from(c.features);
    assert.deepEqual(Array.from(encoder.quantize(features)), c.symbols);
    assert.equal(hex(encoder.encode(features)), c.payload);
  });
}

for (const [i, c] of (golden?.frames ?? []).entries()) {
  test(`Frame ${i} serializes to the Python side's bytes`, async () => {
    const { encodeFrame } = await import("../dist/splitserve.js");
    const f = c.fields;
    const bytes = encodeFrame({ ...f, payload: Uint8Array.from(Buffer.from(f.payload, "hex")) });
    assert.equal(hex(bytes), c.bytes);
  });
}

for (const [i, c] of (golden?.results ?? []).entries()) {
  test(`Result ${i} reads as the Python side wrote it`, async () => {
    const { decodeResult, statusName } = await import("../dist/splitserve.js");
    const r = decodeResult(Uint8Array.from(Buffer.from(c.bytes, "hex")));
    assert.equal(r.frameId, c.frameId);
    assert.equal(r.status, c.status);
    assert.equal(r.error, c.error);
    assert.deepEqual(r.topK.map((s) => [s.index, s.label, s.score]), c.topK);
    assert.equal(r.timings.totalMs, c.totalMs);
    assert.equal(r.timings.batchSize, c.batchSize);
    assert.deepEqual(r.tags, c.tags);
    assert.equal(statusName(r.status), ["", "OK", "DEADLINE_EXCEEDED", "INVALID_FRAME"][c.status]);
  });
}

test("bytes that are not a Result are refused", async () => {
  const { decodeResult } = await import("../dist/splitserve.js");
  assert.throws(() => decodeResult(Uint8Array.from([0x0a, 0x05, 0x01])), RangeError);
  assert.throws(() => decodeResult(Uint8Array.from([0x08, 0xff])), RangeError);
});

for (const c of golden?.entropic ?? []) {
  test(`entropy.npz read in TypeScript codes as the tables do: ${c.name}`, async () => {
    const { parseNpz, tablesFromNpz, EntropicEncoder } = await import("../dist/splitserve.js");
    const tables = tablesFromNpz(parseNpz(new Uint8Array(readFileSync(c.npz))), c.width);
    assert.deepEqual(Array.from(tables.medians), c.medians);
    const encoder = new EntropicEncoder(tables, c.shape);
    assert.equal(hex(encoder.encode(Float32Array.from(c.features))), c.payload);
  });
}

for (const c of golden?.samples ?? []) {
  test(`sample ${c.npz.split("/").pop()} reads as numpy reads it`, async () => {
    const { parseNpz } = await import("../dist/splitserve.js");
    const arrays = parseNpz(new Uint8Array(readFileSync(c.npz)));
    assert.deepEqual(Object.keys(arrays).sort(), Object.keys(c.arrays).sort());
    for (const [name, want] of Object.entries(c.arrays)) {
      const got = arrays[name];
      assert.deepEqual(got.shape, want.shape, name);
      assert.equal(Array.from(got.data).reduce((a, b) => a + Number(b), 0), want.sum, name);
      assert.deepEqual(Array.from(got.data.subarray(0, 16), Number), want.first, name);
    }
  });
}

for (const [i, trace] of (golden?.planner ?? []).entries()) {
  test(`the adaptive loop chooses the Python side's widths on trace ${i}`, async () => {
    const { BandwidthMonitor, AdaptivePolicy, FramePlanner, WidthCost } = await import("../dist/splitserve.js");
    let now = 0;
    const widths = [[480, 5.8, 0.58], [920, 5.5, 0.81], [1420, 6.2, 0.82], [2520, 6.4, 0.88], [4700, 7.0, 0.89]];
    const planner = new FramePlanner(
      new AdaptivePolicy(widths.map(([b, h, a]) => new WidthCost(b, h, a)), 17.0, 23.0),
      new BandwidthMonitor(() => now),
    );
    let plans = 0;
    const close = (a, b) => (a === null ? b === null : Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b)));
    for (const e of trace.events) {
      now = e.t;
      if (e.op === "result") planner.result(e.bytes, e.elapsed, e.server);
      else if (e.op === "encoded") planner.encoded(e.width, e.bytes, e.head);
      else {
        const [d, est] = planner.plan(e.deadline, true, e.pending);
        assert.deepEqual([d.local, d.width, d.probe], e.decision, `plan at ${e.t}`);
        const got = [est.bandwidthBps, est.rttMs, est.sigma, est.backlogBytes];
        got.forEach((v, k) => assert.ok(close(v, e.estimate[k]), `estimate ${k} at ${e.t}: ${v} vs ${e.estimate[k]}`));
        plans += 1;
      }
    }
    assert.ok(plans >= 500);
    const used = new Set(trace.events.filter((e) => e.op === "plan").map((e) => (e.decision[0] ? "local" : e.decision[1])));
    assert.ok(used.size >= 3, `the trace should exercise several widths, got ${[...used]}`);
  });
}

test("erfc matches known values", async () => {
  const { erfc } = await import("../dist/splitserve.js");
  for (const [x, want] of [[0, 1], [0.5, 0.4795001221869535], [1, 0.15729920705028513], [2, 0.004677734981047266],
    [3, 2.209049699858544e-5], [-1, 1.8427007929497148], [6, 2.1519736712498913e-17]]) {
    assert.ok(Math.abs(erfc(x) - want) <= 1e-14 * Math.max(want, 1e-3), `erfc(${x}) = ${erfc(x)}, want ${want}`);
  }
});

for (const [i, c] of (golden?.pieces ?? []).entries()) {
  test(`parity pieces ${i} are the Python side's bytes`, async () => {
    const { splitPieces, parityWireBytes } = await import("../dist/splitserve.js");
    const message = Uint8Array.from(Buffer.from(c.message, "hex"));
    assert.deepEqual(splitPieces(message, c.group, c.bodyBytes).map(hex), c.pieces);
    assert.equal(parityWireBytes(message.length, 53), c.wireBytes);
  });
}
