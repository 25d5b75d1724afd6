"""The head runtimes: torch and onnx put the same bytes on the wire; the device SDK runs without torch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BIN
from test_e2e import run_client

from splitserve.data.samples import load_sample
from splitserve.device_client.head import HeadRunner
from splitserve.device_client.runtimes import make_runtime, resolve
from splitserve.models.coding import CodingBundle
from splitserve.models.manifest import BundleError

ort = pytest.importorskip("onnxruntime")

# Run code as on a device install: importing torch (or what needs it) fails.
NO_TORCH = "import sys\nsys.modules.update(torch=None, torchvision=None, compressai=None)\n"


def python(code: str, *, without_torch: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", (NO_TORCH if without_torch else "") + code],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_device_sdk_imports_no_torch():
    proc = python(
        "import sys, splitserve.device_client, splitserve.device_client.cli, splitserve.codecs, splitserve.models\n"
        "import splitserve.device_client.runtimes.onnx\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'compressai') if m in sys.modules))",
        without_torch=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_onnx_runtime_encodes_frames_without_torch(fmnist):
    """The device side on its own: auto picks onnx when torch is missing; payloads match the torch runtime's."""
    proc = python(
        "import json, hashlib\n"
        "from splitserve.data.samples import load_sample\n"
        "from splitserve.device_client.bundles import local_bundle\n"
        "from splitserve.device_client.head import HeadRunner\n"
        "head = HeadRunner(local_bundle('fmnist-split'), threads=1)\n"
        "images, _ = load_sample('fmnist-test')\n"
        "out = {'runtime': head.runtime.name, 'payloads': [[head.encode(img, 'entropic', w).payload.hex()\n"
        "        for img in images[:20]] for w in range(head.bundle.student.widths)],\n"
        "       'local': [int(head.infer_whole(img)[0].argmax()) for img in images[:20]],\n"
        "       'jpeg': head.encode(images[0], 'jpeg').payload.hex()}\n"
        "print(json.dumps(out))"
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["runtime"] == "onnx"
    reference = HeadRunner(fmnist, runtime="torch")
    images, _ = load_sample("fmnist-test")
    same = sum(
        bytes.fromhex(p) == reference.encode(img, "entropic", w).payload
        for w, payloads in enumerate(got["payloads"])
        for img, p in zip(images[:20], payloads, strict=True)
    )
    assert same >= 20 * fmnist.student.widths - 1  # a rounded symbol may differ, rarely (see the next test)
    assert got["local"] == [int(reference.infer_whole(img)[0].argmax()) for img in images[:20]]
    assert bytes.fromhex(got["jpeg"]) == reference.encode(images[0], "jpeg").payload


def test_torch_runtime_without_torch_names_the_extra():
    proc = python(
        "from splitserve.device_client.bundles import local_bundle\n"
        "from splitserve.device_client.runtimes import RuntimeUnavailable, make_runtime\n"
        "try:\n"
        "    make_runtime('torch', local_bundle('fmnist-split'))\n"
        "except RuntimeUnavailable as exc:\n"
        "    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'splitserve[server]'" in proc.stdout and "onnx runtime" in proc.stdout


@pytest.mark.parametrize(
    "module, argv", [("splitserve.edge_server.cli", ["--port", "0"]), ("splitserve.cli", ["models"])]
)
def test_a_command_without_its_extra_says_which_to_install(module, argv):
    proc = python(f"from splitserve.commands import run\nsys.argv = ['cmd', *{argv}]\nsys.exit(run('cmd', '{module}'))")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "cmd: needs the server extra (torch is not installed): pip install 'splitserve[server]'"
    ]


def _symbols_and_predictions(bundle, images, width):
    """Per runtime: the rounded symbols of every frame, and the tail's prediction from the decoded payload."""
    enc, dec = bundle.encoder_for("entropic", width), bundle.decoder_for("entropic", width)
    tail, shape = bundle.server_stage("entropic", width), bundle.latent_shape(width)
    out = {}
    for name in ("torch", "onnx"):
        runtime = make_runtime(name, bundle, threads=1)
        symbols, payloads = [], []
        for img in images:
            y = runtime.features(img, "entropic", width)
            symbols.append(enc.quantize(y))
            payloads.append(dec.decode(enc.encode(y), shape))
        with torch.inference_mode():
            predictions = tail(torch.stack(payloads)).argmax(1).numpy()
        out[name] = (np.stack(symbols), predictions)
    return out


def test_runtimes_code_the_same_symbols_fmnist(fmnist):
    images, labels = load_sample("fmnist-test")
    images, labels = images[:400], labels[:400]
    for width in range(fmnist.student.widths):
        r = _symbols_and_predictions(fmnist, images, width)
        differ = (r["torch"][0] != r["onnx"][0]).mean()
        assert differ <= 1e-4, f"width {width}: {differ:.2e} of the symbols differ"
        # a symbol within float rounding of a quantization boundary may round the other way (how often
        # depends on the CPU's kernels), and now and then that changes one frame's prediction
        accuracy = {k: float((v[1] == labels).mean()) for k, v in r.items()}
        assert abs(accuracy["onnx"] - accuracy["torch"]) <= 1 / len(labels), accuracy
        assert (r["torch"][1] == r["onnx"][1]).mean() >= 0.995


@pytest.mark.slow
def test_runtimes_code_the_same_symbols_lite0(lite0):
    images, _ = load_sample("photos-224")
    for width in (0, lite0.student.widths - 1):
        r = _symbols_and_predictions(lite0, images[:12], width)
        assert (r["torch"][0] != r["onnx"][0]).mean() <= 1e-4
        assert (r["torch"][1] == r["onnx"][1]).mean() >= 11 / 12


def test_the_teachers_first_layers_are_one_graph_that_every_width_continues_from(lite0):
    """lite0's head starts with the teacher's first blocks: exported once, not in each width's graph."""
    prefix = ort.InferenceSession(str(lite0.manifest.onnx_prefix()))
    assert [i.name for i in prefix.get_inputs()] == ["frame"]
    out = prefix.get_outputs()[0]
    assert out.shape == [1, *lite0.teacher_spec["feature_shape"]]
    for width in range(lite0.student.widths):
        head = ort.InferenceSession(str(lite0.manifest.onnx_head(width)))
        assert [(i.name, i.shape) for i in head.get_inputs()] == [("prefix", out.shape)]
        assert head.get_outputs()[0].shape == [1, *lite0.latent_shape(width)]
    assert "prefix.onnx" in lite0.manifest.device_files()  # GetHead streams it with the heads
    assert json.loads((lite0.path / "manifest.json").read_text())["onnx"]["prefix"] == "prefix.onnx"


@pytest.fixture
def fmnist_copy(tmp_path, fmnist):
    dest = tmp_path / "fmnist-split" / fmnist.version
    shutil.copytree(fmnist.path, dest)
    return dest


def test_a_bundle_without_onnx_heads_is_refused_by_the_onnx_runtime(fmnist_copy):
    manifest = json.loads((fmnist_copy / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.endswith(".onnx")}
    (fmnist_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"no ONNX head for width 0.*--format onnx --into-bundle"):
        make_runtime("onnx", CodingBundle.load(fmnist_copy))


def test_a_tampered_onnx_head_is_refused(fmnist_copy):
    with open(fmnist_copy / "head-w1.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01")
    with pytest.raises(BundleError, match=r"head-w1\.onnx: sha256 .* does not match"):
        CodingBundle.load(fmnist_copy, verify="device")


def test_the_onnx_runtime_says_what_it_cannot_do(fmnist, lite0):
    runtime = make_runtime("onnx", fmnist)
    frame = load_sample("fmnist-test")[0][0]
    with pytest.raises(ValueError, match="entropic head only.*torch runtime"):
        runtime.features(frame, "fp16", 0)
    assert runtime.runs_locally()
    lite = make_runtime("onnx", lite0)
    assert not lite.runs_locally()  # its teacher's weights come from a package, not the bundle
    with pytest.raises(BundleError, match="local inference needs the torch runtime"):
        lite.logits(np.zeros(lite0.input.image_shape, np.uint8))


@pytest.mark.e2e
def test_device_client_says_what_the_onnx_runtime_cannot_do(shared_server, tmp_path):
    server = shared_server
    for args, message in (
        (("--model", "fmnist-split", "--codec", "fp16"), "the onnx runtime cannot encode the fp16 codec"),
        (("--model", "lite0-imagenet", "--policy", "local"), "the onnx runtime cannot run this model locally"),
    ):
        proc = subprocess.run(
            [str(BIN / "device-client"), "--server", server.address, "--frames", "2", "--runtime", "onnx", *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_runtime_names():
    assert resolve("auto") == "torch"  # installed here: the reference wins
    assert resolve("onnx") == "onnx"
    with pytest.raises(ValueError, match="unknown head runtime 'tflite'"):
        resolve("tflite")


def test_device_execution_providers():
    from splitserve.device_client.runtimes.onnx import device_providers

    have = ["CUDAExecutionProvider", "CPUExecutionProvider", "XnnpackExecutionProvider"]
    assert device_providers(have) == ["XnnpackExecutionProvider", "CPUExecutionProvider"]
    assert device_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


@pytest.mark.e2e
def test_device_client_onnx_runtime_fetches_its_heads_and_matches_torch(shared_server, tmp_path, monkeypatch):
    """device-client --runtime onnx --fetch: the ONNX heads come over GetHead; results equal the torch runtime's."""
    monkeypatch.setenv("SPLITSERVE_CACHE", str(tmp_path / "cache"))
    server = shared_server
    common = ("--model", "fmnist-split", "--frames", "120", "--concurrency", "4")
    onnx = run_client(server.address, tmp_path, *common, "--runtime", "onnx", "--fetch")
    fetched = list((tmp_path / "cache").rglob("head-w*.onnx"))
    assert len(fetched) == 4 and any(p.name == "teacher.onnx" for p in (tmp_path / "cache").rglob("*.onnx"))
    reference = run_client(server.address, tmp_path, *common, "--runtime", "torch")
    assert onnx["runtime"] == "onnx" and reference["runtime"] == "torch"
    assert onnx["ok"] == 120 and onnx["accuracy"] == reference["accuracy"]
    assert onnx["predictions"] == reference["predictions"]
    local = run_client(server.address, tmp_path, "--model", "fmnist-split", "--frames", "20", "--runtime", "onnx",
                       "--policy", "local")  # fmt: skip
    assert local["local_frames"] == 20 and local["accuracy"] >= 0.8


def test_device_client_help_lists_runtimes():
    proc = subprocess.run([str(BIN / "device-client"), "--help"], capture_output=True, text=True, timeout=60)
    assert "--runtime {auto,torch,onnx}" in proc.stdout


@pytest.mark.parametrize("policy, sessions", [("adaptive", 4), (None, 1)])
def test_connect_warms_every_width_the_policy_may_pick(shared_server, policy, sessions):
    """The first frame at a width must not pay for building its onnxruntime session against its deadline."""
    import asyncio

    from splitserve.device_client.client import AsyncSplitClient
    from splitserve.device_client.options import ClientOptions

    async def main() -> tuple[float, int, str]:
        options = ClientOptions(runtime="onnx", policy=policy, width=2, deadline_ms=5000)
        async with AsyncSplitClient(shared_server.address, "fmnist-split", options) as client:
            built = sum("head-w" in Path(path).name for path in client.head.runtime._sessions)
            p = await client.infer(load_sample("fmnist-test")[0][0])
            return client.warmup_ms, built, p.status

    warmup_ms, built, status = asyncio.run(main())
    assert warmup_ms > 0 and status == "OK"
    assert built == sessions  # fmnist-split has 4 widths
