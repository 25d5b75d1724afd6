"""The ways a device can get a frame classified, compared side by side.

- ``local``: the whole model on the device; no link at all.
- ``jpeg`` / ``webp`` / ``png`` (optionally ``jpeg:Q`` for quality Q): full offload of the image.
- ``fp16`` / ``int8``: split at the same layer, raw teacher features (no learned bottleneck).
- ``split:W``: the entropic codec at fixed width W.
- ``adaptive``: the entropic codec, width chosen per frame by the bandwidth monitor and policy.

Each runs on one transport, gRPC unless ``--transport`` names others: then every
strategy that uses the link runs once per transport, named ``name@transport``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from splitserve.codecs import CODEC_IDS, PayloadKind, codec_kind


@dataclass(frozen=True)
class Strategy:
    name: str
    codec: str | None  # the payload codec; None for local-only inference, which sends nothing
    width: int = -1
    quality: int = 75
    adaptive: bool = False
    transport: str = "grpc"

    @property
    def local(self) -> bool:
        return self.codec is None

    @property
    def has_widths(self) -> bool:
        """Whether its frames come at a width of the slimmable head (fixed or chosen per frame)."""
        return self.codec is not None and codec_kind(self.codec).has_widths

    def encoder_params(self) -> dict[str, int]:
        return {"quality": self.quality} if self.codec is not None and codec_kind(self.codec).has_quality else {}

    def client_args(self) -> list[str]:
        """device-client flags that run this strategy."""
        return [*self._path_args(), "--transport", self.transport]

    def _path_args(self) -> list[str]:
        if self.local:
            return ["--policy", "local"]
        if self.adaptive:
            return ["--policy", "adaptive"]
        if self.has_widths:
            return ["--policy", f"fixed:{self.width}"]
        args = ["--codec", self.codec]
        for flag, value in self.encoder_params().items():
            args += [f"--{flag}", str(value)]
        return args


def parse_strategy(spec: str, widths: int) -> Strategy:
    spec = spec.strip()
    name, _, arg = spec.partition(":")
    kind = codec_kind(name) if name in CODEC_IDS else None
    if name == "local":
        return Strategy(spec, None)
    if name == "adaptive":
        return Strategy(spec, "entropic", adaptive=True)
    if name == "split":
        try:
            width = int(arg)
        except ValueError:
            raise ValueError(f"strategy {spec!r}: use split:W with W a width index (0..{widths - 1})") from None
        if not 0 <= width < widths:
            raise ValueError(f"strategy {spec!r}: this model's widths are 0..{widths - 1}")
        return Strategy(spec, "entropic", width=width)
    if kind is not None and kind.has_quality:
        quality = 75
        if arg:
            try:
                quality = int(arg)
            except ValueError:
                raise ValueError(f"strategy {spec!r}: quality must be an integer") from None
        return Strategy(spec, name, quality=quality)
    if kind is PayloadKind.FEATURES and not arg:
        return Strategy(spec, name)
    raise ValueError(f"unknown strategy {spec!r}; use local, jpeg[:Q], webp[:Q], png, fp16, int8, split:W, adaptive")


def default_strategies(widths: int) -> list[str]:
    return ["local", "jpeg", "png", "int8", *[f"split:{w}" for w in range(widths)], "adaptive"]


def parse_strategies(spec: str | None, widths: int) -> list[Strategy]:
    names = default_strategies(widths) if not spec or spec == "all" else [s for s in spec.split(",") if s.strip()]
    strategies = [parse_strategy(s, widths) for s in names]
    if len({s.name for s in strategies}) != len(strategies):
        raise ValueError("each strategy may appear only once")
    return strategies


def with_transports(strategies: list[Strategy], transports: list[str]) -> list[Strategy]:
    """Every strategy on each transport (``split:3@webrtc``); local runs once, it has no link."""
    from splitserve.device_client.transports import TRANSPORTS

    for t in transports:
        if t not in TRANSPORTS:
            raise ValueError(f"unknown transport {t!r}; one of {', '.join(TRANSPORTS)}")
    if len(set(transports)) != len(transports) or not transports:
        raise ValueError("name each transport once")
    if transports == ["grpc"]:
        return strategies
    out = []
    for s in strategies:
        if s.local:
            out.append(s)
            continue
        out += [replace(s, name=f"{s.name}@{t}", transport=t) for t in transports]
    return out
