/**
 * XOR parity across a frame's pieces (src/splitserve/parity.py, byte for byte): a frame larger than one
 * packet goes as k one-packet pieces and their XOR, and the server rebuilds it from whichever k arrive
 * first, so one lost packet costs nothing instead of a retransmission the deadline has no room for.
 *
 * A piece: magic 0 (no protobuf message starts with a zero byte), version, group (u32: the frame's number
 * on this channel), k, index (k: the parity piece), the whole message's length (u32), then its body.
 */

export const HEADER_BYTES = 12;
export const PIECE_MAX_BYTES = 1100;
export const BODY_MAX_BYTES = PIECE_MAX_BYTES - HEADER_BYTES;
export const MAX_PIECES = 32;
const VERSION = 1;

/** How many data pieces a message of ``n`` bytes is cut into; 0: it is sent whole. */
export function piecesFor(n: number, bodyBytes = BODY_MAX_BYTES): number {
  const k = Math.ceil(n / bodyBytes);
  return k >= 2 && k <= MAX_PIECES ? k : 0;
}

/** Bytes a message puts on the link as its pieces, each with ``framing``; whole if it is not cut. */
export function parityWireBytes(n: number, framing: number): number {
  const k = piecesFor(n);
  return k ? (k + 1) * (HEADER_BYTES + Math.ceil(n / k) + framing) : n + framing;
}

/** ``message`` as k data pieces and their XOR (last); [] when it is not cut. */
export function splitPieces(message: Uint8Array, group: number, bodyBytes = BODY_MAX_BYTES): Uint8Array[] {
  const k = piecesFor(message.length, bodyBytes);
  if (!k) return [];
  const size = Math.ceil(message.length / k);
  const parity = new Uint8Array(size);
  const pieces: Uint8Array[] = [];
  for (let i = 0; i <= k; i++) {
    const piece = new Uint8Array(HEADER_BYTES + size); // zero-filled: the last body's padding
    const view = new DataView(piece.buffer);
    view.setUint8(0, 0);
    view.setUint8(1, VERSION);
    view.setUint32(2, group >>> 0);
    view.setUint8(6, k);
    view.setUint8(7, i);
    view.setUint32(8, message.length);
    if (i < k) {
      const body = message.subarray(i * size, Math.min((i + 1) * size, message.length));
      piece.set(body, HEADER_BYTES);
      for (let j = 0; j < body.length; j++) parity[j] ^= body[j];
    } else {
      piece.set(parity, HEADER_BYTES);
    }
    pieces.push(piece);
  }
  return pieces;
}
