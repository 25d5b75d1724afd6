"""The SDK's one error type: what a caller of the client catches (a frame that fails never raises)."""


class ClientError(RuntimeError):
    """The client cannot reach or use the server; the message says what to check."""
