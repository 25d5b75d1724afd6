"""The batcher alone, in-process: a real tail on a real device worker, no server, no gRPC.

No assertion here depends on how fast the machine is: where time matters it is a lower bound
(a batch never closes before its delay) or a generous time-out (a full batch does not wait).
"""

import asyncio
import time

import pytest
import torch

from splitserve.codecs import PayloadKind
from splitserve.edge_server.batcher import Batcher, BatchSizer, Outcome, Overloaded
from splitserve.edge_server.config import BatchingConfig
from splitserve.edge_server.tail import DeviceWorker, TailRunner
from splitserve.proto import edge_inference_pb2 as pb

S = pb.Result.Status
KEY = PayloadKind.LATENT.batch_key(0)
GIVE_UP_S = 60  # a batcher that never answers fails the test instead of hanging it


@pytest.fixture(scope="module")
def worker():
    w = DeviceWorker(torch.device("cpu"))
    yield w
    w.shutdown()


@pytest.fixture(scope="module")
def runner(fmnist, worker):
    return TailRunner(fmnist, "entropic", KEY, worker)


def frames(runner, n):
    """(payload, decoder) of n frames for the runner's batch key: the entropic code of all-zero features."""
    shape = KEY.kind.payload_shape(runner.bundle, KEY.width)
    payload = runner.bundle.encoder_for("entropic", KEY.width).encode(torch.zeros(shape))
    decoder = runner.bundle.decoder_for("entropic", KEY.width)
    return [(payload, decoder) for _ in range(n)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GIVE_UP_S))


def test_a_batch_closes_after_max_delay_without_filling(runner):
    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=1000, max_delay_ms=100, max_queue=10))
        outcomes = await asyncio.gather(*[batcher.submit(*t, 3, None) for t in frames(runner, 3)])
        await batcher.close()
        return outcomes

    outcomes: list[Outcome] = run(main())
    assert [o.status for o in outcomes] == [S.OK] * 3
    assert [o.batch_size for o in outcomes] == [3, 3, 3]  # waited for company, then ran together
    assert outcomes[0].queue_ms >= 100 * 0.99  # the first frame waited out the delay, never less
    assert all(len(o.indices) == 3 and len(o.scores) == 3 for o in outcomes)


def test_a_full_batch_does_not_wait_for_the_delay(runner):
    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=4, max_delay_ms=3_600_000, max_queue=10))
        outcomes = await asyncio.gather(*[batcher.submit(*t, 1, None) for t in frames(runner, 4)])
        await batcher.close()
        return outcomes

    outcomes = run(main())  # an hour's delay: only a full batch finishes within GIVE_UP_S
    assert [o.batch_size for o in outcomes] == [4] * 4


def test_batches_never_exceed_max_batch(runner):
    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=2, max_delay_ms=0, max_queue=10))
        outcomes = await asyncio.gather(*[batcher.submit(*t, 1, None) for t in frames(runner, 5)])
        await batcher.close()
        return outcomes

    outcomes = run(main())
    assert [o.status for o in outcomes] == [S.OK] * 5
    assert all(1 <= o.batch_size <= 2 for o in outcomes)


def test_a_full_queue_refuses_at_once_and_keeps_what_it_holds(runner):
    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=8, max_delay_ms=50, max_queue=2))
        first, second, third = frames(runner, 3)
        held = [batcher.submit(*first, 1, None), batcher.submit(*second, 1, None)]
        with pytest.raises(Overloaded, match=r"2 frames already queued for fmnist-split:.*/w0"):
            batcher.submit(*third, 1, None)
        outcomes = await asyncio.gather(*held)
        await batcher.close()
        return outcomes

    assert [o.status for o in run(main())] == [S.OK, S.OK]


def test_a_frame_past_its_deadline_is_answered_without_computing(runner):
    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=8, max_delay_ms=0, max_queue=8))
        late, on_time = frames(runner, 2)
        outcomes = await asyncio.gather(
            batcher.submit(*late, 1, time.monotonic() - 1.0), batcher.submit(*on_time, 1, None)
        )
        await batcher.close()
        return outcomes

    late, on_time = run(main())
    assert late.status == S.DEADLINE_EXCEEDED and "not computed" in late.error and not late.indices
    assert on_time.status == S.OK and on_time.batch_size == 1


def test_close_answers_every_queued_frame_first(runner):
    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=2, max_delay_ms=20, max_queue=16))
        futures = [batcher.submit(*t, 1, None) for t in frames(runner, 7)]
        await batcher.close()
        return futures

    futures = run(main())
    assert all(f.done() for f in futures)
    assert [f.result().status for f in futures] == [S.OK] * 7


def test_frames_after_the_worker_stopped_still_get_an_outcome(fmnist):
    worker = DeviceWorker(torch.device("cpu"))
    runner = TailRunner(fmnist, "entropic", KEY, worker)
    worker.shutdown()

    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=4, max_delay_ms=0, max_queue=8))
        outcomes = await asyncio.gather(*[batcher.submit(*t, 1, None) for t in frames(runner, 3)])
        await batcher.close()
        return outcomes

    outcomes = run(main())
    assert [o.status for o in outcomes] == [S.UNAVAILABLE] * 3
    assert all("server is stopping" in o.error for o in outcomes)


def test_a_corrupt_payload_fails_alone_and_its_batch_mates_are_computed(runner):
    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=4, max_delay_ms=3_600_000, max_queue=8))
        good = frames(runner, 3)
        payload, decoder = good[0]
        corrupt = (payload[:-4], decoder)  # a truncated stream: it cannot end where the features do
        outcomes = await asyncio.gather(*[batcher.submit(*f, 1, None) for f in [good[0], corrupt, *good[1:]]])
        await batcher.close()
        return outcomes

    ok, bad, *rest = run(main())
    assert bad.status == S.INVALID_FRAME and "entropic: corrupt payload" in bad.error and not bad.indices
    assert [o.status for o in (ok, *rest)] == [S.OK] * 3
    assert [o.batch_size for o in (ok, *rest)] == [3] * 3  # decoded as a batch of four, computed as three
    assert ok.indices == rest[0].indices == rest[1].indices


def test_frames_of_two_codecs_share_one_batch_and_each_decodes_with_its_own(fmnist, worker):
    """fp16 and int8 both carry the teacher's features: one tail, one batch, two decoders."""
    key = PayloadKind.FEATURES.batch_key()
    runner = TailRunner(fmnist, "fp16", key, worker)
    features = torch.randn(key.kind.payload_shape(fmnist)) * 3
    mixed = [(fmnist.encoder_for(c).encode(features), fmnist.decoder_for(c)) for c in ("fp16", "int8", "fp16")]

    async def main():
        batcher = Batcher(runner, BatchingConfig(max_batch=3, max_delay_ms=3_600_000, max_queue=8))
        outcomes = await asyncio.gather(*[batcher.submit(*f, 5, None) for f in mixed])
        await batcher.close()
        return outcomes

    outcomes = run(main())
    assert [o.status for o in outcomes] == [S.OK] * 3 and [o.batch_size for o in outcomes] == [3] * 3
    assert outcomes[0].indices == outcomes[2].indices  # the fp16 frames: the same input, the same answer
    expected = runner.run(fmnist.decoder_for("fp16").decode(mixed[0][0], features.shape).numpy()[None], 5)
    assert outcomes[0].indices == expected.indices[0].tolist()
    assert outcomes[1].indices[0] == outcomes[0].indices[0]  # int8's rounding keeps the top class here


def settle(sizer, ms_per_frame, batches=200, waiting=1000):
    """Run ``batches`` saturated batches whose tail costs ``ms_per_frame(size)`` a frame; the sizes taken."""
    taken = []
    for _ in range(batches):
        n = sizer.take(waiting)
        taken.append(n)
        sizer.observe(n, n * ms_per_frame(n))
    return taken


def test_the_batch_size_settles_where_a_frame_costs_least():
    cpu_like = {1: 18.4, 2: 15.2, 4: 13.6, 8: 11.7, 16: 15.5, 32: 17.6, 64: 17.3}  # lite0 on one core (ms)
    sizer = BatchSizer(64)
    taken = settle(sizer, cpu_like.__getitem__)
    assert sizer.size == 8
    assert taken[-100:].count(8) >= 70  # the rest are probes of 4 and 16
    assert set(taken[-100:]) <= {4, 8, 16}


def test_a_device_that_likes_big_batches_keeps_the_largest():
    sizer = BatchSizer(64)
    taken = settle(sizer, lambda n: 1.0 + 20.0 / n)  # a fixed cost per batch: bigger is always better
    assert sizer.size == 64 and taken[-100:].count(64) >= 70


def test_without_a_backlog_a_batch_takes_what_is_waiting_and_nothing_is_learnt():
    sizer = BatchSizer(64)
    assert [sizer.take(w) for w in (1, 5, 63)] == [1, 5, 63]
    sizer.observe(5, 50.0)  # not one of the sizes: no measurement to compare with
    assert sizer.ms_per_frame == {} and sizer.size == 64
    assert BatchSizer(1).take(10) == 1
