"""The device SDK: run the head here, the tail on an edge server."""

from splitserve.device_client.client import AsyncSplitClient, SplitClient
from splitserve.device_client.options import ClientOptions
from splitserve.device_client.prediction import ClientError, Prediction

__all__ = ["AsyncSplitClient", "ClientError", "ClientOptions", "Prediction", "SplitClient"]
