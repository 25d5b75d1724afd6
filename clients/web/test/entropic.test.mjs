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
