"""The head download (GetHead) against a hostile server: nothing it names may leave the cache."""

import asyncio
import shutil

import grpc
import pytest

from splitserve.device_client.bundles import cache_path, check_name, install, local_bundle
from splitserve.device_client.client import AsyncSplitClient, ClientError
from splitserve.edge_server.service import manifest_message
from splitserve.models import zoo
from splitserve.models.bundle import BundleError
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc


class HostileServer(pb_grpc.EdgeInferenceServicer):
    """Answers GetModel with a manifest naming ``name`` / ``version`` and streams the real device files,
    under ``chunk_path`` when given; the bundle sha256 is the real one, so only the names are wrong."""

    def __init__(self, bundle, name: str, version: str, chunk_path: str = "") -> None:
        self.bundle, self.name, self.version, self.chunk_path = bundle, name, version, chunk_path
        self.heads_sent = 0

    async def GetModel(self, request, context):
        m = manifest_message(self.bundle)
        m.name, m.version = self.name, self.version
        return m

    async def GetHead(self, request, context):
        self.heads_sent += 1
        for name in self.bundle.device_files():
            data = (self.bundle.path / name).read_bytes()
            files = self.bundle.manifest["files"]
            yield pb.Chunk(path=self.chunk_path or name, data=data, total_size=len(data), last=True,
                           sha256=files[name]["sha256"] if name in files else self.bundle.sha256)  # fmt: skip


async def fetch_from(servicer) -> None:
    server = grpc.aio.server()
    pb_grpc.add_EdgeInferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client = AsyncSplitClient(f"127.0.0.1:{port}", "fmnist-split", fetch=True, connect_timeout=30)
        try:
            await client.connect()
        finally:
            await client.close()
    finally:
        await server.stop(None)


@pytest.fixture
def victim(tmp_path, monkeypatch):
    """A directory beside the cache, and the cache (empty) that the client is pointed at."""
    monkeypatch.setenv("SPLITSERVE_CACHE", str(tmp_path / "cache"))
    victim = tmp_path / "victim"
    (victim / "1").mkdir(parents=True)
    (victim / "1" / "precious.txt").write_text("do not delete")
    return victim


def untouched(victim) -> bool:
    return [p.name for p in victim.rglob("*")] == ["1", "precious.txt"] and (
        (victim / "1" / "precious.txt").read_text() == "do not delete"
    )


@pytest.mark.parametrize(
    "name, version",
    [("../../../victim", "1"), ("fmnist-split", "../../../../victim/1"), ("fmnist-split", "..")],
)
def test_a_manifest_naming_a_path_outside_the_cache_is_refused(fmnist, victim, name, version):
    hostile = HostileServer(fmnist, name, version)
    with pytest.raises(ClientError, match="refused"):
        asyncio.run(fetch_from(hostile))
    assert untouched(victim)


def test_an_absolute_name_is_refused(fmnist, victim):
    hostile = HostileServer(fmnist, str(victim), "1")
    with pytest.raises(ClientError, match="refused"):
        asyncio.run(fetch_from(hostile))
    assert untouched(victim)


def test_a_chunk_naming_a_path_is_refused(fmnist, victim, tmp_path):
    hostile = HostileServer(fmnist, "fmnist-split", fmnist.version, chunk_path="../../../../victim/1/precious.txt")
    with pytest.raises(ClientError, match="refused"):
        asyncio.run(fetch_from(hostile))
    assert untouched(victim)
    cached = tmp_path / "cache" / "splitserve" / "models" / "fmnist-split"
    assert not cached.exists() or not any(cached.rglob("*.pt"))  # nothing half-written is left behind


def test_an_honest_server_fills_the_cache(fmnist, victim, tmp_path):
    honest = HostileServer(fmnist, "fmnist-split", fmnist.version)
    asyncio.run(fetch_from(honest))
    assert honest.heads_sent == 1
    cached = tmp_path / "cache" / "splitserve" / "models" / "fmnist-split" / fmnist.version
    assert (cached / "head.pt").read_bytes() == (fmnist.path / "head.pt").read_bytes()


def test_a_download_beside_another_processs_copy_keeps_the_good_one(fmnist, tmp_path):
    """Two device processes fetched one bundle at once: the second finds the first's copy in place."""
    dest = tmp_path / "cache" / "fmnist-split" / fmnist.version
    dest.parent.mkdir(parents=True)
    downloads = iter(range(10))

    def download() -> object:
        d = tmp_path / f"download-{next(downloads)}"
        shutil.copytree(fmnist.path, d)
        return d

    first = download()
    install(first, dest, fmnist.sha256)
    assert not first.exists() and (dest / "head.pt").is_file()
    inode = dest.stat().st_ino
    second = download()
    install(second, dest, fmnist.sha256)  # the same bundle: the first copy stays, the download goes
    assert not second.exists() and dest.stat().st_ino == inode
    (dest / "head.pt").write_bytes(b"broken")  # a stale or broken copy is replaced
    third = download()
    install(third, dest, fmnist.sha256)
    assert (dest / "head.pt").read_bytes() == (fmnist.path / "head.pt").read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == [fmnist.version]  # nothing left beside it


@pytest.mark.parametrize("bad", ["..", ".", "", "a/b", "/etc", "a\\b", ".hidden", "x" * 200, "a\x00b", "..x/.."])
def test_names_are_one_plain_path_component(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITSERVE_CACHE", str(tmp_path))
    with pytest.raises(BundleError):
        check_name(bad, "model name")
    with pytest.raises(BundleError):
        cache_path("fmnist-split", bad)


def test_a_symlink_out_of_the_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITSERVE_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "splitserve" / "models"
    models.mkdir(parents=True)
    (models / "fmnist-split").symlink_to(tmp_path)
    with pytest.raises(BundleError, match="outside the model cache"):
        cache_path("fmnist-split", "1")
    assert cache_path("fmnist-split2", "1.0").parent.name == "fmnist-split2"


def test_a_tampered_bundled_model_is_reported_as_tampered_not_missing(tmp_path, monkeypatch, fmnist):
    """local_bundle used to answer None ("not here") for a bundled model failing verification."""
    copy = tmp_path / fmnist.name / fmnist.version
    shutil.copytree(fmnist.path, copy)
    monkeypatch.setattr(zoo, "BUNDLED", tmp_path)  # the "installed" models are this copy
    assert local_bundle(fmnist.name).sha256 == fmnist.sha256
    (copy / "head.pt").write_bytes(b"not the weights the manifest promised")
    with pytest.raises(BundleError, match=r"head\.pt: sha256 .* does not match"):
        local_bundle(fmnist.name)
    assert local_bundle("no-such-model") is None
