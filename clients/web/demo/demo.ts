// The demo page: the SDK on the camera, a file or the bundle's sample frames; ?selftest=N&model=M runs N
// sample frames and writes one JSON object into <pre id="selftest"> (what the end-to-end test reads);
// &fps=F starts them at a camera's pace instead of one after another, &deadline=MS and &width=W as named.
// ?headbench=N&model=M times the head alone (no frame sent) on N sample frames at every width, for
// benchmarks/browser_head.py, and writes its JSON into the same <pre>.
import { listModels, type Outcome, parseNpz, type RawFrame, SplitClient, toPixels, WorkerHead } from "../src/index.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const server = location.origin;
let client: SplitClient | null = null;
const history: Outcome[] = [];

async function connect(model: string): Promise<SplitClient> {
  if (client && client.manifest.name === model) return client;
  await client?.close();
  const token = params.get("token") ?? ($("token") as HTMLInputElement).value ?? undefined;
  client = await SplitClient.connect(server, {
    model, token: token || undefined, deadlineMs: Number(params.get("deadline") ?? 1000),
    width: params.has("width") ? Number(params.get("width")) : -1,
    threads: params.has("threads") ? Number(params.get("threads")) : undefined,
    headInWorker: params.has("worker") ? (params.get("worker") === "auto" ? "auto" : params.get("worker") !== "0") : undefined,
    lane: params.has("lane") ? params.get("lane") !== "0" : undefined,
    // the selftest compares with the Python client at one width; a person on a phone wants adaptive
    policy: (params.get("policy") ?? (params.has("selftest") ? "fixed" : "adaptive")) as "adaptive" | "fixed",
    onProgress: (p) => ($("progress").textContent = `${p.file}: ${(p.loaded / 1e6).toFixed(1)} of ${(p.total / 1e6).toFixed(1)} MB${p.cached ? " (cached)" : ""}`),
  });
  $("progress").textContent = `${model}:${client.manifest.version} ready`;
  return client;
}

function show(r: Outcome): void {
  history.push(r);
  $("label").textContent = r.ok ? `${r.label}` : `${r.status}: ${r.error}`;
  $("width").textContent = String(r.width);
  $("bytes").textContent = String(r.bytes);
  $("head").textContent = `${r.headMs.toFixed(1)} ms`;
  $("latency").textContent = `${r.latencyMs.toFixed(0)} ms`;
  draw();
}

function draw(): void {
  const canvas = $("chart") as HTMLCanvasElement;
  const ctx = canvas.getContext("2d")!;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const recent = history.slice(-100);
  const maxBytes = Math.max(1, ...recent.map((r) => r.bytes));
  const maxLatency = Math.max(1, ...recent.map((r) => r.latencyMs));
  const x = (i: number) => (i / 100) * canvas.width;
  ctx.font = "20px system-ui";
  for (const [key, color, max] of [["bytes", "#2a6", maxBytes], ["latencyMs", "#c52", maxLatency]] as const) {
    ctx.strokeStyle = color;
    ctx.beginPath();
    recent.forEach((r, i) => ctx.lineTo(x(i), canvas.height - (Number(r[key]) / max) * (canvas.height - 30)));
    ctx.stroke();
  }
  ctx.fillStyle = "#2a6";
  ctx.fillText(`bytes (max ${maxBytes})`, 8, 22);
  ctx.fillStyle = "#c52";
  ctx.fillText(`latency (max ${maxLatency.toFixed(0)} ms)`, 260, 22);
  ctx.fillStyle = "#333";
  ctx.fillText(`rate estimate ${client?.rateBps ? (client.rateBps / 1e6).toFixed(2) + " Mbit/s" : "-"}`, 560, 22);
}

/** The bundle's sample frames (and labels, -1 where unknown), as the Python client reads them. */
async function sampleFrames(name: string, token: string | null): Promise<{ frames: RawFrame[]; labels: number[] }> {
  const response = await fetch(`${server}/v1/samples/${name}.npz`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!response.ok) throw new Error(`sample ${name}: HTTP ${response.status}`);
  const arrays = parseNpz(new Uint8Array(await response.arrayBuffer()));
  const labels = Array.from(arrays.labels.data, Number);
  if (arrays.images) {
    const [n, h, w, c] = arrays.images.shape;
    const data = arrays.images.data as Uint8Array;
    return { frames: Array.from({ length: n }, (_, i) => ({ data: data.subarray(i * h * w * c, (i + 1) * h * w * c), width: w, height: h, channels: c })), labels };
  }
  const bytes = arrays.jpeg_data.data as Uint8Array;
  const offsets = Array.from(arrays.jpeg_offsets.data, Number);
  const frames: RawFrame[] = [];
  for (let i = 0; i + 1 < offsets.length; i++) {
    const bitmap = await createImageBitmap(new Blob([bytes.slice(offsets[i], offsets[i + 1])], { type: "image/jpeg" }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d")!;
    ctx.drawImage(bitmap, 0, 0);
    frames.push({ data: ctx.getImageData(0, 0, bitmap.width, bitmap.height).data, width: bitmap.width, height: bitmap.height, channels: 4 });
  }
  return { frames, labels };
}

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))] : null;
};

async function selftest(n: number, model: string): Promise<void> {
  const c = await connect(model);
  const { frames, labels } = await sampleFrames(c.manifest.sample ?? model, params.get("token"));
  let outcomes: Outcome[] = [];
  const fps = Number(params.get("fps") ?? 0);
  if (fps > 0) {
    // a camera's pace, as device-client --fps: frame i starts at i / fps whether or not earlier ones are answered
    const t0 = performance.now();
    const started: Promise<Outcome>[] = [];
    for (let i = 0; i < n; i++) {
      const wait = t0 + (i * 1000) / fps - performance.now();
      if (wait > 0) await new Promise((ok) => setTimeout(ok, wait));
      started.push(c.infer(frames[i % frames.length]).then((r) => (show(r), r)));
    }
    outcomes = await Promise.all(started);
  } else {
    for (let i = 0; i < n; i++) {
      const r = await c.infer(frames[i % frames.length]);
      show(r);
      outcomes.push(r);
    }
  }
  const labelled = outcomes.map((r, i) => [r, labels[i % labels.length]] as const).filter(([, y]) => y >= 0);
  const widthCounts: Record<string, number> = {};
  for (const r of outcomes) widthCounts[r.width] = (widthCounts[r.width] ?? 0) + 1;
  const report = {
    frames: n,
    ok: outcomes.filter((r) => r.ok).length,
    accuracy: labelled.length ? labelled.filter(([r, y]) => r.index === y).length / labelled.length : null,
    agreement: null, // the sample carries no teacher answers
    predictions: outcomes.map((r) => r.index),
    statuses: outcomes.map((r) => r.status),
    latencies_ms: outcomes.map((r) => Math.round(r.latencyMs * 10) / 10),
    head_ms: outcomes.map((r) => Math.round(r.headMs * 10) / 10),
    bytes_mean: outcomes.reduce((a, r) => a + r.bytes, 0) / n,
    head_ms_p50: quantile(outcomes.map((r) => r.headMs), 0.5),
    warmup_ms: c.warmupMs,
    latency_ms_p50: quantile(outcomes.filter((r) => r.ok).map((r) => r.latencyMs), 0.5),
    latency_ms_p95: quantile(outcomes.map((r) => r.latencyMs), 0.95),
    // an answered frame's time besides its head and the server's compute: preprocessing, queueing, the network
    other_ms_p50: quantile(outcomes.filter((r) => r.ok).map((r) => r.latencyMs - r.headMs - (r.server?.totalMs ?? 0)), 0.5),
    deadline_ms: c.options.deadlineMs ?? 0,
    fps,
    transport: "webrtc",
    model: `${c.manifest.name}:${c.manifest.version}`,
    width_counts: widthCounts,
    cross_origin_isolated: crossOriginIsolated,
    wasm_threads: crossOriginIsolated ? Number(params.get("threads") ?? 2) : 1,
    head_in_worker: c.head instanceof WorkerHead,
    associations: c.conn.lane ? 2 : 1,
  };
  $("selftest").textContent = JSON.stringify(report);
}

/** Head time alone at every width: the graphs, then the coder, on the sample frames; nothing is sent. */
async function headbench(n: number, model: string): Promise<void> {
  const c = await connect(model);
  const { frames } = await sampleFrames(c.manifest.sample ?? model, params.get("token"));
  const pixels = frames.map((f) => toPixels(f, c.manifest.input.shape));
  const widths = [];
  for (let width = 0; width < c.head.widths; width++) {
    const graphs: number[] = [];
    const total: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await c.head.features(pixels[i % pixels.length], width);
      graphs.push(performance.now() - t0);
      total.push((await c.head.encode(pixels[i % pixels.length], width)).headMs);
    }
    widths.push({ width, graphs_ms_p50: quantile(graphs, 0.5), head_ms_p50: quantile(total, 0.5), head_ms: total.map((t) => Math.round(t * 100) / 100) });
  }
  const report = {
    model: `${c.manifest.name}:${c.manifest.version}`, frames: n, widths, warmup_ms: c.warmupMs,
    head_in_worker: c.head instanceof WorkerHead, cross_origin_isolated: crossOriginIsolated,
    wasm_threads: crossOriginIsolated ? Number(params.get("threads") ?? 2) : 1,
  };
  $("selftest").textContent = JSON.stringify(report);
}

async function camera(): Promise<void> {
  const video = $("video") as HTMLVideoElement;
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
  video.hidden = false;
  await video.play();
  const c = await connect(($("model") as HTMLSelectElement).value);
  for (;;) show(await c.infer(video));
}

async function main(): Promise<void> {
  const select = $("model") as HTMLSelectElement;
  try {
    for (const m of await listModels(server, params.get("token") ?? undefined)) select.add(new Option(`${m.name}:${m.version}`, m.name));
  } catch (err) {
    $("progress").textContent = String(err);
  }
  $("camera").onclick = () => camera().catch((e) => ($("progress").textContent = String(e)));
  ($("file") as HTMLInputElement).onchange = async (e) => {
    const file = (e.target as HTMLInputElement).files?.[0];
    if (file) show(await (await connect(select.value)).infer(await createImageBitmap(file)));
  };
  $("samples").onclick = () => selftest(20, select.value).catch((e) => ($("progress").textContent = String(e)));
  if (params.has("selftest") || params.has("headbench")) {
    try {
      const model = params.get("model") ?? select.value;
      if (params.has("headbench")) await headbench(Number(params.get("headbench")), model);
      else await selftest(Number(params.get("selftest")), model);
    } catch (err) {
      $("selftest").textContent = JSON.stringify({ error: String(err) });
    }
  }
}

// onnxruntime runs the head in a worker that loads this very script: there, no page to drive
if (typeof document !== "undefined") main();
