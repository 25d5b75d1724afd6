/**
 * SplitClient: the head here, in onnxruntime-web; the tail on the edge server, over a WebRTC datachannel.
 *
 *   const client = await SplitClient.connect("https://edge.local:8443", { model: "lite0-imagenet", token, deadlineMs: 150 });
 *   const r = await client.infer(videoElement);   // r.status, r.label, r.width, r.bytes, r.latencyMs
 *
 * Every frame ends with exactly one outcome, by its deadline (without one, by giveUpMs): a result, an
 * error, or DEADLINE_EXCEEDED; infer() never throws for a frame that fails. Frames are written within
 * the server's window; one answered OVERLOADED goes again while its deadline allows.
 */

import { BandwidthMonitor } from "./bandwidth.js";
import { type Bundle, loadBundle, type Progress } from "./bundle.js";
import { SplitError } from "./errors.js";
import { toPixels, type FrameSource } from "./frames.js";
import type { Head } from "./head.js";
import { openHead } from "./head_worker.js";
import { AdaptivePolicy, FixedPolicy, FramePlanner, WidthCost } from "./policy.js";
import { type ClassScore, encodeFrame, type Result, Status, statusName } from "./proto.js";
import { parityWireBytes } from "./parity.js";
import { DATACHANNEL_FRAMING, DatachannelConnection } from "./transport.js";

export interface ClientOptions {
  model: string;
  version?: string;
  token?: string;
  /** per-frame deadline in ms (0: none) */
  deadlineMs?: number;
  /** "adaptive": the width per frame from the bandwidth estimate and the deadline (the Python client's
   *  policy, the same decisions); "fixed" (default): always ``width`` */
  policy?: "adaptive" | "fixed";
  /** width index for the fixed policy (-1: the widest) */
  width?: number;
  topK?: number;
  /** how long a frame without a deadline waits for its result */
  giveUpMs?: number;
  /** WASM threads for the head where the page is cross-origin isolated (default 2; one thread otherwise) */
  threads?: number;
  /** run the head in a Web Worker, off the page's thread: true, false, or "auto" (the default: a worker
   *  unless the bundle's head takes under a millisecond). The worker loads the script the SDK is in, so a
   *  page that bundles the SDK with code touching the DOM at load time sets false. */
  headInWorker?: boolean | "auto";
  /** where onnxruntime's .wasm files are (default: the server's /demo/ort/) */
  wasmPaths?: string;
  onProgress?: (p: Progress) => void;
  /** carry every other piece of a frame on a second peer connection (default: with a deadline; see
   *  transport.ts for why a browser needs it) */
  lane?: boolean;
}

export interface Outcome {
  frameId: number;
  status: string; // a Result status name, or FAILED when the frame got no result
  ok: boolean;
  label: string | null;
  index: number | null;
  topK: ClassScore[];
  width: number;
  bytes: number; // payload bytes
  headMs: number; // head + entropy coding on this device
  latencyMs: number; // infer() to outcome
  server: Result["timings"] | null;
  error: string;
  attempts: number;
}

type FrameFields = Parameters<typeof encodeFrame>[0];

// a Frame's bytes on the link besides its payload: its other fields and the datachannel's framing
const FRAME_FIELDS = 110;
const FRAME_OVERHEAD = FRAME_FIELDS + DATACHANNEL_FRAMING;
// what a Frame of this many bytes puts on the link: with a deadline, one past a packet goes with parity
const wireBytes = (frameBytes: number, hasDeadline: boolean) =>
  hasDeadline ? parityWireBytes(frameBytes, DATACHANNEL_FRAMING) : frameBytes + DATACHANNEL_FRAMING;

interface Pending {
  frame: FrameFields;
  wireBytes: number;
  sentAt: number | null;
  expires: number;
  hasDeadline: boolean;
  resolve: (r: Result | string) => void;
  attempts: number;
  done: boolean;
  retries: number;
}

export class SplitClient {
  private ids = 1;
  private pending = new Map<number, Pending>();
  private queue: number[] = [];
  private outstanding = new Set<number>();
  private pumping = false;
  readonly monitor = new BandwidthMonitor();
  readonly planner: FramePlanner;
  /** how long connect() spent running the head once per width it may use */
  warmupMs = 0;

  private constructor(
    readonly server: string,
    readonly bundle: Bundle,
    readonly head: Head,
    readonly conn: DatachannelConnection,
    readonly options: ClientOptions,
  ) {
    conn.onResult = (r) => this.answer(r);
    conn.onClose = (why) => this.failAll(why);
    const widths = bundle.manifest.widths;
    if (options.policy === "adaptive") {
      const costs = widths.map((w) => new WidthCost((w.bytes_mean ?? 1000) + FRAME_OVERHEAD, w.head_ms ?? 5,
        w.accuracy ?? w.agreement ?? null));
      this.planner = new FramePlanner(new AdaptivePolicy(costs), this.monitor);
    } else {
      const width = options.width ?? -1;
      this.planner = new FramePlanner(new FixedPolicy(width < 0 ? widths.length - 1 : width), this.monitor);
    }
  }

  /** The bandwidth estimate now (bit/s; null before the first result). */
  get rateBps(): number | null {
    return this.monitor.estimate(this.pendingBytes()).bandwidthBps;
  }

  private pendingBytes(): [number, number][] {
    const out: [number, number][] = [];
    for (const id of this.outstanding) {
      const e = this.pending.get(id);
      if (e?.sentAt != null) out.push([e.wireBytes, e.sentAt / 1000]);
    }
    return out;
  }

  static async connect(server: string, options: ClientOptions): Promise<SplitClient> {
    const base = server.replace(/\/+$/, "");
    const bundle = await loadBundle(base, options.model, {
      token: options.token, version: options.version, onProgress: options.onProgress,
    });
    const head = await openHead(bundle, { wasmPaths: options.wasmPaths ?? `${base}/demo/ort/`, threads: options.threads,
      worker: options.headInWorker });
    // every width the policy may pick, while the datachannel opens: no frame pays for a cold session
    const n = bundle.manifest.widths.length;
    const fixed = (options.width ?? -1) < 0 ? n - 1 : options.width!;
    const warm = head.warm(options.policy === "adaptive" ? [...Array(n).keys()] : [fixed]);
    warm.catch(() => {}); // awaited below; if opening fails first, its failure is the one reported
    let conn: DatachannelConnection | null = null;
    let warmupMs: number;
    try {
      conn = await DatachannelConnection.open(base, { token: options.token, deadlineMs: options.deadlineMs, lane: options.lane });
      warmupMs = await warm;
    } catch (err) {
      conn?.close();
      head.close();
      throw err;
    }
    const client = new SplitClient(base, bundle, head, conn, options);
    client.warmupMs = warmupMs;
    return client;
  }

  get manifest() {
    return this.bundle.manifest;
  }

  /** One frame: an ImageBitmap, <video>, <canvas>, <img>, ImageData, or raw {data, width, height, channels}. */
  async infer(frame: FrameSource, opts: { width?: number; deadlineMs?: number } = {}): Promise<Outcome> {
    const t0 = performance.now();
    const deadline = opts.deadlineMs ?? this.options.deadlineMs ?? 0;
    const widths = this.head.widths;
    let width = opts.width ?? -1;
    if (opts.width === undefined) width = this.planner.plan(deadline, true, this.pendingBytes())[0].width;
    if (width < 0) width = widths - 1;
    const frameId = this.ids++;
    const out: Outcome = {
      frameId, status: "FAILED", ok: false, label: null, index: null, topK: [], width, bytes: 0, headMs: 0,
      latencyMs: 0, server: null, error: "", attempts: 0,
    };
    try {
      if (width >= widths) throw new SplitError("frame", `${this.manifest.name} has widths 0..${widths - 1}, not ${width}`);
      const pixels = toPixels(frame, this.manifest.input.shape);
      const enc = await this.head.encode(pixels, width);
      out.bytes = enc.payload.length;
      out.headMs = enc.headMs;
      this.planner.encoded(width, enc.payload.length + FRAME_OVERHEAD, enc.headMs);
      const elapsed = performance.now() - t0;
      if (deadline && elapsed >= deadline) {
        return this.finish(out, t0, "DEADLINE_EXCEEDED", "the deadline passed on the device");
      }
      const data = {
        frameId, model: this.manifest.name, version: this.manifest.version, bundleSha256: this.bundle.sha256,
        codec: "entropic", width, payload: enc.payload, shape: enc.shape, captureTimeUs: Date.now() * 1000,
        topK: this.options.topK ?? 5,
      };
      const expires = t0 + (deadline || this.options.giveUpMs || 30000);
      const attempts = { n: 0 };
      const answer = await this.send(frameId, data, expires, deadline > 0, attempts);
      out.attempts = attempts.n;
      if (typeof answer === "string") {
        return this.finish(out, t0, deadline ? "DEADLINE_EXCEEDED" : "FAILED", answer);
      }
      out.topK = answer.topK;
      out.server = answer.timings;
      out.label = answer.topK[0]?.label ?? null;
      out.index = answer.topK[0]?.index ?? null;
      return this.finish(out, t0, statusName(answer.status), answer.error);
    } catch (err) {
      return this.finish(out, t0, "FAILED", (err as Error).message);
    }
  }

  private finish(out: Outcome, t0: number, status: string, error: string): Outcome {
    out.status = status;
    out.ok = status === "OK";
    out.error = error;
    out.latencyMs = performance.now() - t0;
    return out;
  }

  /** Queue the frame and wait for its one outcome: its Result, or why it got none (a string). */
  private send(frameId: number, frame: FrameFields, expires: number, hasDeadline: boolean, attempts: { n: number }) {
    return new Promise<Result | string>((resolve) => {
      const entry: Pending = { frame, wireBytes: wireBytes(frame.payload.length + FRAME_FIELDS, hasDeadline), sentAt: null, expires, hasDeadline, resolve, attempts: 0, done: false, retries: 0 };
      const settle = (r: Result | string) => {
        if (entry.done) return;
        entry.done = true;
        attempts.n = entry.attempts;
        this.outstanding.delete(frameId);
        this.pending.delete(frameId);
        resolve(r);
        this.pump();
      };
      entry.resolve = settle;
      this.pending.set(frameId, entry);
      this.queue.push(frameId);
      setTimeout(() => settle(entry.attempts ? "the server did not answer in time" : "never sent: no room on the link for it in time"),
        Math.max(0, expires - performance.now()));
      this.pump();
    });
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length && this.outstanding.size < this.conn.window) {
        const id = this.queue.shift()!;
        const entry = this.pending.get(id);
        if (!entry || entry.done) continue;
        this.outstanding.add(id);
        await this.conn.pace(entry.wireBytes, this.rateBps);
        const now = performance.now();
        if (entry.done || (entry.hasDeadline && now >= entry.expires)) {
          this.outstanding.delete(id); // too late to be of use: never sent
          continue;
        }
        if (entry.hasDeadline) entry.frame.deadlineMs = Math.max(1, Math.floor(entry.expires - now));
        const data = encodeFrame(entry.frame); // with the budget left now: the server counts from arrival
        entry.attempts += 1;
        entry.sentAt = now;
        entry.wireBytes = wireBytes(data.length, entry.hasDeadline);
        try {
          this.conn.send(data, entry.hasDeadline);
        } catch (err) {
          entry.resolve((err as Error).message);
        }
      }
    } finally {
      this.pumping = false;
    }
  }

  private answer(r: Result): void {
    const entry = this.pending.get(r.frameId);
    if (!entry || entry.done) return;
    const now = performance.now();
    if ((r.status === Status.OVERLOADED || r.status === Status.UNAVAILABLE) && now + 20 * 2 ** entry.retries < entry.expires) {
      entry.retries += 1;
      this.outstanding.delete(r.frameId);
      setTimeout(() => {
        this.queue.push(r.frameId);
        this.pump();
      }, 20 * 2 ** (entry.retries - 1));
      return;
    }
    // a late result still measures the link, and so does a frame the server found late on arrival
    if (entry.sentAt !== null && (r.status === Status.OK || r.status === Status.DEADLINE_EXCEEDED)) {
      this.planner.result(entry.wireBytes, now - entry.sentAt, r.timings.totalMs);
    }
    if (entry.hasDeadline && now > entry.expires) {
      entry.resolve(`the result arrived ${Math.round(now - entry.expires)} ms after the deadline`);
      return;
    }
    entry.resolve(r);
  }

  private failAll(why: string): void {
    for (const entry of this.pending.values()) entry.resolve(why);
  }

  async close(): Promise<void> {
    this.failAll("the client closed");
    this.head.close();
    await this.conn.close();
  }
}
