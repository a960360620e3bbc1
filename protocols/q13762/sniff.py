"""The 1376.2 probe for :func:`protocols.sniff.scan` (finding frames in a mixed capture).

1376.2 has no header check beyond its length, so a ``68`` in noise often has a plausible L.
A failed candidate is reported only with evidence that it was a frame: its end byte sits where
L says, or its checksum holds. Otherwise the probe stays silent and the bytes count as noise.
"""

from __future__ import annotations

from protocols.errors import RemoteProtocolError
from protocols.framing import Candidate

from .enums import CommMode
from .frame import END, MIN_LENGTH, checksum, frame_from_checked
from .framer import DEFAULT_MAX_LENGTH

PROTOCOL = "q1376.2"


def probe_13762(buf: bytes, i: int) -> Candidate | None:
    avail = len(buf) - i
    if avail < 3:
        return None
    total = buf[i + 1] | buf[i + 2] << 8
    if not MIN_LENGTH <= total <= DEFAULT_MAX_LENGTH:
        return None
    if avail < total:
        if avail > 3 and CommMode(buf[i + 3] & 0x3F).known:
            return Candidate(
                PROTOCOL, avail, None, "truncated", f"L={total}, {avail} bytes left", 1
            )
        return None
    end_ok = buf[i + total - 1] == END
    cs = checksum(buf[i + 3 : i + total - 2])
    cs_ok = buf[i + total - 2] == cs
    if not end_ok and not cs_ok:
        return None
    if not cs_ok:
        detail = f"CS is {buf[i + total - 2]:02X}, computed {cs:02X}"
        return Candidate(PROTOCOL, total, None, "bad-checksum", detail, 2)
    if not end_ok:
        detail = f"expected 16, got {buf[i + total - 1]:02X}"
        return Candidate(PROTOCOL, total, None, "bad-end", detail, 2)
    try:
        frame = frame_from_checked(bytes(buf[i : i + total]))
    except RemoteProtocolError as exc:
        return Candidate(PROTOCOL, total, None, exc.reason, exc.detail, 3)
    return Candidate(PROTOCOL, total, frame)
