/** splitserve in the browser. */

export { encode as ansEncode, PRECISION, quantizedCdf } from "./ans.js";
export { EntropicEncoder, type EntropyTables, roundHalfEven } from "./entropic.js";
export {
  type ClassScore, decodeResult, encodeFrame, type Frame, type Result, type ServerTimings, Status, statusName,
} from "./proto.js";
export { type NdArray, parseNpy, parseNpz } from "./npz.js";
export { tablesFromNpz } from "./entropic.js";
export { type Bundle, listModels, loadBundle, type Manifest, type Progress } from "./bundle.js";
export { type ClientOptions, type Outcome, SplitClient } from "./client.js";
export { SplitError, type SplitErrorCode } from "./errors.js";
export { type FrameSource, type RawFrame, toPixels } from "./frames.js";
export { type Encoded, type Head, HeadRunner, type HeadOptions } from "./head.js";
export { openHead, WorkerHead } from "./head_worker.js";
export { BandwidthMonitor, type LinkEstimate, rateQuantile } from "./bandwidth.js";
export { AdaptivePolicy, type Decision, erfc, FixedPolicy, FramePlanner, normalCdf, type Policy, WidthCost } from "./policy.js";
export { BODY_MAX_BYTES, MAX_PIECES, parityWireBytes, piecesFor, splitPieces } from "./parity.js";
