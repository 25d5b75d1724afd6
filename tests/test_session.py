"""One device's stream in-process: a StreamSession over a real pipeline and repository, no gRPC."""

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import good_frame

from splitserve.edge_server.config import ServerConfig
from splitserve.edge_server.inference import InferencePipeline
from splitserve.edge_server.repository import ModelRepository
from splitserve.edge_server.session import StreamSession
from splitserve.edge_server.tail import DeviceWorker
from splitserve.proto import edge_inference_pb2 as pb

S = pb.Result.Status


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory, fmnist):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(fmnist.path, root / fmnist.name / fmnist.version)
    return root


async def _frames(frames, gate: asyncio.Event | None = None):
    """The device's side of the stream: these frames at once, then (if gated) wait before closing it."""
    for f in frames:
        yield f
    if gate is not None:
        await gate.wait()


def run_session(repo_root, frames, max_inflight=8, draining=False, gate_results=0):
    """Results of one session fed ``frames``; with ``gate_results`` the device keeps its side open
    until that many results arrived (so frames are read while others are in flight)."""

    async def main():
        worker = DeviceWorker(torch.device("cpu"))
        pool = ThreadPoolExecutor(2)
        cfg = ServerConfig()
        repo = ModelRepository(repo_root, worker, pool, cfg.batching, {})
        await repo.scan()
        pipeline = InferencePipeline(repo, cfg)
        drain = asyncio.Event()
        if draining:
            drain.set()
        gate = asyncio.Event() if gate_results else None
        session = StreamSession(pipeline, max_inflight, drain)
        results = []
        try:
            async for r in session.results(_frames(frames, gate)):
                results.append(r)
                if gate is not None and len(results) >= gate_results:
                    gate.set()
        finally:
            for b in repo.batchers():
                await b.close()
            worker.shutdown()
            pool.shutdown()
        return results

    return asyncio.run(asyncio.wait_for(main(), 300))


def test_every_frame_gets_exactly_one_result_and_the_stream_ends(repo_root, fmnist):
    frames = [good_frame(fmnist, i, width=i % fmnist.student.widths) for i in range(6)]
    frames.append(pb.Frame(frame_id=100, model="no-such-model", codec="entropic"))
    frames.append(pb.Frame(frame_id=101, model=fmnist.name, codec="entropic", width=0, payload=b"\x01\x02\x03",
                           shape=list(fmnist.latent_shape(0))))  # fmt: skip
    results = run_session(repo_root, frames)
    by_id = {r.frame_id: r for r in results}
    assert sorted(by_id) == [*range(6), 100, 101] and len(results) == 8
    assert all(by_id[i].status == S.OK and by_id[i].width == i % fmnist.student.widths for i in range(6))
    assert by_id[100].status == S.UNKNOWN_MODEL and "no-such-model" in by_id[100].error
    assert by_id[101].status == S.INVALID_FRAME and "entropic" in by_id[101].error


def test_frames_beyond_the_in_flight_limit_are_overloaded_at_once(repo_root, fmnist):
    frames = [good_frame(fmnist, i) for i in range(3)]
    results = run_session(repo_root, frames, max_inflight=1, gate_results=3)
    by_id = {r.frame_id: r for r in results}
    assert sorted(by_id) == [0, 1, 2]
    assert by_id[0].status == S.OK
    # frame 1 was read right behind frame 0, still in flight: refused at once, not queued. (Frame 2
    # is read after frame 1's answer was sent; frame 0 may have finished by then on a slow machine.)
    assert by_id[1].status == S.OVERLOADED and "more than 1 frames in flight" in by_id[1].error
    assert by_id[2].status in (S.OK, S.OVERLOADED)


def test_a_draining_server_answers_unavailable_and_echoes_nothing_too_big(repo_root, fmnist):
    frames = [good_frame(fmnist, 1), pb.Frame(frame_id=2, model="m" * 10_000, codec="entropic")]
    results = run_session(repo_root, frames, draining=True)
    by_id = {r.frame_id: r for r in results}
    assert by_id[1].status == S.UNAVAILABLE and "shutting down" in by_id[1].error
    assert by_id[2].status == S.INVALID_FRAME and by_id[2].model == ""  # too long to echo back
