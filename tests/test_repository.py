"""The model repository in-process: versions, resolution, routes by typed batch key, refusals."""

import asyncio
import json
import shutil

import pytest
import torch

from splitserve.codecs import BatchKey, PayloadKind
from splitserve.edge_server.config import BatchingConfig
from splitserve.edge_server.repository import InvalidRoute, ModelRepository, UnknownModel
from splitserve.edge_server.tail import DeviceWorker


@pytest.fixture(scope="module")
def worker():
    w = DeviceWorker(torch.device("cpu"))
    yield w
    w.shutdown()


def add_version(root, bundle, version: str, tamper: bool = False):
    dest = root / bundle.name / version
    shutil.copytree(bundle.path, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = version
    (dest / "manifest.json").write_text(json.dumps(manifest))
    if tamper:
        (dest / "tail.pt").write_bytes(b"not the weights the manifest promised")
    return dest


def with_repository(root, worker, check, batching=None, overrides=None):
    """Run ``check(repository)`` (a coroutine function) on a scanned repository, then close its batchers."""

    async def main():
        repo = ModelRepository(root, worker, None, batching or BatchingConfig(), overrides or {})
        try:
            return await check(repo)
        finally:
            for b in repo.batchers():
                await b.close()

    return asyncio.run(asyncio.wait_for(main(), 300))


def test_routes_are_keyed_by_payload_kind_and_width(tmp_path, worker, fmnist):
    add_version(tmp_path, fmnist, "1")

    async def check(repo):
        assert await repo.scan() == [f"{fmnist.name}:1"]
        served = repo.resolve(fmnist.name)
        widths = fmnist.student.widths
        assert set(served.batchers) == {
            *(BatchKey(PayloadKind.LATENT, w) for w in range(widths)),
            BatchKey(PayloadKind.FEATURES), BatchKey(PayloadKind.IMAGE),
        }  # fmt: skip
        route = served.route("entropic", widths - 1)
        assert route.key == BatchKey(PayloadKind.LATENT, widths - 1) and route.key.label == str(widths - 1)
        assert route.decoder.codec_id == "entropic" and route.decoder.shape == fmnist.latent_shape(widths - 1)
        # every image codec feeds one tail, so their frames batch together; the width is ignored
        assert served.route("jpeg", 0).batcher is served.route("png", 3).batcher
        assert served.route("png", 3).key == BatchKey(PayloadKind.IMAGE) and served.route("png", 3).key.label == "image"
        assert served.route("fp16", 0).batcher is served.route("int8", 0).batcher
        with pytest.raises(InvalidRoute, match=r"width 99 does not exist .*widths 0\.\.3"):
            served.route("entropic", 99)
        with pytest.raises(InvalidRoute, match=r"width -1 does not exist"):
            served.route("entropic", -1)
        with pytest.raises(InvalidRoute, match=r"codec 'h264' is not served for fmnist-split; codecs: entropic"):
            served.route("h264", 0)

    with_repository(tmp_path, worker, check)


def test_resolution_by_version_newest_and_sha256(tmp_path, worker, fmnist):
    add_version(tmp_path, fmnist, "2")
    add_version(tmp_path, fmnist, "10")

    async def check(repo):
        assert sorted(await repo.scan()) == [f"{fmnist.name}:10", f"{fmnist.name}:2"]
        assert repo.resolve(fmnist.name).bundle.version == "10"  # natural order, not "2" > "10"
        v2 = repo.resolve(fmnist.name, "2").bundle
        assert v2.version == "2"
        assert repo.resolve(fmnist.name, "", v2.sha256).bundle.version == "2"
        with pytest.raises(UnknownModel, match="no version '3'"):
            repo.resolve(fmnist.name, "3")
        with pytest.raises(UnknownModel, match="unknown model 'nope'; this server has: fmnist-split"):
            repo.resolve("nope")
        with pytest.raises(UnknownModel, match="no bundle with sha256 0000"):
            repo.resolve(fmnist.name, "", "0" * 64)
        assert [m.bundle.version for m in repo.models(all_versions=True)] == ["2", "10"]
        assert [m.bundle.version for m in repo.models()] == ["10"]

    with_repository(tmp_path, worker, check)


def test_a_tampered_version_is_refused_alone_and_new_versions_load_on_rescan(tmp_path, worker, fmnist, caplog):
    add_version(tmp_path, fmnist, "1")
    add_version(tmp_path, fmnist, "2", tamper=True)

    async def check(repo):
        assert await repo.scan() == [f"{fmnist.name}:1"]
        assert "refusing model bundle" in caplog.text and "tail.pt" in caplog.text
        assert await repo.scan() == []  # the refused one is not retried until it changes
        add_version(tmp_path, fmnist, "3")
        assert await repo.scan() == [f"{fmnist.name}:3"]
        assert repo.resolve(fmnist.name).bundle.version == "3"

    with_repository(tmp_path, worker, check)


def test_per_model_batching_comes_from_its_config_toml_and_flags_win(tmp_path, worker, fmnist):
    add_version(tmp_path, fmnist, "1")
    (tmp_path / fmnist.name / "config.toml").write_text("[batching]\nmax_batch = 3\nmax_queue = 7\n")

    async def check(repo):
        await repo.scan()
        return repo.resolve(fmnist.name).batching

    batching = with_repository(tmp_path, worker, check, overrides={"max_queue": 9})
    assert (batching.max_batch, batching.max_queue, batching.max_delay_ms) == (3, 9, BatchingConfig().max_delay_ms)
