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
  /** run the head in a worker: true, false, or "auto" (the default: in a worker unless the bundle's
   *  widest head takes under a millisecond, less than a worker's round trip); see head_worker.ts */
  worker?: boolean | "auto";
}

/** What a frame's path needs of a head, on this thread (HeadRunner) or in a worker (WorkerHead). */
export interface Head {
  readonly widths: number;
  warm(widths: number[], minMs?: number, budgetMs?: number): Promise<number>;
  features(pixels: Uint8Array, width: number): Promise<Float32Array>;
  encode(pixels: Uint8Array, width: number): Promise<Encoded>;
  close(): void;
}

export class HeadRunner implements Head {
  private sessions = new Map<number, ort.InferenceSession>();
  private prefix: ort.InferenceSession | null = null;
  private encoders: EntropicEncoder[];
  private busy: Promise<unknown> = Promise.resolve();

  private constructor(readonly bundle: Bundle) {
    this.encoders = bundle.manifest.widths.map(
      (w, i) => new EntropicEncoder(tablesFromNpz(bundle.entropy, i), w.latent_shape),
    );
  }

  /** The head on this thread (a page's or a worker's); ``openHead`` picks between this and a worker. */
  static async create(bundle: Bundle, options: HeadOptions = {}): Promise<HeadRunner> {
    if (options.wasmPaths) ort.env.wasm.wasmPaths = options.wasmPaths;
    // threads need cross-origin isolation (SharedArrayBuffer); one thread otherwise
    const isolated = typeof crossOriginIsolated !== "undefined" && crossOriginIsolated;
    ort.env.wasm.numThreads = isolated ? (options.threads ?? 2) : 1;
    // Not onnxruntime's own proxy worker: it sends every graph's output back to the page, the prefix's
    // features included, then back again; splitserve's head worker (head_worker.ts) runs this whole runner.
    ort.env.wasm.proxy = false;
    const head = new HeadRunner(bundle);
    if (bundle.prefix) head.prefix = await ort.InferenceSession.create(bundle.prefix, { executionProviders: ["wasm"] });
    return head;
  }

  /** onnxruntime-web keeps its sessions until they are released. */
  close(): void {
    for (const s of [...this.sessions.values(), ...(this.prefix ? [this.prefix] : [])]) s.release().catch(() => {});
    this.sessions.clear();
    this.prefix = null;
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

  /**
   * Build each width's session and run it once on a blank frame; the ms it took. onnxruntime-web builds a
   * session on first use, and its first run compiles and allocates: many times a frame's head time, which
   * the first frame at that width would otherwise spend out of its deadline.
   */
  async warm(widths: number[], minMs = 1500, budgetMs = 5000): Promise<number> {
    const t0 = performance.now();
    const [c, h, w] = this.bundle.manifest.input.shape;
    const blank = new Uint8Array(h * w * c);
    // not once: the browser compiles the WASM's hot code again, optimised, in the background after its first
    // runs, and until then (about a second on a 2-core machine) a frame takes two to four times as long.
    // Rounds over every width for at least ``minMs``, then until a round is within 20 % of the fastest so
    // far, or the budget is spent.
    let best = Infinity;
    for (let round = 0; performance.now() - t0 < budgetMs; round++) {
      const r0 = performance.now();
      for (const width of widths) await this.features(blank, width);
      const took = performance.now() - r0;
      if (round >= 2 && performance.now() - t0 >= minMs && took <= 1.2 * best) break;
      best = Math.min(best, took);
    }
    return performance.now() - t0;
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

  /** One frame's payload; frames run one at a time, in the order they came (a session runs one at a time). */
  encode(pixels: Uint8Array, width: number): Promise<Encoded> {
    const run = this.busy.then(() => this.encodeNow(pixels, width));
    this.busy = run.catch(() => undefined);
    return run;
  }

  private async encodeNow(pixels: Uint8Array, width: number): Promise<Encoded> {
    const t0 = performance.now();
    const features = await this.features(pixels, width);
    const payload = this.encoders[width].encode(features);
    return { width, payload, shape: this.bundle.manifest.widths[width].latent_shape, headMs: performance.now() - t0 };
  }
}
