/**
 * The width policy and the adaptive loop, ported from src/splitserve/device_client/policy.py (its
 * docstring explains the rule: the width with the highest accuracy x P(on time) among those that make
 * the deadline with 90 % confidence; down at once, up after two frames; local fallback with probes).
 * Golden traces that the Python side writes check that both choose the same widths.
 */

import { BandwidthMonitor, type LinkEstimate } from "./bandwidth.js";

export interface Decision {
  local: boolean;
  width: number;
  predictedMs: number | null;
  probe: boolean;
}

export class WidthCost {
  constructor(
    public bytes: number,
    public headMs: number,
    public accuracy: number | null = null,
  ) {}

  update(nbytes: number, headMs: number, alpha = 0.2): void {
    this.bytes += alpha * (nbytes - this.bytes);
    this.headMs += alpha * (headMs - this.headMs);
  }
}

export interface Policy {
  name: string;
  decide(link: LinkEstimate, deadlineMs: number, connected?: boolean): Decision;
  observeFrame?(width: number, nbytes: number, headMs: number): void;
  observeServer?(serverMs: number): void;
}

export class FixedPolicy implements Policy {
  readonly name: string;
  constructor(readonly width: number) {
    this.name = `fixed:${width}`;
  }
  decide(): Decision {
    return { local: false, width: this.width, predictedMs: null, probe: false };
  }
}

/** erfc to within a few ulps (V8 has none): a series near zero, a continued fraction in the tails. */
export function erfc(x: number): number {
  if (x < 0) return 2 - erfc(-x);
  if (x < 2) {
    let term = x;
    let sum = x;
    for (let n = 1; n < 60; n++) {
      term *= (-x * x) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return 1 - (2 / Math.sqrt(Math.PI)) * sum;
  }
  // Lentz's method on erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))
  const tiny = 1e-300;
  let f = x;
  let c = x;
  let d = 0;
  for (let n = 1; n < 500; n++) {
    const a = n / 2;
    d = x + a * d;
    d = Math.abs(d) < tiny ? tiny : d;
    c = x + a / c;
    c = Math.abs(c) < tiny ? tiny : c;
    d = 1 / d;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

export function normalCdf(x: number): number {
  return 0.5 * erfc(-x / Math.sqrt(2.0));
}

export class AdaptivePolicy implements Policy {
  readonly name = "adaptive";
  current = 0;
  private fitsWider = 0;
  private localRun = 0;
  headroom = 0.9;
  confidence = 0.9;
  upAfter = 2;
  probeEvery = 5;

  constructor(
    readonly costs: WidthCost[],
    public serverMs = 2.0,
    readonly localMs: number | null = null,
  ) {}

  private worth(w: number): number {
    const acc = this.costs[w].accuracy;
    return acc !== null ? acc : (w + 1) / this.costs.length;
  }

  predictMs(w: number, link: LinkEstimate): number | null {
    if (link.bandwidthBps === null) return null;
    const cost = this.costs[w];
    const wire = (((cost.bytes + link.backlogBytes) * 8) / link.bandwidthBps) * 1e3;
    return cost.headMs + wire + (link.rttMs || 0.0) + this.serverMs;
  }

  pOnTime(w: number, link: LinkEstimate, deadlineMs: number): number {
    const cost = this.costs[w];
    const slackMs = deadlineMs * this.headroom - cost.headMs - (link.rttMs || 0.0) - this.serverMs;
    if (slackMs <= 0) return 0.0;
    const need = ((cost.bytes + link.backlogBytes) * 8) / (slackMs / 1e3);
    const margin = Math.log(link.bandwidthBps! / need);
    if (link.sigma <= 0) return margin >= 0 ? 1.0 : 0.0;
    return normalCdf(margin / link.sigma);
  }

  observeFrame(w: number, nbytes: number, headMs: number): void {
    if (w >= 0 && w < this.costs.length) this.costs[w].update(nbytes, headMs);
  }

  observeServer(serverMs: number, alpha = 0.2): void {
    this.serverMs += alpha * (serverMs - this.serverMs);
  }

  decide(link: LinkEstimate, deadlineMs: number, connected = true): Decision {
    if (!connected) {
      if (this.localMs !== null) return { local: true, width: 0, predictedMs: this.localMs, probe: false };
      return { local: false, width: 0, predictedMs: null, probe: false };
    }
    if (link.bandwidthBps === null || deadlineMs <= 0) return { local: false, width: this.current, predictedMs: null, probe: false };
    const n = this.costs.length;
    const p = Array.from({ length: n }, (_, w) => this.pOnTime(w, link, deadlineMs));
    const feasible = [...Array(n).keys()].filter((w) => p[w] >= this.confidence);
    if (!feasible.length) return this.noneFits(link);
    this.localRun = 0;
    // Python's max by (worth * p, w): the highest product, the widest among equals
    let best = feasible[0];
    for (const w of feasible) {
      const a = this.worth(w) * p[w];
      const b = this.worth(best) * p[best];
      if (a > b || (a === b && w > best)) best = w;
    }
    if (best <= this.current || !feasible.includes(this.current)) {
      this.current = best;
      this.fitsWider = 0;
    } else {
      this.fitsWider += 1;
      if (this.fitsWider >= this.upAfter) {
        this.current = best;
        this.fitsWider = 0;
      }
    }
    return { local: false, width: this.current, predictedMs: this.predictMs(this.current, link), probe: false };
  }

  private noneFits(link: LinkEstimate): Decision {
    this.current = 0;
    this.fitsWider = 0;
    const narrow = this.predictMs(0, link);
    if (this.localMs !== null && narrow !== null && this.localMs < narrow) {
      this.localRun += 1;
      const probe = Boolean(this.probeEvery) && this.localRun % this.probeEvery === 0;
      return { local: true, width: 0, predictedMs: this.localMs, probe };
    }
    return { local: false, width: 0, predictedMs: narrow, probe: false };
  }
}

/** The adaptive loop: ``plan`` before a frame, ``encoded`` when its head ran, ``result`` when it came back. */
export class FramePlanner {
  constructor(
    readonly policy: Policy,
    readonly monitor: BandwidthMonitor,
  ) {}

  plan(deadlineMs: number, connected = true, pending: Iterable<[number, number]> = []): [Decision, LinkEstimate] {
    const estimate = this.monitor.estimate(pending);
    return [this.policy.decide(estimate, deadlineMs, connected), estimate];
  }

  encoded(width: number, nbytes: number, headMs: number): void {
    this.policy.observeFrame?.(width, nbytes, headMs);
  }

  result(nbytes: number, elapsedMs: number, serverMs: number): void {
    this.monitor.add(nbytes, elapsedMs, serverMs);
    this.policy.observeServer?.(serverMs);
  }
}
