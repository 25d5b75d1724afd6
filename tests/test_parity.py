"""Frames in pieces and their XOR (splitserve.parity), and the fixes to aiortc's SCTP both ends apply."""

import itertools
import random

import pytest

from splitserve import parity
from splitserve.datachannel import CWND_MIN_PACKETS, _t3_expired_with_floor, tune_sctp
from splitserve.proto import edge_inference_pb2 as pb


def message(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("n", [1089, 2472, 4522, 1088 * 7 + 3])
def test_any_k_of_the_k_plus_one_pieces_rebuild_the_message(n):
    data = message(n, n)
    pieces = parity.split(data, group=3)
    k = parity.pieces_for(n)
    assert len(pieces) == k + 1 and all(len(p) <= parity.PIECE_MAX_BYTES for p in pieces)
    assert sum(len(p) + 53 for p in pieces) == parity.wire_bytes(n, 53)
    for lost in range(k + 1):
        kept = [p for i, p in enumerate(pieces) if i != lost]
        for order in itertools.islice(itertools.permutations(kept), 6):
            r = parity.Reassembler()
            out = [r.add(p) for p in order]
            assert out[:-1] == [None] * (k - 1) and out[-1] == data


def test_a_message_that_fits_one_packet_is_not_cut():
    assert parity.split(message(parity.BODY_MAX_BYTES), 1) == []
    assert parity.pieces_for(parity.BODY_MAX_BYTES) == 0
    assert parity.wire_bytes(500, 53) == 553
    assert parity.split(message(parity.BODY_MAX_BYTES * (parity.MAX_PIECES + 1)), 1) == []  # too many pieces


def test_a_spare_piece_after_the_rebuild_is_dropped_and_groups_stay_apart():
    a, b = message(3000, 1), message(3000, 2)
    pa, pb_ = parity.split(a, 10), parity.split(b, 11)
    r = parity.Reassembler()
    got = [r.add(p) for p in (pa[0], pb_[1], pa[1], pb_[0], pa[2], pb_[3], pa[3], pb_[2])]
    assert [g for g in got if g is not None] == [a, b]
    assert got[-2:] == [None, None]  # pa[3] and pb_[2] came after their messages were whole


def test_a_piece_is_never_mistaken_for_a_frame():
    frame = pb.Frame(frame_id=1, model="m", payload=b"x" * 3000, deadline_ms=150)
    data = frame.SerializeToString()
    assert not parity.is_piece(data) and not parity.is_piece(b"")
    assert all(parity.is_piece(p) for p in parity.split(data, 5))


@pytest.mark.parametrize(
    "piece, why",
    [
        (b"\x00\x01\x00", "shorter than"),
        (parity.HEADER.pack(0, 9, 1, 3, 0, 100) + b"x" * 34, "version 9"),
        (parity.HEADER.pack(0, 1, 1, 1, 0, 10) + b"x" * 10, "k must be"),
        (parity.HEADER.pack(0, 1, 1, 3, 4, 100) + b"x" * 34, "index at most k"),
        (parity.HEADER.pack(0, 1, 1, 3, 0, 1000) + b"x" * 34, "cannot be 3 pieces of 34"),
        (parity.HEADER.pack(0, 1, 1, 3, 0, 10**9) + b"x" * 34, "1000000000-byte message"),
    ],
)
def test_malformed_pieces_get_a_clear_error(piece, why):
    with pytest.raises(parity.PieceError, match=why):
        parity.Reassembler(max_message_bytes=1 << 20).add(piece)


def test_pieces_that_disagree_with_their_group_are_refused():
    r = parity.Reassembler()
    r.add(parity.HEADER.pack(0, 1, 9, 3, 0, 100) + b"x" * 34)
    with pytest.raises(parity.PieceError, match="disagrees"):
        r.add(parity.HEADER.pack(0, 1, 9, 3, 1, 90) + b"x" * 30)


def test_unfinished_messages_are_bounded():
    r = parity.Reassembler(max_groups=8)
    for group in range(1000):  # a peer that never sends the rest of any message
        assert r.add(parity.split(message(3000, group), group)[0]) is None
    assert len(r._open) == 8 and r.dropped == 992
    data = message(3000, 5000)
    assert [r.add(p) for p in parity.split(data, 5000)[1:]][-1] == data


def test_aiortc_delivers_an_unordered_message_right_behind_one_that_lost_its_last_fragment():
    from aiortc.rtcsctptransport import (
        SCTP_DATA_FIRST_FRAG,
        SCTP_DATA_LAST_FRAG,
        SCTP_DATA_UNORDERED,
        DataChunk,
        InboundStream,
    )

    tune_sctp()

    def chunk(tsn: int, first: bool, last: bool, data: bytes) -> DataChunk:
        flags = SCTP_DATA_UNORDERED | (SCTP_DATA_FIRST_FRAG if first else 0) | (SCTP_DATA_LAST_FRAG if last else 0)
        c = DataChunk(flags=flags)
        c.tsn, c.stream_id, c.stream_seq, c.protocol, c.user_data = tsn, 1, 0, 53, data
        return c

    stream = InboundStream()
    arrivals = [chunk(1, True, False, b"A1"), chunk(2, False, False, b"A2"),  # A3 (tsn 3) is lost
                chunk(4, True, False, b"B1"), chunk(5, False, False, b"B2"), chunk(6, False, True, b"B3"),
                chunk(3, False, True, b"A3")]  # fmt: skip
    delivered = []
    for c in arrivals:
        stream.add_chunk(c)
        delivered.append([m for _, _, m in stream.pop_messages()])
    assert delivered == [[], [], [], [], [b"B1B2B3"], [b"A1A2A3"]]  # B at once, not after A's resend


def test_a_retransmission_timeout_leaves_the_window_at_the_floor():
    from aiortc import rtcsctptransport

    tune_sctp()
    tune_sctp()  # twice: the floor wraps aiortc's handler once
    assert rtcsctptransport.RTCSctpTransport._t3_expired.splitserve

    class Association:
        _cwnd = 50_000

    def rfc_expired(self) -> None:
        self._cwnd = 1200  # RFC 4960: one packet

    floor = CWND_MIN_PACKETS * rtcsctptransport.USERDATA_MAX_LENGTH
    association = Association()
    _t3_expired_with_floor(rfc_expired, floor)(association)
    assert association._cwnd == floor
