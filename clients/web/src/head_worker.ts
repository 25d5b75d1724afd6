/**
 * The head in a Web Worker: the whole HeadRunner (graphs and coder) runs there, so the page's thread only
 * posts a frame's pixels and gets its payload back. On the page's thread, a result that arrived while the
 * next frame's head ran would wait for it, and so would the camera preview. onnxruntime-web's own proxy
 * worker keeps the page's thread free too, but returns every graph's output to the page: the shared
 * prefix's features went there and back on every frame, about 5 ms of lite0's 16.
 *
 * The worker loads the script this module is bundled into (the SDK's splitserve.js, or a page's bundle of
 * it) and, seeing its name, serves the head instead of running the page.
 */

import type { Bundle } from "./bundle.js";
import { type Encoded, type Head, HeadRunner, type HeadOptions } from "./head.js";

const WORKER_NAME = "splitserve-head";
/** A bundle whose widest head the manifest times under this runs on the page's thread: a worker's round
 *  trip would be most of its time, and holding the page that long costs it nothing. */
const INLINE_BELOW_MS = 1;

type Request =
  | { id: number; op: "init"; bundle: Bundle; wasmPaths?: string; threads?: number }
  | { id: number; op: "warm"; widths: number[]; minMs?: number; budgetMs?: number }
  | { id: number; op: "features" | "encode"; pixels: Uint8Array; width: number };

type Call = Request extends infer R ? (R extends unknown ? Omit<R, "id"> : never) : never;

type Reply = { id: number; value?: unknown; error?: string };

/** The head where ``options.worker`` says: in a worker (falling back to this thread if none starts), or here. */
export async function openHead(bundle: Bundle, options: HeadOptions = {}): Promise<Head> {
  const mode = options.worker ?? "auto";
  const widest = Math.max(...bundle.manifest.widths.map((w) => w.head_ms ?? Infinity));
  const inWorker = mode === "auto" ? !(widest < INLINE_BELOW_MS) : mode;
  if (inWorker && typeof Worker !== "undefined") {
    try {
      return await WorkerHead.start(bundle, options);
    } catch (err) {
      // a page that loads the SDK from another origin cannot start a worker from it
      console.warn(`splitserve: the head runs on the page's thread: ${(err as Error).message}`);
    }
  }
  return HeadRunner.create(bundle, options);
}

export class WorkerHead implements Head {
  private ids = 0;
  private pending = new Map<number, { ok: (v: unknown) => void; fail: (e: Error) => void }>();
  private broken: Error | null = null;

  private constructor(
    private readonly worker: Worker,
    readonly widths: number,
    private readonly shapes: [number, number, number][],
  ) {
    worker.onmessage = (e: MessageEvent<Reply>) => {
      const waiter = this.pending.get(e.data.id);
      this.pending.delete(e.data.id);
      if (e.data.error !== undefined) waiter?.fail(new Error(e.data.error));
      else waiter?.ok(e.data.value);
    };
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      this.fail(new Error(`the head's worker failed: ${e.message || "it could not load its script"}`));
    };
  }

  static async start(bundle: Bundle, options: HeadOptions): Promise<WorkerHead> {
    const worker = new Worker(new URL(import.meta.url), { type: "module", name: WORKER_NAME });
    const head = new WorkerHead(worker, bundle.manifest.widths.length, bundle.manifest.widths.map((w) => w.latent_shape));
    try {
      await head.call({ op: "init", bundle, wasmPaths: options.wasmPaths, threads: options.threads });
    } catch (err) {
      head.close();
      throw err;
    }
    return head;
  }

  warm(widths: number[], minMs?: number, budgetMs?: number): Promise<number> {
    return this.call({ op: "warm", widths, minMs, budgetMs }) as Promise<number>;
  }

  features(pixels: Uint8Array, width: number): Promise<Float32Array> {
    return this.call({ op: "features", pixels: pixels.slice(), width }, true) as Promise<Float32Array>;
  }

  /** headMs is the frame's time here, the worker's round trip included. */
  async encode(pixels: Uint8Array, width: number): Promise<Encoded> {
    const t0 = performance.now();
    // a copy, handed over: ``pixels`` may be a view of the caller's (a video frame, a batch of samples)
    const payload = (await this.call({ op: "encode", pixels: pixels.slice(), width }, true)) as Uint8Array;
    return { width, payload, shape: this.shapes[width], headMs: performance.now() - t0 };
  }

  close(): void {
    this.worker.terminate();
    this.fail(new Error("the head was closed"));
  }

  private call(request: Call, transfer = false): Promise<unknown> {
    if (this.broken) return Promise.reject(this.broken);
    const id = this.ids++;
    return new Promise((ok, fail) => {
      this.pending.set(id, { ok, fail });
      const pixels = (request as { pixels?: Uint8Array }).pixels;
      this.worker.postMessage({ ...request, id }, transfer && pixels ? [pixels.buffer] : []);
    });
  }

  private fail(err: Error): void {
    this.broken ??= err;
    for (const waiter of this.pending.values()) waiter.fail(err);
    this.pending.clear();
  }
}

/** A result's buffer, to hand over rather than copy, unless it is shared (WASM memory). */
const movable = (a: Uint8Array | Float32Array): Transferable[] => (a.buffer instanceof ArrayBuffer ? [a.buffer] : []);

/** Inside the worker: one HeadRunner, requests in the order they came (a session runs one at a time). */
function serve(scope: { onmessage: unknown; postMessage(m: unknown, t?: Transferable[]): void }): void {
  let runner: HeadRunner | null = null;
  let queue: Promise<unknown> = Promise.resolve();
  const handle = async (r: Request): Promise<[unknown, Transferable[]]> => {
    if (r.op === "init") {
      runner = await HeadRunner.create(r.bundle, { wasmPaths: r.wasmPaths, threads: r.threads });
      return [null, []];
    }
    if (!runner) throw new Error("the head's worker was not initialised");
    if (r.op === "warm") return [await runner.warm(r.widths, r.minMs, r.budgetMs), []];
    if (r.op === "features") {
      const features = await runner.features(r.pixels, r.width);
      return [features, movable(features)];
    }
    const { payload } = await runner.encode(r.pixels, r.width);
    return [payload, movable(payload)];
  };
  scope.onmessage = (e: MessageEvent<Request>) => {
    const r = e.data;
    queue = queue.then(() =>
      handle(r).then(
        ([value, transfer]) => scope.postMessage({ id: r.id, value }, transfer),
        (err: Error) => scope.postMessage({ id: r.id, error: err?.message ?? String(err) }),
      ),
    );
  };
}

declare const WorkerGlobalScope: unknown;
if (typeof WorkerGlobalScope !== "undefined" && (self as unknown as { name?: string }).name === WORKER_NAME) {
  serve(self as unknown as Parameters<typeof serve>[0]);
}
