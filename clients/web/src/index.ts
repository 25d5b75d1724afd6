/** splitserve in the browser. */

export { encode as ansEncode, PRECISION, quantizedCdf } from "./ans.js";
export { EntropicEncoder, type EntropyTables, roundHalfEven } from "./entropic.js";
