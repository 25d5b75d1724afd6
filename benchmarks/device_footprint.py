"""What the device side costs without torch: install size, wheels for a Pi, import time, head latency, parity.

    python benchmarks/device_footprint.py [--pip-cache DIR] [--skip-install] [--json out.json]

- install: ``pip install "<checkout>[device]"`` into a fresh venv (x86-64 here); the size of
  every installed distribution (its RECORD: files and the .pyc pip compiled), pip and
  setuptools (there in any venv) left out of the total. Target: <= 200 MB.
- aarch64: for each of those distributions at the installed version, whether PyPI has a wheel a
  64-bit Raspberry Pi OS (Linux aarch64, CPython 3.11) can install (PyPI's JSON API); then the
  device extra's requirements as an aarch64 machine reads them (markers evaluated for aarch64:
  no constriction there, codecs/ans.py encodes) resolved by pip for that platform, binary
  wheels only (``pip install --dry-run --platform ... --only-binary=:all:``).
- import: ``import splitserve.device_client`` in the light venv (median of runs, new process
  each), and with onnxruntime imported too. Target: <= 0.5 s.
- head latency: per model and width, the head alone (frame -> features) in each runtime, one
  thread, median over sample frames; and the entropy coding of those features with constriction
  and with codecs/ans.py (the Python encoder a Pi without constriction uses).
- parity: how often a rounded symbol differs between the runtimes' features on the shipped
  sample, and the accuracy (fmnist) / top-1 agreement with the teacher (lite0) through the
  real tail from each runtime's payloads.

Prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from splitserve.codecs import ans
from splitserve.data.samples import load_sample
from splitserve.device_client.runtimes import make_runtime
from splitserve.models import load

ROOT = Path(__file__).resolve().parents[1]
VENV_TOOLS = {"pip", "setuptools", "wheel"}  # in every venv, not what the device extra brings
MB = 1e6

_SIZES = """
import json
from importlib.metadata import distributions
out = {}
for d in distributions():
    total = pyc = 0
    for f in d.files or ():
        p = d.locate_file(f)
        if p.is_file():
            total += p.stat().st_size
            pyc += p.stat().st_size if p.suffix == ".pyc" else 0
    out[d.metadata["Name"]] = {"version": d.version, "bytes": total, "pyc_bytes": pyc}
print(json.dumps(out))
"""


def light_install(pip_cache: str | None) -> tuple[Path, dict]:
    venv = Path(tempfile.mkdtemp(prefix="splitserve-light-")) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cmd = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"{ROOT}[device]"]
    if pip_cache:
        cmd[4:4] = ["--cache-dir", pip_cache]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - t0
    sizes = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", _SIZES], check=True, env=env,
                                      capture_output=True, text=True).stdout)  # fmt: skip
    torch_there = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], env=env,
                                 capture_output=True).returncode == 0  # fmt: skip
    dists = {k: v for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]["bytes"])}
    mine = [v for k, v in dists.items() if k.lower() not in VENV_TOOLS]
    total, pyc = sum(v["bytes"] for v in mine), sum(v["pyc_bytes"] for v in mine)
    return venv, {"install_s": seconds, "bytes": total, "pyc_bytes": pyc, "distributions": dists,
                  "torch_importable": torch_there}  # fmt: skip


def aarch64_wheel(name: str, version: str) -> str:
    """How a 64-bit Pi (Linux aarch64, CPython 3.11) installs this release from PyPI."""
    # the project's JSON (the per-version URL is not served everywhere); its releases list each version's files
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as r:
        info = json.load(r)
    release = info.get("releases", {}).get(version)
    files = [u["filename"] for u in (release if release else info["urls"])]
    if not release:
        version = info["info"]["version"]  # what a Pi would get today, when this exact one is not listed
    wheels = [f for f in files if f.endswith(".whl")]
    if any(f.endswith("-none-any.whl") for f in wheels):
        return "pure Python wheel"
    py_ok = ("-cp311-", "-abi3-", "-cp37-abi3", "-cp38-abi3", "-cp39-abi3", "-py3-")
    arm = [f for f in wheels if "aarch64" in f and "linux" in f and any(t in f for t in py_ok)]
    arm.sort(key=lambda f: "musllinux" in f)  # Raspberry Pi OS is glibc: manylinux first
    if arm:
        tag = arm[0].rsplit("-", 1)[-1].removesuffix(".whl").split(".")[0]
        return f"yes ({tag}, {version})"
    if any(f.endswith((".tar.gz", ".zip")) for f in files):
        return f"no wheel for {version}: pip builds the sdist"
    return f"NO: no aarch64 wheel and no sdist for {version}"


_ARM_ENV = {"platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux",
            "python_version": "3.11", "python_full_version": "3.11.2", "extra": "device"}  # fmt: skip
_ARM_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")


def aarch64_resolution(venv: Path, pip_cache: str | None) -> dict:
    """What ``pip install splitserve[device]`` pulls on a 64-bit Pi, resolved from binary wheels only."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import json; from importlib.metadata import requires; from packaging.requirements import Requirement\n"
            f"env = {_ARM_ENV!r}\n"
            "reqs = [Requirement(r) for r in requires('splitserve')]\n"
            "reqs = [r for r in reqs if r.marker is None or r.marker.evaluate(env)]\n"
            "print(json.dumps([f'{r.name}{r.specifier}' for r in reqs]))")  # fmt: skip
    reqs = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, env=env,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    cmd = [str(venv / "bin" / "pip"), "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
           "--python-version", "3.11", "--target", str(venv.parent / "aarch64"), "--disable-pip-version-check"]
    for platform_tag in _ARM_PLATFORMS:
        cmd += ["--platform", platform_tag]
    if pip_cache:
        cmd += ["--cache-dir", pip_cache]
    proc = subprocess.run(cmd + reqs, env=env, capture_output=True, text=True)
    would = [line for line in proc.stdout.splitlines() if line.startswith("Would install")]
    return {"requirements": reqs, "ok": proc.returncode == 0 and bool(would),
            "would_install": would[0].removeprefix("Would install ").split() if would else [],
            "error": "" if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]}  # fmt: skip


def import_times(venv: Path, repeat: int = 7) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import time; t = time.perf_counter(); import splitserve.device_client; a = time.perf_counter() - t; "
        "import splitserve.device_client.runtimes.onnx; print(a, time.perf_counter() - t)"
    )
    runs = []
    for _ in range(repeat):
        out = subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, env=env,
                             capture_output=True, text=True).stdout.split()  # fmt: skip
        runs.append((float(out[0]), float(out[1])))
    return {
        "device_client_s": statistics.median(r[0] for r in runs),
        "with_onnxruntime_s": statistics.median(r[1] for r in runs),
        "runs": repeat,
    }


def head_latency(bundle, images: np.ndarray) -> list[dict]:  # type: ignore[no-untyped-def]
    runtimes = {name: make_runtime(name, bundle, threads=1) for name in ("torch", "onnx")}
    rows = []
    for w in range(bundle.width_count):
        row: dict = {"width": w}
        for name, rt in runtimes.items():
            rt.features(images[0], "entropic", w)  # warm-up: first-call allocations, session creation
            times = []
            for img in images:
                t0 = time.perf_counter()
                rt.features(img, "entropic", w)
                times.append((time.perf_counter() - t0) * 1e3)
            row[f"{name}_ms"] = float(np.median(times))
        enc = bundle.encoder_for("entropic", w)
        cdfs = [ans.quantized_cdf(f.astype(np.float64) / float(f.sum())) for f in bundle.entropy_tables(w).freqs]
        features = [runtimes["onnx"].features(img, "entropic", w) for img in images]
        for key, code in (("encode_constriction_ms", enc.encode),
                          ("encode_python_ms", lambda y, e=enc, c=cdfs: ans.encode(e.quantize(y), c))):  # fmt: skip
            times = []
            for y in features:
                t0 = time.perf_counter()
                code(y)
                times.append((time.perf_counter() - t0) * 1e3)
            row[key] = float(np.median(times))
        rows.append(row)
    return rows


def parity(bundle, images: np.ndarray, labels: np.ndarray) -> list[dict]:  # type: ignore[no-untyped-def]
    """Per width: symbols that differ between runtimes, and accuracy / agreement through the real tail."""
    teacher = None
    if (labels < 0).all():  # no labels (photos): agreement with the unsplit teacher instead
        with torch.inference_mode():
            teacher = np.concatenate([bundle.whole_model()(torch.from_numpy(images[i : i + 16])).argmax(1).numpy()
                                      for i in range(0, len(images), 16)])  # fmt: skip
    runtimes = {name: make_runtime(name, bundle, threads=1) for name in ("torch", "onnx")}
    rows = []
    for w in range(bundle.width_count):
        enc, dec = bundle.encoder_for("entropic", w), bundle.decoder_for("entropic", w)
        tail, shape = bundle.server_stage("entropic", w), bundle.latent_shape(w)
        symbols, preds, same_payload = {}, {}, 0
        payloads: dict[str, list[bytes]] = {}
        for name, rt in runtimes.items():
            ys = [rt.features(img, "entropic", w) for img in images]
            symbols[name] = np.stack([enc.quantize(y) for y in ys])
            payloads[name] = [enc.encode(y) for y in ys]
            with torch.inference_mode():
                decoded = torch.stack([dec.decode(p, shape) for p in payloads[name]])
                preds[name] = np.concatenate([tail(decoded[i : i + 64]).argmax(1).numpy()
                                              for i in range(0, len(decoded), 64)])  # fmt: skip
        same_payload = sum(a == b for a, b in zip(payloads["torch"], payloads["onnx"], strict=True))
        truth = labels if teacher is None else teacher
        rows.append({
            "width": w,
            "symbols": int(symbols["torch"].size),
            "symbols_differ": int((symbols["torch"] != symbols["onnx"]).sum()),
            "payloads_identical": int(same_payload),
            "frames": len(images),
            "metric": "accuracy" if teacher is None else "agreement",
            "torch": float((preds["torch"] == truth).mean()),
            "onnx": float((preds["onnx"] == truth).mean()),
            "predictions_differ": int((preds["torch"] != preds["onnx"]).sum()),
        })  # fmt: skip
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pip-cache", help="pip's cache directory for the light install (default: pip's own)")
    p.add_argument("--skip-install", action="store_true", help="no fresh venv: head latency and parity only")
    p.add_argument("--latency-frames", type=int, default=50)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "device_footprint.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'})",
                    "python": platform.python_version()}  # fmt: skip

    if not args.skip_install:
        venv, install = light_install(args.pip_cache)
        report["install"] = install
        print(f"\nlight install: pip install '.[device]' into a fresh venv ({install['install_s']:.0f} s)")
        print(f"{'distribution':28s} {'version':>12s} {'MB':>7s}  aarch64 (Linux, CPython 3.11)")
        for name, info in install["distributions"].items():
            wheel = "(this checkout)" if name == "splitserve" else aarch64_wheel(name, info["version"])
            info["aarch64"] = wheel
            print(f"{name:28s} {info['version']:>12s} {info['bytes'] / MB:7.1f}  {wheel}")
        print(f"{'total (without pip, setuptools)':41s} {install['bytes'] / MB:7.1f}   target <= 200 MB"
              f" ({install['bytes'] / 2**20:.1f} MiB); .pyc pip compiled: {install['pyc_bytes'] / MB:.1f} MB;"
              f" torch importable: {install['torch_importable']}")  # fmt: skip
        report["aarch64"] = arm = aarch64_resolution(venv, args.pip_cache)
        print(f"\non Linux aarch64 the device extra requires: {', '.join(arm['requirements'])}")
        print("  pip --platform manylinux*_aarch64 --only-binary=:all: "
              + (f"would install {' '.join(arm['would_install'])}" if arm["ok"] else f"FAILS: {arm['error']}"))
        report["import"] = imp = import_times(venv)
        shutil.rmtree(venv.parent, ignore_errors=True)
        print(f"\nimport splitserve.device_client: {imp['device_client_s']:.3f} s (target <= 0.5 s); "
              f"with onnxruntime: {imp['with_onnxruntime_s']:.3f} s  (median of {imp['runs']} runs)")  # fmt: skip

    report["models"] = {}
    for name in ("fmnist-split", "lite0-imagenet"):
        bundle = load(name)
        images, labels = load_sample(bundle.manifest["sample"])
        lat = head_latency(bundle, images[: args.latency_frames])
        par = parity(bundle, images, labels)
        report["models"][name] = {"head_latency": lat, "parity": par}
        print(f"\n{name}: head (frame -> features), 1 thread, median of {min(len(images), args.latency_frames)} frames;"
              f" parity on all {len(images)} sample frames")  # fmt: skip
        print(f"{'width':>5s} {'torch ms':>9s} {'onnx ms':>8s} {'code ms':>8s} {'code.py ms':>10s}"
              f" {'symbols differ':>18s} {'same payloads':>14s} {'metric':>10s} {'torch':>7s} {'onnx':>7s}")
        for lr, pr in zip(lat, par, strict=True):
            symbols = f"{pr['symbols_differ']:>6d} / {pr['symbols']:<9d}"
            payloads = f"{pr['payloads_identical']:>6d} / {pr['frames']:<5d}"
            print(f"{lr['width']:5d} {lr['torch_ms']:9.3f} {lr['onnx_ms']:8.3f} {lr['encode_constriction_ms']:8.3f}"
                  f" {lr['encode_python_ms']:10.3f} {symbols} {payloads}"
                  f" {pr['metric']:>10s} {pr['torch']:7.4f} {pr['onnx']:7.4f}")  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
