"""The 698.45 probe for :func:`protocols.sniff.scan` (finding frames in a mixed capture).

The HCS is the evidence: a ``68`` whose header CRC fails is noise, one whose header holds is
reported even when its body (FCS, end byte) is broken or cut off.
"""

from __future__ import annotations

from protocols.framing import Candidate

from .frame import MAX_LENGTH_FIELD, check_body, check_header, frame_from_checked

PROTOCOL = "dlt698.45"


def probe_698(buf: bytes, i: int) -> Candidate | None:
    avail = len(buf) - i
    if avail < 5 or buf[i + 3] & 7 not in (1, 3):
        return None
    head = 8 + (buf[i + 4] & 0x0F) + 1
    if avail < head:
        return Candidate(PROTOCOL, avail, None, "truncated", "header incomplete", 1)
    if check_header(buf[i : i + head]) is not None:
        return None
    length_field = buf[i + 1] | buf[i + 2] << 8
    total = (length_field & MAX_LENGTH_FIELD) + 2
    if length_field & 0xC000 or avail < total:
        return Candidate(PROTOCOL, avail, None, "truncated", f"L needs {total} bytes", 2)
    raw = bytes(buf[i : i + total])
    problem = check_body(raw, total)
    if problem is not None:
        return Candidate(PROTOCOL, total, None, *problem, 3)
    return Candidate(PROTOCOL, total, frame_from_checked(raw))
