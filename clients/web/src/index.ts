/** splitserve in the browser. */

export { encode as ansEncode, PRECISION, quantizedCdf } from "./ans.js";
export { EntropicEncoder, type EntropyTables, roundHalfEven } from "./entropic.js";
export {
  type ClassScore, decodeResult, encodeFrame, type Frame, type Result, type ServerTimings, Status, statusName,
} from "./proto.js";
