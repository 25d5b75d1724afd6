/**
 * The head in onnxruntime-web: the bundle's exported graphs (uint8 (1, H, W, C) frame -> features
 * (1, C, h, w); where the head starts with the teacher's first layers, those are one graph that every
 * width's graph continues from), then the entropic codec. The normalisation is inside the graphs, so a
 * frame needs only to be the model's size: pixels in, bytes out, as the Python onnx runtime does it.
 */

import * as ort from "onnxruntime-web/wasm";

import type { Bundle } from "./bundle.js";
import { EntropicEncoder, tablesFromNpz } from "./entropic.js";

export interface Encoded {
  width: number;
  payload: Uint8Array;
  shape: [number, number, number];
  headMs: number;
}

export interface HeadOptions {
  /** where onnxruntime's .wasm files are served from (the edge server serves them at /demo/ort/) */
  wasmPaths?: string;
  threads?: number;
}

export class HeadRunner {
  private sessions = new Map<number, ort.InferenceSession>();
  private prefix: ort.InferenceSession | null = null;
  private encoders: EntropicEncoder[];

  private constructor(readonly bundle: Bundle) {
    this.encoders = bundle.manifest.widths.map(
      (w, i) => new EntropicEncoder(tablesFromNpz(bundle.entropy, i), w.latent_shape),
    );
  }

  static async create(bundle: Bundle, options: HeadOptions = {}): Promise<HeadRunner> {
    if (options.wasmPaths) ort.env.wasm.wasmPaths = options.wasmPaths;
    // threads need cross-origin isolation (SharedArrayBuffer); one thread otherwise
    const isolated = typeof crossOriginIsolated !== "undefined" && crossOriginIsolated;
    ort.env.wasm.numThreads = isolated ? (options.threads ?? 2) : 1;
    const head = new HeadRunner(bundle);
    if (bundle.prefix) head.prefix = await ort.InferenceSession.create(bundle.prefix, { executionProviders: ["wasm"] });
    return head;
  }

  get widths(): number {
    return this.encoders.length;
  }

  private async session(width: number): Promise<ort.InferenceSession> {
    let s = this.sessions.get(width);
    if (!s) {
      s = await ort.InferenceSession.create(this.bundle.heads[width], { executionProviders: ["wasm"] });
      this.sessions.set(width, s);
    }
    return s;
  }

  /** The width's features for one frame (uint8 H x W x C, row-major), and the time they took. */
  async features(pixels: Uint8Array, width: number): Promise<Float32Array> {
    const [c, h, w] = this.bundle.manifest.input.shape;
    if (pixels.length !== h * w * c) throw new RangeError(`a frame of ${h}x${w}x${c} has ${h * w * c} values, got ${pixels.length}`);
    const head = await this.session(width);
    let x: ort.Tensor = new ort.Tensor("uint8", pixels, [1, h, w, c]);
    let feed: Record<string, ort.Tensor> = { frame: x };
    if (this.prefix) {
      const out = await this.prefix.run({ frame: x });
      x = out[this.prefix.outputNames[0]] as ort.Tensor;
      feed = { prefix: x };
    }
    const out = await head.run(feed);
    return (out[head.outputNames[0]] as ort.Tensor).data as Float32Array;
  }

  async encode(pixels: Uint8Array, width: number): Promise<Encoded> {
    const t0 = performance.now();
    const features = await this.features(pixels, width);
    const payload = this.encoders[width].encode(features);
    return { width, payload, shape: this.bundle.manifest.widths[width].latent_shape, headMs: performance.now() - t0 };
  }
}
