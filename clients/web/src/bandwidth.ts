/**
 * The bandwidth monitor, ported line for line from src/splitserve/device_client/bandwidth.py (its
 * docstring explains the model: BBR's min-RTT filter over two frame sizes, a Kalman filter on
 * log(rate), lower bounds from frames too small to time, upper bounds from frames still in flight).
 * Golden traces that the Python side writes check that both give the same estimates and widths.
 * Times are in seconds on ``clock`` (performance.now() / 1000 by default), as in Python.
 */

export interface LinkEstimate {
  bandwidthBps: number | null;
  rttMs: number | null;
  samples: number;
  sigma: number;
  backlogBytes: number;
}

export function rateQuantile(e: LinkEstimate, z: number): number | null {
  return e.bandwidthBps === null ? null : e.bandwidthBps * Math.exp(z * e.sigma);
}

type RttEntry = [time: number, bytes: number, networkMs: number];

export class BandwidthMonitor {
  rttWindowS = 10.0;
  fitRecentS = 1.0;
  minTransferMs = 2.0;
  minTransferShare = 0.1;
  qPerS = 0.3;
  rMin = 0.01;
  rMax = 0.5;
  dropTrust = 4.0;
  innovationAlpha = 0.1;
  innovationClip = 1.5;
  samples = 0;
  skipped = 0;
  private x: number | null = null;
  private p = 0.0;
  private r: number;
  private innovationSq: number;
  private t: number | null = null;
  private rtts: RttEntry[] = [];
  private rttFit: number | null = null;
  private serverMs = 0.0;
  private answeredSent = -Infinity;

  constructor(
    readonly clock: () => number = () => performance.now() / 1000,
    rInit = 0.1,
  ) {
    this.r = rInit;
    this.innovationSq = rInit;
  }

  rttMs(): number | null {
    const now = this.clock();
    while (this.rtts.length && now - this.rtts[0][0] > this.rttWindowS) this.rtts.shift();
    if (!this.rtts.length) return this.rttFit;
    const raw = Math.min(...this.rtts.map((e) => e[2]));
    const recent = this.rtts.filter((e) => now - e[0] <= this.fitRecentS);
    let fit = fitIntercept(recent);
    if (fit !== null) {
      this.rttFit = fit;
    } else {
      fit = fitIntercept(this.rtts);
      if (fit !== null && (this.rttFit === null || fit < this.rttFit)) this.rttFit = fit;
    }
    return this.rttFit === null ? raw : Math.min(this.rttFit, raw);
  }

  private varianceNow(): number {
    if (this.t === null) return this.p;
    return this.p + this.qPerS * Math.max(this.clock() - this.t, 0.0);
  }

  private update(z: number): void {
    if (this.x === null || !this.samples) {
      this.x = z;
      this.p = this.r;
      this.t = this.clock();
      return;
    }
    const p = this.varianceNow();
    const innovation = z - this.x;
    const r = innovation < 0 ? this.r / this.dropTrust : this.r;
    const gain = p / (p + r);
    this.x += gain * innovation;
    this.p = (1.0 - gain) * p;
    this.t = this.clock();
    const a = this.innovationAlpha;
    this.innovationSq += a * (Math.min(innovation ** 2, this.innovationClip ** 2) - this.innovationSq);
    this.r = Math.min(Math.max(this.rMin, this.innovationSq - p), this.rMax);
  }

  /** One frame's round trip; its throughput sample (bit/s), or null when it gave none. */
  add(nbytes: number, elapsedMs: number, serverMs: number): number | null {
    const first = !(this.samples || this.skipped);
    this.serverMs = first ? serverMs : this.serverMs + 0.2 * (serverMs - this.serverMs);
    const networkMs = Math.max(elapsedMs - serverMs, 0.0);
    this.answeredSent = Math.max(this.answeredSent, this.clock() - elapsedMs / 1e3);
    this.rtts.push([this.clock(), nbytes, networkMs]);
    const rtt = this.rttMs() || 0.0;
    const transferMs = networkMs - rtt;
    const resolvableMs = Math.max(this.minTransferMs, this.minTransferShare * networkMs);
    if (transferMs < resolvableMs) {
      this.skipped += 1;
      const floor = Math.log((nbytes * 8) / (resolvableMs / 1e3));
      if (this.x === null) {
        this.x = floor;
        this.p = this.r;
        this.t = this.clock();
      } else if (this.x < floor) {
        this.p = this.varianceNow();
        this.t = this.clock();
        this.x = floor;
      }
      return null;
    }
    const sample = (nbytes * 8) / (transferMs / 1e3);
    this.update(Math.log(sample));
    this.samples += 1;
    return sample;
  }

  /** The link now; ``pending``: [bytes, send time on this clock] of frames still in flight. */
  estimate(pending: Iterable<[number, number]> = []): LinkEstimate {
    const rtt = this.rttMs();
    if (this.x === null) return { bandwidthBps: null, rttMs: rtt, samples: this.samples, sigma: 0, backlogBytes: 0 };
    let rate = Math.exp(this.x);
    const sigma = Math.sqrt(this.varianceNow() + this.r);
    const now = this.clock();
    const inflight = [...pending].filter((p) => p[1] > this.answeredSent).sort((a, b) => a[1] - b[1]);
    let backlog = 0.0;
    if (inflight.length) {
      const [oldestBytes, oldestSent] = inflight[0];
      const waitedMs = (now - oldestSent) * 1e3 - (rtt || 0.0) - this.serverMs;
      if (waitedMs > this.minTransferMs) rate = Math.min(rate, (oldestBytes * 8) / (waitedMs / 1e3));
      const total = inflight.reduce((s, p) => s + p[0], 0);
      backlog = Math.max(0.0, total - (rate * Math.max(now - oldestSent, 0.0)) / 8);
    }
    return { bandwidthBps: rate, rttMs: rtt, samples: this.samples, sigma, backlogBytes: backlog };
  }
}

function fitIntercept(entries: RttEntry[]): number | null {
  if (!entries.length) return null;
  const smallest = Math.min(...entries.map((e) => e[1]));
  const large = entries.filter((e) => e[1] >= 2 * smallest);
  if (!large.length) return null;
  // Python's min() keeps the first of equal keys: so does this
  const firstMin = (xs: RttEntry[]) => xs.reduce((best, e) => (e[2] < best[2] ? e : best));
  const [, bS, nS] = firstMin(entries.filter((e) => e[1] <= 1.25 * smallest));
  const [, bL, nL] = firstMin(large);
  const slope = (nL - nS) / (bL - bS);
  return Math.max(nS - Math.max(slope, 0.0) * bS, 0.5 * nS);
}
