"""The client's parts on their own: options, the frame ledger, the connection supervisor (in-process, no server)."""

import asyncio
import time
import warnings

import pytest

from splitserve.device_client import AsyncSplitClient, ClientError, ClientOptions, SplitClient
from splitserve.device_client.ledger import FrameLedger
from splitserve.device_client.options import options_from
from splitserve.device_client.supervisor import ConnectionSupervisor
from splitserve.device_client.transports import Connection, Transport, TransportError
from splitserve.proto import edge_inference_pb2 as pb

OK = pb.Result.Status.OK


def frame(i: int) -> pb.Frame:
    return pb.Frame(frame_id=i, model="m", payload=b"x" * 10)


def test_options_are_one_object_and_keywords_still_work_with_a_warning():
    assert ClientOptions().codec == "entropic" and ClientOptions(slowdown=0.2).slowdown == 1.0
    base = ClientOptions(deadline_ms=150)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert options_from(base, {}, "X") == base and options_from(base, {}, "X") is not base
    with pytest.warns(DeprecationWarning, match=r"ClientOptions\(policy=...\)"):
        merged = options_from(base, {"policy": "adaptive"}, "AsyncSplitClient")
    assert merged.policy == "adaptive" and merged.deadline_ms == 150 and base.policy is None
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['polcy'\\]"):
        options_from(None, {"polcy": "adaptive"}, "X")
    with pytest.warns(DeprecationWarning):
        client = AsyncSplitClient("127.0.0.1:1", "fmnist-split", deadline_ms=99)
    assert client.options.deadline_ms == 99 and client.settings.target == "127.0.0.1:1"
    with pytest.raises(ClientError, match="cannot reach"):
        SplitClient("127.0.0.1:1", "fmnist-split", ClientOptions(connect_timeout=0.2))


def test_the_ledger_keeps_the_window_and_gives_each_frame_one_outcome():
    async def main():
        ledger = FrameLedger()
        ledger.window = 2
        now = time.monotonic()
        entries = [ledger.add(frame(i), now + 5, True) for i in (1, 2, 3)]
        first, _ = ledger.next_to_write()
        second, _ = ledger.next_to_write()
        assert (first.frame_id, second.frame_id) == (1, 2)
        assert ledger.next_to_write() == (None, None)  # the window is full
        for e in (first, second):
            ledger.written(e, time.monotonic())
        assert 1 <= first.frame.deadline_ms <= 5000 and first.attempts == 1
        assert sorted(n for n, _ in ledger.pending(lambda f: f.ByteSize())) == [first.frame.ByteSize()] * 2
        # an OVERLOADED answer puts the frame back in line, a little later; it is not settled
        assert ledger.answer(pb.Result(frame_id=1, status=pb.Result.Status.OVERLOADED), time.monotonic()) is None
        assert not first.future.done() and first.retries == 1 and first in ledger.unsent
        third, _ = ledger.next_to_write()
        assert third.frame_id == 3  # the retried frame waits its backoff; others go first
        # a result settles its frame once; a duplicate answer is ignored
        done = ledger.answer(pb.Result(frame_id=2, status=OK), time.monotonic())
        ledger.settle(done, pb.Result(frame_id=2, status=OK), time.monotonic())
        assert (await ledger.outcome(entries[1], lossy=False)).status == OK
        assert ledger.answer(pb.Result(frame_id=2, status=OK), time.monotonic()) is None
        # a result after the deadline is a miss
        late = ledger.add(frame(4), time.monotonic() - 0.01, True)
        ledger.settle(late, pb.Result(frame_id=4, status=OK), time.monotonic())
        assert late.future.result().status == pb.Result.Status.DEADLINE_EXCEEDED
        # a break: what has no outcome goes again, in frame order, and the window is free
        ledger.requeue()
        assert [e.frame_id for e in ledger.unsent] == [1, 3] and not ledger.outstanding
        ledger.fail_all("closed")
        with pytest.raises(ClientError, match="closed"):
            await ledger.outcome(entries[2], lossy=False)

    asyncio.run(main())


def test_a_frame_without_a_result_ends_at_its_deadline_and_frees_its_place_on_a_lossy_link():
    async def main():
        ledger = FrameLedger()
        entry = ledger.add(frame(1), time.monotonic() + 0.05, True)
        got, _ = ledger.next_to_write()
        ledger.written(got, time.monotonic())
        assert await ledger.outcome(entry, lossy=True) is None
        assert not ledger.outstanding and not ledger.inflight  # nothing waits for it any more
        held = ledger.add(frame(2), time.monotonic() + 0.05, True)
        ledger.written(ledger.next_to_write()[0], time.monotonic())
        assert await ledger.outcome(held, lossy=False) is None
        assert ledger.outstanding == {2}  # a reliable link still answers it: it keeps its place
        # a frame whose deadline passed while the pacer held it is never sent
        stale = ledger.add(frame(3), time.monotonic() - 1, True)
        assert ledger.too_late(ledger.next_to_write()[0], time.monotonic()) and stale.attempts == 0

    asyncio.run(main())


class FlakyConnection(Connection):
    """Answers every frame OK, but breaks after ``breaks_after`` frames."""

    def __init__(self, breaks_after: int) -> None:
        self.window = 4
        self.left = breaks_after
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sent: list[int] = []

    async def send(self, f: pb.Frame) -> None:
        self.sent.append(f.frame_id)
        if self.left == 0:
            await self.queue.put(None)
            raise TransportError("the link broke")
        self.left -= 1
        await self.queue.put(pb.Result(frame_id=f.frame_id, status=OK))

    async def results(self):  # type: ignore[no-untyped-def]
        while (r := await self.queue.get()) is not None:
            yield r
        raise TransportError("the link broke")

    async def close(self, graceful: bool) -> None:
        await self.queue.put(None)


class FakeTransport(Transport):
    name, framing = "fake", 0

    def __init__(self, plan: list[int]) -> None:
        self.plan, self.connections = plan, []

    async def open(self) -> Connection:
        if not self.plan:
            raise TransportError("refused")
        conn = FlakyConnection(self.plan.pop(0))
        self.connections.append(conn)
        return conn


def test_the_supervisor_reconnects_and_sends_unanswered_frames_again():
    async def main():
        ledger = FrameLedger()
        transport = FakeTransport([1, 10])  # the first connection breaks on its second frame
        answered = []

        def on_result(result: pb.Result) -> None:
            entry = ledger.answer(result, time.monotonic())
            if entry is not None:
                answered.append(result.frame_id)
                ledger.settle(entry, result, time.monotonic())

        sup = ConnectionSupervisor(transport, ledger, "fake:1", max_backoff_s=0.05, on_result=on_result)
        sup.start()
        entries = [ledger.add(frame(i), time.monotonic() + 10, True) for i in (1, 2, 3)]
        results = [await ledger.outcome(e, lossy=False) for e in entries]
        assert [r.status for r in results] == [OK] * 3 and sorted(answered) == [1, 2, 3]
        assert sup.reconnects == 1 and len(transport.connections) == 2
        assert entries[1].attempts == 2  # written on the broken connection, then again
        assert 2 in transport.connections[1].sent
        await sup.close()
        assert sup.closing and not ledger.inflight

    asyncio.run(main())


def test_why_a_frame_got_no_result():
    sup = ConnectionSupervisor(FakeTransport([]), FrameLedger(), "t", 1.0, lambda r: None)
    sup.link_note = "the stream to t broke (refused)"
    assert sup.why_no_result(0) == "never sent: the stream to t broke (refused)"
    assert sup.why_no_result(2) == "the stream to t broke (refused)"
    sup.connected.set()
    assert sup.why_no_result(0).startswith("never sent: no room")
    assert sup.why_no_result(1) == "the server did not answer in time"
