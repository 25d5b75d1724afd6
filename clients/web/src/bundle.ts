/**
 * A model's device files from the edge server (GET /v1/bundles/<name>/<version>/<file>), each checked
 * against the sha256 its manifest lists (SubtleCrypto) and kept in Cache Storage, so a second visit
 * downloads nothing. A file whose bytes do not match is an error, never used.
 */

import { SplitError } from "./errors.js";
import { type NdArray, parseNpz } from "./npz.js";

export interface WidthInfo {
  index: number;
  fraction: number;
  channels: number;
  latent_shape: [number, number, number];
  bytes_mean?: number;
  head_ms?: number;
  accuracy?: number | null;
  agreement?: number | null;
}

export interface Manifest {
  name: string;
  version: string;
  sample?: string;
  input: { shape: [number, number, number]; mean: number[]; std: number[] };
  labels: string[];
  widths: WidthInfo[];
  files: Record<string, { sha256: string; size: number }>;
  onnx?: { heads: string[]; prefix?: string; teacher?: boolean };
}

export interface Bundle {
  manifest: Manifest;
  /** sha256 of manifest.json: what a Frame pins (bundle_sha256), so the server refuses a different bundle. */
  sha256: string;
  entropy: Record<string, NdArray>;
  prefix: Uint8Array | null;
  heads: Uint8Array[];
}

export interface Progress {
  file: string;
  loaded: number; // bytes of all files so far
  total: number; // bytes of all files
  cached: boolean; // this file came from Cache Storage
}

export interface LoadOptions {
  token?: string;
  version?: string;
  onProgress?: (p: Progress) => void;
  /** Cache Storage name (null: no caching). */
  cacheName?: string | null;
}

const CACHE = "splitserve-bundles-v1";

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as BufferSource);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function authHeaders(token?: string): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function get(url: string, token?: string): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, { headers: authHeaders(token) });
  } catch (err) {
    throw new SplitError("unreachable", `cannot reach ${url}: ${(err as Error).message}`);
  }
  if (response.status === 401) throw new SplitError("unauthorized", `${url}: the server wants a valid token`);
  if (!response.ok) throw new SplitError("http", `${url}: HTTP ${response.status} ${(await response.text()).trim()}`);
  return response;
}

/** The manifests of the models the server serves. */
export async function listModels(server: string, token?: string): Promise<Manifest[]> {
  const body = await (await get(`${server}/v1/models`, token)).json();
  return body.models as Manifest[];
}

export async function loadBundle(server: string, model: string, options: LoadOptions = {}): Promise<Bundle> {
  const { token, onProgress } = options;
  const listed = (await listModels(server, token)).find(
    (m) => m.name === model && (!options.version || m.version === options.version),
  );
  if (!listed) throw new SplitError("unknown-model", `the server at ${server} serves no ${model}${options.version ? `:${options.version}` : ""}`);
  const base = `${server}/v1/bundles/${encodeURIComponent(listed.name)}/${encodeURIComponent(listed.version)}`;
  const onnx = listed.onnx;
  if (!onnx || onnx.heads.length !== listed.widths.length) {
    throw new SplitError("bundle", `${model}:${listed.version} carries no ONNX heads for the browser`);
  }
  const names = ["entropy.npz", ...(onnx.prefix ? [onnx.prefix] : []), ...onnx.heads];
  const total = names.reduce((n, f) => n + (listed.files[f]?.size ?? 0), 0);
  const cache = options.cacheName === null || typeof caches === "undefined" ? null : await caches.open(options.cacheName ?? CACHE);
  let loaded = 0;
  const files: Record<string, Uint8Array> = {};
  // the manifest itself is not in its own file list: its hash is what frames pin
  const manifestBytes = new Uint8Array(await (await get(`${base}/manifest.json`, token)).arrayBuffer());
  for (const name of names) {
    const want = listed.files[name]?.sha256;
    if (!want) throw new SplitError("bundle", `${model}:${listed.version}: the manifest lists no ${name}`);
    const url = `${base}/${name}`;
    let bytes: Uint8Array | null = null;
    const hit = cache ? await cache.match(url) : undefined;
    if (hit) {
      bytes = new Uint8Array(await hit.arrayBuffer());
      if ((await sha256Hex(bytes)) !== want) bytes = null; // a damaged cache entry: fetch it again
    }
    const cached = bytes !== null;
    if (!bytes) {
      bytes = new Uint8Array(await (await get(url, token)).arrayBuffer());
      const got = await sha256Hex(bytes);
      if (got !== want) throw new SplitError("bundle", `${url}: sha256 ${got} is not the manifest's ${want}`);
      await cache?.put(url, new Response(bytes as BodyInit));
    }
    files[name] = bytes;
    loaded += bytes.length;
    onProgress?.({ file: name, loaded, total, cached });
  }
  const manifest = JSON.parse(new TextDecoder().decode(manifestBytes)) as Manifest;
  return {
    manifest,
    sha256: await sha256Hex(manifestBytes),
    entropy: parseNpz(files["entropy.npz"]),
    prefix: onnx.prefix ? files[onnx.prefix] : null,
    heads: onnx.heads.map((h) => files[h]),
  };
}
