"""The browser SDK (clients/web): built with esbuild, unit-tested with node's test runner against golden
vectors this test writes from the Python side, so the TypeScript encoder must give the very bytes the
server decodes."""

import fcntl
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import splitserve
from splitserve.codecs import ans
from splitserve.codecs.entropic import EntropicEncoder
from splitserve.models.zoo import load

WEB = Path(__file__).resolve().parents[1] / "clients" / "web"
pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="node and npm are needed for the browser SDK (apt-get install nodejs npm)")


@pytest.fixture(scope="module")
def built():
    """Install the package's build tools (the npm registry) once, and build it. Under pytest-xdist two
    test processes may want it at once: a lock keeps them from installing and writing dist/ together."""
    with open(Path(tempfile.gettempdir()) / "splitserve-web-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (WEB / "node_modules" / ".bin" / "esbuild").exists():
            proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
            if proc.returncode != 0:
                pytest.skip(f"npm ci failed (no registry?): {proc.stderr.strip().splitlines()[-1:]}")
        proc = subprocess.run(["npm", "run", "build"], cwd=WEB, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return WEB / "dist" / "splitserve.js"


def _ans_case(name, probabilities, rng, per_row, uniform=False):
    cdfs = [ans.quantized_cdf(p) for p in probabilities]
    # uniform: every symbol as likely, the rarest (one unit of 2**24) too: the coder's widest quotients
    symbols = np.stack([rng.choice(len(p), per_row, p=None if uniform else p / p.sum()) for p in probabilities])
    return {"name": name, "probabilities": [p.tolist() for p in probabilities], "cdfs": cdfs,
            "symbols": symbols.reshape(-1).tolist(), "payload": ans.encode(symbols, cdfs).hex()}  # fmt: skip


def _entropic_case(name, tables, shape, rng):
    encoder = EntropicEncoder(tables, shape)
    lows = (tables.medians + tables.offsets).astype(np.float32)
    spans = np.array([len(f) for f in tables.freqs], dtype=np.float32)
    # features across each table and past both its ends (clamped), a few exactly on .5 (ties)
    features = (lows[:, None] + rng.uniform(-3, spans[:, None] + 3, (shape[0], shape[1] * shape[2])))
    features[:, :4] = np.round(features[:, :4]) + 0.5
    features = features.astype(np.float32).reshape(shape)
    return {"name": name, "shape": list(shape), "medians": tables.medians.astype(float).tolist(),
            "offsets": tables.offsets.tolist(), "freqs": [f.tolist() for f in tables.freqs],
            "features": features.reshape(-1).astype(float).tolist(),
            "symbols": encoder.quantize(features).reshape(-1).tolist(),
            "payload": encoder.encode(features).hex()}  # fmt: skip


def golden_vectors(rng: np.random.Generator) -> dict:
    cases = []
    for n in (2, 3, 17, 255, 4000):  # alphabet sizes, skewed and flat, with symbols of tiny probability
        p = rng.dirichlet(np.full(n, 0.3))
        p[rng.integers(n)] = 1e-12
        cases.append(_ans_case(f"random, {n} symbols", [p, rng.random(n) + 1e-3], rng, 300))
    skewed = rng.dirichlet(np.full(300, 0.05))
    cases.append(_ans_case("rare symbols as often as common ones", [skewed, rng.random(300) ** 8], rng, 3000, True))
    cases.append(_ans_case("long stream", [rng.dirichlet(np.ones(40)) for _ in range(6)], rng, 5000))
    entropic = []
    for model in ("fmnist-split", "lite0-imagenet"):
        bundle = load(model)
        for w in range(bundle.width_count):
            shape = tuple(bundle.latent_shape(w))
            case = _entropic_case(f"{model} width {w}", bundle.entropy_tables(w), shape, rng)
            entropic.append({**case, "npz": str(bundle.path / "entropy.npz"), "width": w})
    samples = []
    for path in sorted((Path(splitserve.__file__).parent / "data" / "samples").glob("*.npz")):
        with np.load(path) as z:
            arrays = {k: {"shape": list(z[k].shape), "sum": float(z[k].astype(np.float64).sum()),
                          "first": z[k].reshape(-1)[:16].astype(float).tolist()} for k in z}  # fmt: skip
        samples.append({"npz": str(path), "arrays": arrays})
    return {"ans": cases, "entropic": entropic, "samples": samples, **wire_vectors(rng),
            "planner": [planner_trace(np.random.default_rng(seed)) for seed in (0, 1, 2)]}


def planner_trace(rng: np.random.Generator, frames: int = 600) -> dict:
    """The adaptive loop over a synthetic link (steps of rate, jitter, a queue): every input it got, in order,
    with the decision and the estimate each plan gave, for the TypeScript port to replay on the same clock."""
    from splitserve.device_client.bandwidth import BandwidthMonitor
    from splitserve.device_client.policy import AdaptivePolicy, FramePlanner, WidthCost

    clock = [0.0]
    widths = [(480, 5.8, 0.58), (920, 5.5, 0.81), (1420, 6.2, 0.82), (2520, 6.4, 0.88), (4700, 7.0, 0.89)]
    costs = [WidthCost(b, h, a) for b, h, a in widths]
    monitor = BandwidthMonitor(clock=lambda: clock[0])
    planner = FramePlanner(AdaptivePolicy(costs, server_ms=17.0, local_ms=23.0), monitor)
    rates = rng.choice([8e6, 3e6, 1e6, 0.5e6, 0.15e6], size=6)
    events, flying, link_free = [], [], 0.0
    for i in range(frames):
        now = i * 0.1
        for f in sorted((f for f in flying if f["back"] <= now), key=lambda f: f["back"]):
            clock[0] = f["back"]
            elapsed, server = (f["back"] - f["sent"]) * 1e3, f["server"]
            planner.result(f["bytes"], elapsed, server)
            events.append({"t": clock[0], "op": "result", "bytes": f["bytes"], "elapsed": elapsed, "server": server})
            flying.remove(f)
        clock[0] = now
        pending = [[f["bytes"], f["sent"]] for f in flying]
        decision, est = planner.plan(150.0, True, [tuple(p) for p in pending])
        events.append({"t": now, "op": "plan", "deadline": 150.0, "pending": pending,
                       "decision": [decision.local, decision.width, decision.probe],
                       "estimate": [est.bandwidth_bps, est.rtt_ms, est.sigma, est.backlog_bytes]})  # fmt: skip
        if decision.local and not decision.probe:
            continue
        w = decision.width
        nbytes = int(widths[w][0] * rng.uniform(0.85, 1.15))
        head = widths[w][1] * rng.uniform(0.9, 1.3)
        planner.encoded(w, nbytes, head)
        events.append({"t": now, "op": "encoded", "width": w, "bytes": nbytes, "head": head})
        sent = now + head / 1e3
        rate = rates[min(int(now // 10), len(rates) - 1)] * rng.uniform(0.7, 1.1)
        link_free = max(link_free, sent) + nbytes * 8 / rate
        flying.append({"bytes": nbytes, "sent": sent, "server": 17.0 * rng.uniform(0.8, 1.5),
                       "back": link_free + 0.04 + 0.017})  # fmt: skip
    return {"events": events}


def wire_vectors(rng: np.random.Generator) -> dict:
    """Frames the TypeScript side must serialize to Python's very bytes, and Results it must read."""
    from splitserve.proto import edge_inference_pb2 as pb

    frames = []
    for i, (payload, deadline, tags) in enumerate([(b"", 0, {}), (rng.bytes(3000), 150, {}), (b"\x00", 1, {"k": "v"})]):
        fields = {"frameId": [1, 2**40 + 7, 300][i], "model": "lite0-imagenet", "version": "9",
                  "bundleSha256": "ab" * 32, "codec": "entropic", "width": i, "payload": payload.hex(),
                  "shape": [64, 14, 14], "captureTimeUs": 1_765_000_000_123_456, "deadlineMs": deadline,
                  "tags": tags, "topK": 5}  # fmt: skip
        message = pb.Frame(frame_id=fields["frameId"], model="lite0-imagenet", version="9", bundle_sha256="ab" * 32,
                           codec="entropic", width=i, payload=payload, shape=[64, 14, 14],
                           capture_time_us=1_765_000_000_123_456, deadline_ms=deadline, tags=tags, top_k=5)  # fmt: skip
        frames.append({"fields": fields, "bytes": message.SerializeToString(deterministic=True).hex()})
    results = []
    for status in (1, 2, 3):
        message = pb.Result(
            frame_id=2**33 + status, status=status, error="" if status == 1 else "why ✓", model="m", version="9",
            width=3, tags={"k": "v"}, top_k=[pb.ClassScore(index=i, label=f"class {i}", score=0.5 / (i + 1))
                                             for i in range(3 if status == 1 else 0)],
            timings=pb.ServerTimings(received_unix_us=1_765_000_000_000_001, decode_ms=1.25, queue_ms=0.5,
                                     tail_ms=7.75, total_ms=9.5, batch_size=4),
        )  # fmt: skip
        results.append({"bytes": message.SerializeToString().hex(), "frameId": message.frame_id,
                        "status": status, "error": message.error, "topK": [[c.index, c.label, c.score]
                        for c in message.top_k], "totalMs": 9.5, "batchSize": 4, "tags": {"k": "v"}})  # fmt: skip
    from splitserve import parity

    pieces = []
    most = parity.BODY_MAX_BYTES
    for n, group, body in ((2472, 7, most), (4522, 2**32 - 1, most), (most, 1, most), (178, 3, 64), (1089, 0, 1088)):
        message = rng.bytes(n)
        pieces.append({"message": message.hex(), "group": group, "bodyBytes": body,
                       "pieces": [p.hex() for p in parity.split(message, group, body)],
                       "wireBytes": parity.wire_bytes(n, 53)})  # fmt: skip
    return {"frames": frames, "results": results, "pieces": pieces}


def test_the_typescript_encoder_gives_the_python_encoders_bytes(built, tmp_path):
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(golden_vectors(np.random.default_rng(0))))
    env = {"PATH": str(Path(shutil.which("node")).parent), "SPLITSERVE_GOLDEN": str(path)}
    proc = subprocess.run(["node", "--test", "test/"], cwd=WEB, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# skipped 0" in proc.stdout


def test_the_python_encoders_agree_on_the_golden_vectors():
    """The vectors themselves: Python's own encoder gives constriction's bytes on them (where it is installed)."""
    constriction = pytest.importorskip("constriction")
    vectors = golden_vectors(np.random.default_rng(1))
    for case in vectors["ans"]:
        coder = constriction.stream.stack.AnsCoder()
        symbols = np.array(case["symbols"], dtype=np.int32).reshape(len(case["probabilities"]), -1)
        for row, p in zip(symbols[::-1], case["probabilities"][::-1], strict=True):
            coder.encode_reverse(row, constriction.stream.model.Categorical(np.array(p), perfect=False))
        assert coder.get_compressed().astype("<u4").tobytes().hex() == case["payload"], case["name"]
