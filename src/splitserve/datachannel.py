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
    """Apply the timers above to aiortc's SCTP (module-wide: every association in this process)."""
    from aiortc import rtcsctptransport

    rtcsctptransport.SCTP_RTO_MIN = RTO_MIN_S
    rtcsctptransport.SCTP_RTO_INITIAL = RTO_INITIAL_S
    # aioice logs every ICE candidate pair at INFO: noise in a server or device log
    logging.getLogger("aioice").setLevel(logging.WARNING)
