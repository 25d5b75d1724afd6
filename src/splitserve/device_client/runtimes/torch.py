"""The torch head runtime: the bundle's own networks (the reference the ONNX heads are checked against)."""

from __future__ import annotations

import numpy as np
import torch

from splitserve.device_client.runtimes.base import HeadRuntime
from splitserve.models.bundle import Bundle
from splitserve.models.coding import CodingBundle


class TorchRuntime(HeadRuntime):
    name = "torch"

    def __init__(self, bundle: CodingBundle, threads: int | None = None) -> None:
        full = Bundle(bundle.manifest)
        super().__init__(full)
        self.full = full
        if threads:
            torch.set_num_threads(threads)
        self.pre = full.preprocess()

    @torch.inference_mode()
    def features(self, frame: np.ndarray, codec: str, width: int) -> np.ndarray:
        stage = self.full.device_stage(codec, width)
        return stage(self.pre(torch.from_numpy(frame).unsqueeze(0)))[0].numpy()

    @torch.inference_mode()
    def logits(self, frame: np.ndarray) -> np.ndarray:
        return self.full.whole_model()(torch.from_numpy(frame).unsqueeze(0))[0].numpy()

    def runs_locally(self) -> bool:
        return self.full.manifest.has_local_model()


RUNTIME = TorchRuntime
