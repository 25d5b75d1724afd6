"""What both ends of a splitserve datachannel share: channel names, framing, SCTP timers.

The device client (``device_client/transports/webrtc.py``) and the edge server
(``edge_server/webrtc.py``) speak over one WebRTC peer connection with two
datachannels; this module is the one place both take the names from.
"""

from __future__ import annotations

import hashlib
import logging

FRAMES_CHANNEL = "frames"  # device -> server: serialized splitserve.v1.Frame messages
RESULTS_CHANNEL = "results"  # server -> device: serialized splitserve.v1.Result messages
# per message on the link: SCTP DATA chunk header (16) + DTLS record header, AES-GCM nonce and tag (13 + 8 + 16)
DATACHANNEL_FRAMING = 16 + 37
# SCTP's retransmission timeout floor. aiortc follows RFC 4960 (1 s minimum, 3 s before the first
# measurement), tuned for bulk transfer: a frame with a 150 ms budget would be abandoned long before
# its first retransmission. RFC 6298 keeps 1 s only as a conservative default; with the RTT-based
# estimate (srtt + 4 rttvar) above a 40 ms floor, a lost packet is sent again within one frame budget.
RTO_MIN_S = 0.04
RTO_INITIAL_S = 1.0
# The congestion window a retransmission timeout leaves. RFC 4960 (and aiortc) cut it to one packet and
# slow-start from there: the next frame, three or four packets, then takes two or three round trips to
# leave and misses its deadline, so one lost packet costs the frames behind it too. The sender paces
# itself to its bandwidth estimate (device_client/transports/webrtc.py), so the window is not what keeps
# it off a congested link; four packets is aiortc's own floor after a fast retransmit.
CWND_MIN_PACKETS = 4
# Redundancy instead of retransmission for small messages: a retransmission costs at least one
# retransmission timeout (above a round trip), which a frame with a 150 ms budget across a 40 ms
# round trip and its compute rarely has left. A message that fits in one packet is sent twice
# back to back; at 5 % independent loss both copies are lost 0.25 % of the time, for the cost of
# one more small packet. The receiver drops the second copy (``Duplicates``).
REDUNDANT_MAX_BYTES = 1100  # one SCTP DATA chunk in a 1200-byte packet


class Duplicates:
    """Recently seen messages by content: drops the redundant copy of a message that arrived twice."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._seen: dict[bytes, None] = {}

    def seen(self, message: bytes) -> bool:
        """Whether this exact message came before (and remember it)."""
        key = hashlib.blake2b(message, digest_size=16).digest()
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self.size:
            del self._seen[next(iter(self._seen))]
        return False


def tune_sctp() -> None:
    """Apply the settings above to aiortc's SCTP (module-wide: every association in this process)."""
    from aiortc import rtcsctptransport

    rtcsctptransport.SCTP_RTO_MIN = RTO_MIN_S
    rtcsctptransport.SCTP_RTO_INITIAL = RTO_INITIAL_S
    sctp = rtcsctptransport.RTCSctpTransport
    if not getattr(sctp._t3_expired, "splitserve", False):
        floor = CWND_MIN_PACKETS * rtcsctptransport.USERDATA_MAX_LENGTH
        sctp._t3_expired = _t3_expired_with_floor(sctp._t3_expired, floor)
    rtcsctptransport.InboundStream.pop_messages = _pop_messages
    # aioice logs every ICE candidate pair at INFO: noise in a server or device log
    logging.getLogger("aioice").setLevel(logging.WARNING)


def _t3_expired_with_floor(expired, floor: int):  # type: ignore[no-untyped-def]
    def t3_expired(self) -> None:  # type: ignore[no-untyped-def]
        expired(self)  # marks chunks for retransmission and schedules the transmit that reads the window
        self._cwnd = max(self._cwnd, floor)

    t3_expired.splitserve = True  # type: ignore[attr-defined]
    return t3_expired


def _pop_messages(self):  # type: ignore[no-untyped-def]
    """aiortc's ``InboundStream.pop_messages``, without stranding an unordered message behind a lost one.

    aiortc (1.16) gives up on a run of fragments at the first TSN gap and steps past the chunk
    after the gap, even when that chunk begins the next message. When the last fragment of one
    unordered message is lost, the complete message right behind it is then held until the lost
    fragment is retransmitted or abandoned: two frames lost for one packet. Here the chunk after
    a gap is looked at again as the possible start of a message. Ordered delivery is unchanged.
    """
    from aiortc.rtcsctptransport import (
        SCTP_DATA_FIRST_FRAG,
        SCTP_DATA_LAST_FRAG,
        SCTP_DATA_UNORDERED,
        tsn_plus_one,
        uint16_add,
        uint16_gt,
    )

    pos = 0
    start = None
    expected = 0
    while pos < len(self.reassembly):
        chunk = self.reassembly[pos]
        ordered = not (chunk.flags & SCTP_DATA_UNORDERED)
        if start is not None and chunk.tsn != expected:
            if ordered:
                break
            start = None  # the message begun at ``start`` has a hole; this chunk may begin the next one
        if start is None:
            if not chunk.flags & SCTP_DATA_FIRST_FRAG:
                if ordered:
                    break
                pos += 1
                continue
            if ordered and uint16_gt(chunk.stream_seq, self.sequence_number):
                break
            start = pos
        if chunk.flags & SCTP_DATA_LAST_FRAG:
            user_data = b"".join(c.user_data for c in self.reassembly[start : pos + 1])
            del self.reassembly[start : pos + 1]
            if ordered and chunk.stream_seq == self.sequence_number:
                self.sequence_number = uint16_add(self.sequence_number, 1)
            pos = start
            start = None
            yield (chunk.stream_id, chunk.protocol, user_data)
            continue
        expected = tsn_plus_one(chunk.tsn)
        pos += 1
