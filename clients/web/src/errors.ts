/** The SDK's one error type; ``code`` says what kind of trouble, for code that handles some of them. */
export type SplitErrorCode =
  | "unreachable" // the server cannot be reached
  | "unauthorized" // the token is missing or wrong
  | "http" // any other HTTP refusal (the message has the server's reason)
  | "unknown-model"
  | "bundle" // a file is missing or its sha256 does not match
  | "webrtc" // the peer connection could not be made
  | "frame" // the frame cannot be used (wrong size, not an image)
  | "closed"; // the client was closed

export class SplitError extends Error {
  constructor(
    readonly code: SplitErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "SplitError";
  }
}
