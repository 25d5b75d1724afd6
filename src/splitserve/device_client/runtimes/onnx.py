"""The onnx head runtime: the heads exported into the bundle, run by onnxruntime (no torch on the device).

Each width is its own graph (uint8 (1, H, W, C) frame -> features (1, C, h, w)), opened on
first use; where the head starts with the teacher's first layers, those are one graph of their
own that every width's graph continues from. The whole teacher is exported too when the bundle
carries its weights, for local inference; otherwise local inference needs the torch runtime,
and ``logits`` says so.

Execution providers: the ones a phone or a Pi build of onnxruntime offers (NNAPI on Android,
CoreML on Apple, XNNPACK, the Arm Compute Library), when this build has them, then the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from splitserve.codecs import PayloadKind, codec_kind
from splitserve.device_client.runtimes.base import HeadRuntime
from splitserve.models.coding import CodingBundle
from splitserve.models.manifest import BundleError

DEVICE_PROVIDERS = (
    "NnapiExecutionProvider",
    "CoreMLExecutionProvider",
    "XnnpackExecutionProvider",
    "ACLExecutionProvider",
    "CPUExecutionProvider",
)


def device_providers(available: Sequence[str] | None = None) -> list[str]:
    """The device execution providers this onnxruntime build offers, in order of preference."""
    have = set(ort.get_available_providers() if available is None else available)
    return [p for p in DEVICE_PROVIDERS if p in have] or ["CPUExecutionProvider"]


class OnnxRuntime(HeadRuntime):
    name = "onnx"

    def __init__(
        self, bundle: CodingBundle, threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        super().__init__(bundle)
        for w in range(bundle.width_count):  # refuse a bundle without exported heads now, not on a frame
            bundle.manifest.onnx_head(w)
        self.options = ort.SessionOptions()
        if threads:
            self.options.intra_op_num_threads = threads
            self.options.inter_op_num_threads = 1
        self.providers = list(providers) if providers else device_providers()
        self._sessions: dict[str, ort.InferenceSession] = {}
        # bundles exported with a shared prefix graph feed its output to every width's head
        self._prefix = bundle.manifest.onnx_prefix()
        self._head_input = "frame" if self._prefix is None else "prefix"

    def _session(self, path: str) -> ort.InferenceSession:
        if path not in self._sessions:
            self._sessions[path] = ort.InferenceSession(path, self.options, providers=self.providers)
        return self._sessions[path]

    def supports(self, codec: str) -> bool:
        # the exported graphs are the slimmable heads; image codecs run no network at all
        return codec_kind(codec) in (PayloadKind.LATENT, PayloadKind.IMAGE)

    def features(self, frame: np.ndarray, codec: str, width: int) -> np.ndarray:
        if codec_kind(codec) is not PayloadKind.LATENT:
            raise ValueError(
                f"the onnx runtime runs the entropic head only; the {codec} codec needs the teacher's first "
                "layers: use the torch runtime"
            )
        head = self._session(str(self.bundle.manifest.onnx_head(width)))
        x = np.ascontiguousarray(frame[None])
        if self._prefix is not None:
            x = self._session(str(self._prefix)).run(None, {"frame": x})[0]
        return head.run(None, {self._head_input: x})[0][0]

    def logits(self, frame: np.ndarray) -> np.ndarray:
        teacher = self.bundle.manifest.onnx_teacher()
        if teacher is None:
            raise BundleError(
                f"{self.bundle.name}:{self.bundle.version} carries no ONNX teacher (its weights come from a "
                "package, too large to ship in the bundle): local inference needs the torch runtime"
            )
        return self._session(str(teacher)).run(None, {"frame": np.ascontiguousarray(frame[None])})[0][0]

    def runs_locally(self) -> bool:
        return self.bundle.manifest.onnx_teacher() is not None


RUNTIME = OnnxRuntime
