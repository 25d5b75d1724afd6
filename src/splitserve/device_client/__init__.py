"""The device SDK: run the head here, the tail on an edge server."""

from splitserve.device_client.client import AsyncSplitClient, ClientError, Prediction, SplitClient

__all__ = ["AsyncSplitClient", "ClientError", "Prediction", "SplitClient"]
