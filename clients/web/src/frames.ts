/**
 * A camera frame to the model's pixels: uint8 H x W x C, row-major, as the Python client takes them.
 * A frame of another size is resized as ImageNet evaluation does (short side to size x 8/7, then a
 * centre crop), in a canvas; a frame of the model's size is used as it is. The normalisation is inside
 * the exported head.
 */

import { SplitError } from "./errors.js";

export interface RawFrame {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
  channels: number; // 1, 3 or 4 (RGBA: alpha is dropped)
}

export type FrameSource = RawFrame | ImageData | ImageBitmap | HTMLVideoElement | HTMLCanvasElement | HTMLImageElement | OffscreenCanvas;

function isRaw(frame: FrameSource): frame is RawFrame {
  return "channels" in frame;
}

/** shape: the model's input, [C, H, W]. */
export function toPixels(frame: FrameSource, shape: readonly [number, number, number]): Uint8Array {
  const [c, h, w] = shape;
  let rgba: Uint8ClampedArray | Uint8Array;
  let channels = 4;
  if (isRaw(frame)) {
    if (frame.width === w && frame.height === h && frame.channels === c) return Uint8Array.from(frame.data);
    if (frame.width !== w || frame.height !== h) {
      throw new SplitError("frame", `a raw frame must be ${w}x${h} (got ${frame.width}x${frame.height}); pass an image to resize`);
    }
    rgba = frame.data;
    channels = frame.channels;
  } else if (typeof ImageData !== "undefined" && frame instanceof ImageData && frame.width === w && frame.height === h) {
    rgba = frame.data;
  } else {
    rgba = draw(frame, w, h);
  }
  const out = new Uint8Array(h * w * c);
  for (let i = 0, n = h * w; i < n; i++) {
    const r = rgba[i * channels];
    const g = rgba[i * channels + (channels >= 3 ? 1 : 0)];
    const b = rgba[i * channels + (channels >= 3 ? 2 : 0)];
    if (c === 1) out[i] = channels >= 3 ? Math.round(0.299 * r + 0.587 * g + 0.114 * b) : r;
    else {
      out[i * 3] = r;
      out[i * 3 + 1] = g;
      out[i * 3 + 2] = b;
    }
  }
  return out;
}

function sourceSize(frame: Exclude<FrameSource, RawFrame>): [number, number] {
  if ("videoWidth" in frame) return [frame.videoWidth, frame.videoHeight];
  if ("naturalWidth" in frame) return [frame.naturalWidth, frame.naturalHeight];
  return [frame.width, frame.height];
}

function draw(frame: Exclude<FrameSource, RawFrame>, w: number, h: number): Uint8ClampedArray {
  const [sw, sh] = sourceSize(frame);
  if (!sw || !sh) throw new SplitError("frame", "the frame has no pixels yet (a video before its first frame?)");
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  if (!ctx) throw new SplitError("frame", "no 2d canvas in this browser");
  const source = frame instanceof ImageData ? imageDataBitmapCanvas(frame) : frame;
  if (sw === w && sh === h) {
    ctx.drawImage(source as CanvasImageSource, 0, 0);
  } else {
    // short side to size * 8 / 7, centre crop: the crop's extent in source pixels
    const scale = Math.round((Math.min(w, h) * 8) / 7) / Math.min(sw, sh);
    const cw = w / scale;
    const ch = h / scale;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source as CanvasImageSource, (sw - cw) / 2, (sh - ch) / 2, cw, ch, 0, 0, w, h);
  }
  return ctx.getImageData(0, 0, w, h).data;
}

function imageDataBitmapCanvas(data: ImageData): OffscreenCanvas {
  const canvas = new OffscreenCanvas(data.width, data.height);
  canvas.getContext("2d")!.putImageData(data, 0, 0);
  return canvas;
}
