"""The browser's head against native onnxruntime's, alone on the CPU: no frame is sent and nothing else runs.

For each model, an idle edge-server --http-port serves the bundle and the demo; Debian's chromium, headless,
opens /demo/?headbench=N, which connects (downloads, checks and warms every width's head) and then times
the head alone on N sample frames per width: the graphs (onnxruntime-web, in its worker on two WASM threads
where the page is cross-origin isolated) and the whole head (graphs + the TypeScript coder). Then Python
onnxruntime, on two threads, runs the same graphs and the Python coder on the same sample frames, and
the graphs once more without its NCHWc layout (x86-only blocked-layout kernels that the WASM build lacks).
Browser first, Python second, one after the other: the two never share the CPU. This CPU moves either
side's median by 20 % or more between runs, so both run --rounds times, alternating, and each side's
number is the median of its rounds' medians.

    python benchmarks/browser_head.py [--models fmnist-split,lite0-imagenet] [--frames 100] [--rounds 3]

Prints a table and the check (browser head within 2x of onnxruntime's, per model and width); writes JSON
under --out. Needs chromium and the built SDK (cd clients/web && npm ci && npm run build).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WEB = REPO / "clients" / "web"


def browser_heads(model: str, frames: int, threads: int, worker: str) -> dict:
    """The demo's headbench report for ``model``, from a fresh idle edge-server and a fresh chromium."""
    sys.path[:0] = [str(HERE), str(REPO / "tests")]
    from browser_link import wait_for_demo
    from test_web_sdk_browser import run_selftest

    from splitserve.simulator.experiment import ExperimentConfig, edge_server, free_port
    from splitserve.simulator.link import LinkConfig

    http_port = free_port()
    web = ["--http-port", str(http_port), "--web-root", str(WEB / "dist")]
    cfg = ExperimentConfig(model=model, strategies=[], uplink=LinkConfig(), downlink=LinkConfig(), server_args=web)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp, edge_server(cfg, Path(tmp)) as (host, _):
        origin = f"http://{host}:{http_port}"
        if not wait_for_demo(origin):
            raise RuntimeError((Path(tmp) / "edge-server.log").read_text()[-2000:])
        url = f"{origin}/demo/?headbench={frames}&model={model}&threads={threads}&worker={worker}"
        return run_selftest(url, Path(tmp), timeout=900)


def onnx_heads(model: str, frames: int, threads: int, blocked: bool = True) -> list[dict]:
    """Python onnxruntime per width on the model's sample frames: the graphs alone, and graphs + coder.

    blocked=False runs onnxruntime without its NCHWc layout (graph optimisation "extended", not "all"):
    the blocked-layout convolutions are x86 kernels that onnxruntime-web's WASM build does not have.
    """
    import onnxruntime as ort

    from splitserve.data.samples import load_sample
    from splitserve.device_client.head import HeadRunner
    from splitserve.models.zoo import load

    bundle = load(model)
    runner = HeadRunner(bundle, threads=threads, runtime="onnx")
    if not blocked:  # sessions open on first use, after this
        runner.runtime.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    images, _ = load_sample(bundle.manifest.get("sample") or "")
    rows = []
    for width in range(bundle.width_count):
        graphs, total = [], []
        for i in range(frames + 10):  # the first ten build and warm the sessions
            frame = runner.check_image(images[i % len(images)])
            t0 = time.perf_counter()
            runner.runtime.features(frame, "entropic", width)
            graphs.append((time.perf_counter() - t0) * 1e3)
            total.append(runner.encode(images[i % len(images)], "entropic", width).head_ms)
        rows.append({"width": width, "graphs_ms_p50": float(np.median(graphs[10:])),
                     "head_ms_p50": float(np.median(total[10:]))})  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="fmnist-split,lite0-imagenet")
    ap.add_argument("--frames", type=int, default=100, help="timed frames per width (default 100)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both runtimes (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both (default 3)")
    ap.add_argument("--worker", choices=("auto", "1", "0"), default="auto",
                    help="the SDK's headInWorker: auto (its default), 1 (a worker), 0 (the page's thread)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("browser_head.py: no chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    if not (WEB / "dist" / "demo" / "demo.js").is_file():
        print("browser_head.py: build the SDK first: cd clients/web && npm ci && npm run build", file=sys.stderr)
        return 2
    rows, checks = [], []
    for model in args.models.split(","):
        pages, natives, plains = [], [], []
        for _ in range(args.rounds):
            page = browser_heads(model, args.frames, args.threads, args.worker)
            if "error" in page:
                raise RuntimeError(f"{model}: the page failed: {page['error']}")
            pages.append(page)
            natives.append(onnx_heads(model, args.frames, args.threads))
            plains.append(onnx_heads(model, args.frames, args.threads, blocked=False))
        page = pages[0]
        for width, b in enumerate(page["widths"]):
            rounds = {key: [p["widths"][width][key] for p in pages] for key in ("graphs_ms_p50", "head_ms_p50")}
            native = {key: [n[width][key] for n in natives] for key in ("graphs_ms_p50", "head_ms_p50")}
            plain = float(np.median([n[width]["graphs_ms_p50"] for n in plains]))
            head, ort_head = float(np.median(rounds["head_ms_p50"])), float(np.median(native["head_ms_p50"]))
            ratio = head / ort_head
            rows.append({"model": model, "width": b["width"],
                         "browser_graphs_ms_p50": float(np.median(rounds["graphs_ms_p50"])),
                         "browser_head_ms_p50": head,
                         "onnxruntime_graphs_ms_p50": float(np.median(native["graphs_ms_p50"])),
                         "onnxruntime_head_ms_p50": ort_head, "ratio": ratio,
                         "onnxruntime_no_nchwc_graphs_ms_p50": plain,
                         "browser_head_ms_rounds": rounds["head_ms_p50"],
                         "onnxruntime_head_ms_rounds": native["head_ms_p50"],
                         "head_in_worker": page["head_in_worker"], "wasm_threads": page["wasm_threads"],
                         "cross_origin_isolated": page["cross_origin_isolated"]})  # fmt: skip
            checks.append({"check": f"{model} width {b['width']}: browser head / onnxruntime head <= 2",
                           "value": ratio, "limit": 2.0})  # fmt: skip
    print(f"{'model':<16} {'width':>5} {'in worker':>9} {'browser graphs':>15} {'browser head':>13} {'ort graphs':>11} "
          f"{'ort head':>9} {'ratio':>6} {'ort graphs, no NCHWc':>21}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<16} {r['width']:>5} {str(r['head_in_worker']):>9} {r['browser_graphs_ms_p50']:>12.2f} ms "
              f"{r['browser_head_ms_p50']:>10.2f} ms {r['onnxruntime_graphs_ms_p50']:>8.2f} ms "
              f"{r['onnxruntime_head_ms_p50']:>6.2f} ms {r['ratio']:>6.2f} "
              f"{r['onnxruntime_no_nchwc_graphs_ms_p50']:>18.2f} ms")  # fmt: skip
    met = all(c["value"] <= c["limit"] for c in checks)
    print(f"browser head within 2x of onnxruntime at every model and width: {'met' if met else 'missed'}")
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "browser_head.json"
    out.write_text(json.dumps({"browser": version, "cpu": os.uname().machine, "cores": os.cpu_count(),
                               "frames": args.frames, "threads": args.threads, "rounds": args.rounds,
                               "rows": rows, "checks": checks},
                              indent=1) + "\n")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
