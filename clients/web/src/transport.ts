/**
 * Frames on a WebRTC datachannel, signalled in the WHIP shape (POST the SDP offer to /v1/whip), with the
 * semantics of the Python WebRTC transport (src/splitserve/device_client/transports/webrtc.py):
 *
 * - "frames": unordered, each frame retransmitted only while it can still make its deadline
 *   (maxPacketLifeTime = the deadline), then abandoned: a lost packet costs one frame, not the ones behind;
 * - "results": unordered and reliable;
 * - a frame that fits one packet is sent twice (redundancy instead of a late retransmission); the server
 *   drops the copy, and sends small results twice the same way: the second copy is dropped here;
 * - a larger frame goes as one-packet pieces and their XOR (parity.ts): any one lost piece costs nothing;
 * - with a deadline, a second peer connection (a "lane", POST {Location}/lane) carries every other piece
 *   and the second copy of a small frame. The browser's SCTP (Chrome's dcSCTP) keeps a congestion window
 *   of four packets after a loss and fills it exactly, fragmenting a piece to do so: a frame of five
 *   pieces on one association has its last piece wait a round trip, which the frame that lost a piece
 *   cannot afford. Two associations carry half each, in a window of their own. A server without lanes
 *   (404) leaves the frames on one;
 * - frames leave no faster than the bandwidth estimate (x1.25), never while the channel buffers more than
 *   64 KB, and a frame whose deadline passes while it waits is not sent at all.
 */

import { authHeaders } from "./bundle.js";
import { SplitError } from "./errors.js";
import { splitPieces } from "./parity.js";
import { decodeResult, type Result } from "./proto.js";

export const FRAMES_CHANNEL = "frames";
export const RESULTS_CHANNEL = "results";
export const REDUNDANT_MAX_BYTES = 1100;
export const DATACHANNEL_FRAMING = 16 + 37; // SCTP DATA chunk + DTLS record per message
const WINDOW_HEADER = "X-Splitserve-Window";

export interface ConnectOptions {
  token?: string;
  deadlineMs?: number;
  openTimeoutMs?: number;
  /** open the lane (default: with a deadline) */
  lane?: boolean;
}

interface Lane {
  pc: RTCPeerConnection;
  frames: RTCDataChannel;
}

export class DatachannelConnection {
  private seen = new Map<string, true>();
  private nextSend = 0;
  private group = Math.floor(Math.random() * 2 ** 32); // the pieces of one frame share a group number
  onResult: (r: Result) => void = () => {};
  onClose: (why: string) => void = () => {};
  headroom = 1.25;
  maxBuffered = 64 * 1024;
  /** the second association, while it is open */
  lane: Lane | null = null;

  private constructor(
    readonly pc: RTCPeerConnection,
    readonly frames: RTCDataChannel,
    readonly results: RTCDataChannel,
    readonly window: number,
    readonly location: string | null,
    private readonly server: string,
    private readonly token?: string,
  ) {
    for (const channel of [frames, results]) {
      channel.binaryType = "arraybuffer";
      channel.onmessage = (e) => this.message(e.data);
      channel.onclose = () => this.onClose(`the server closed the ${channel.label} channel`);
    }
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "closed") this.onClose(`the peer connection ${pc.connectionState}`);
    };
  }

  static async open(server: string, options: ConnectOptions = {}): Promise<DatachannelConnection> {
    const pc = new RTCPeerConnection({ iceServers: [] });
    try {
      const frames = pc.createDataChannel(FRAMES_CHANNEL, frameReliability(options.deadlineMs));
      const results = pc.createDataChannel(RESULTS_CHANNEL, { ordered: false });
      const response = await negotiate(pc, `${server}/v1/whip`, options.token);
      await opened([frames, results], options.openTimeoutMs);
      const window = Number(response.headers.get(WINDOW_HEADER)) || 16;
      const conn = new DatachannelConnection(pc, frames, results, window, response.headers.get("Location"), server, options.token);
      if ((options.lane ?? !!options.deadlineMs) && conn.location) await conn.openLane(options);
      return conn;
    } catch (err) {
      pc.close();
      throw err;
    }
  }

  /** The lane, if the server has lanes; without it every piece goes on the one association. */
  private async openLane(options: ConnectOptions): Promise<void> {
    const pc = new RTCPeerConnection({ iceServers: [] });
    try {
      const frames = pc.createDataChannel(FRAMES_CHANNEL, frameReliability(options.deadlineMs));
      await negotiate(pc, new URL(`${this.location}/lane`, this.server).href, this.token);
      await opened([frames], options.openTimeoutMs);
      frames.onclose = () => {
        if (this.lane?.frames === frames) this.lane = null;
      };
      this.lane = { pc, frames };
    } catch (err) {
      pc.close();
      console.warn(`splitserve: no lane, every piece on one association: ${(err as Error).message}`);
    }
  }

  private message(data: ArrayBuffer | string): void {
    if (typeof data === "string") return;
    const bytes = new Uint8Array(data);
    if (bytes.length <= REDUNDANT_MAX_BYTES) {
      const key = String.fromCharCode(...bytes); // the redundant copy of a small result: take it once
      if (this.seen.has(key)) return;
      this.seen.set(key, true);
      if (this.seen.size > 512) this.seen.delete(this.seen.keys().next().value!);
    }
    try {
      this.onResult(decodeResult(bytes));
    } catch {
      // not a Result: nothing to match it to
    }
  }

  /** Wait until ``bytes`` may leave at ``rateBps`` (null: no estimate yet, send at once). */
  async pace(bytes: number, rateBps: number | null): Promise<void> {
    const buffered = () => this.frames.bufferedAmount + (this.lane?.frames.bufferedAmount ?? 0);
    while (this.frames.readyState === "open" && buffered() > this.maxBuffered) await sleep(2);
    if (!rateBps) return;
    const now = performance.now();
    const wait = this.nextSend - now;
    if (wait > 0) await sleep(wait);
    const copies = bytes <= REDUNDANT_MAX_BYTES ? 2 : 1;
    this.nextSend = Math.max(performance.now(), this.nextSend) + (copies * bytes * 8 * 1000) / (rateBps * this.headroom);
  }

  send(data: Uint8Array, withDeadline: boolean): void {
    if (this.frames.readyState !== "open") throw new SplitError("webrtc", `the frames channel is ${this.frames.readyState}`);
    let messages = [data];
    if (withDeadline && data.length <= REDUNDANT_MAX_BYTES) messages = [data, data];
    else if (withDeadline) {
      this.group = (this.group + 1) >>> 0;
      const pieces = splitPieces(data, this.group);
      if (pieces.length) messages = pieces;
    }
    const lane = this.lane?.frames.readyState === "open" ? this.lane.frames : null;
    messages.forEach((m, i) => (lane && i % 2 ? lane : this.frames).send(m as Uint8Array<ArrayBuffer>));
  }

  async close(): Promise<void> {
    if (this.location) {
      // WHIP: end the session; the peer connection closing says the same if this cannot get through
      fetch(new URL(this.location, this.server).href, { method: "DELETE", headers: authHeaders(this.token) }).catch(() => {});
    }
    this.lane?.pc.close();
    this.pc.close();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((ok) => setTimeout(ok, ms));
}

/** Frames are unordered, and with a deadline retransmitted only while they can still make it. */
function frameReliability(deadlineMs?: number): RTCDataChannelInit {
  return { ordered: false, ...(deadlineMs ? { maxPacketLifeTime: deadlineMs } : {}) };
}

/** POST the offer to ``url`` (WHIP), set the answer; the server's response, or a typed error. */
async function negotiate(pc: RTCPeerConnection, url: string, token?: string): Promise<Response> {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  let response: Response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...authHeaders(token) },
      body: pc.localDescription!.sdp,
    });
  } catch (err) {
    throw new SplitError("unreachable", `cannot reach ${url}: ${(err as Error).message}`);
  }
  const text = await response.text();
  if (response.status === 401) throw new SplitError("unauthorized", `WHIP: ${text.trim()}`);
  if (response.status !== 201) throw new SplitError("webrtc", `WHIP: HTTP ${response.status} ${text.trim()}`);
  await pc.setRemoteDescription({ type: "answer", sdp: text });
  return response;
}

/** Until every channel is open, or a typed error after ``timeoutMs``. */
async function opened(channels: RTCDataChannel[], timeoutMs = 15000): Promise<void> {
  const open = Promise.all(channels.map((c) => (c.readyState === "open" ? null : new Promise((ok) => (c.onopen = ok)))));
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise((_, fail) => {
    timer = setTimeout(() => fail(new SplitError("webrtc", `no datachannel within ${timeoutMs} ms (is UDP blocked?)`)), timeoutMs);
  });
  try {
    await Promise.race([open, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Every ICE candidate in the offer (the server answers once, WHIP has no trickle here). */
function gathered(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((ok) => {
    const done = () => pc.iceGatheringState === "complete" && ok();
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(ok, 2000); // host candidates come at once; do not wait on a slow interface
  });
}
