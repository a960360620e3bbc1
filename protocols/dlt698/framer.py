"""Sans-IO stream framer for DL/T 698.45 link frames.

Fed bytes in any chunking, it hands back whole :class:`Frame` objects or :data:`NEED_DATA`.
It survives:

* any number of ``FE`` wake-up bytes before a frame (counted as preamble, not as noise);
* line noise and half frames (counted as discarded bytes). A ``68`` is only a candidate when
  its control byte names a link function we know (1 or 3) and its length field is possible;
* a corrupted header: the HCS is checked as soon as the header is in, so a damaged length
  field never makes the framer wait for bytes that are not coming (rejected ``bad-hcs``);
* frames with a bad FCS or end byte, truncated frames followed by good ones: the candidate is
  rejected (counted by reason), one byte is dropped and the search resumes.

As with the other framers, :meth:`Dlt698Framer.feed_eof` tells it that a truncated tail will
not be completed. Interface and counters mirror :class:`~protocols.dlt645.framer.Dlt645Framer`.
"""

from __future__ import annotations

from typing import Final

from protocols.framing import NEED_DATA, SKIP, Bad, StreamFramer, Verdict

from .frame import (
    MAX_LENGTH_FIELD,
    START,
    WAKE,
    Frame,
    check_body,
    check_header,
    frame_from_checked,
)

#: Longest frame accepted by default (the KiB unit is allowed by the standard, not by us).
DEFAULT_MAX_LENGTH: Final = MAX_LENGTH_FIELD + 2
_KNOWN_FUNCTIONS: Final = frozenset((1, 3))


class Dlt698Framer(StreamFramer[Frame]):
    """Finds DL/T 698.45 frames in a byte stream."""

    __slots__ = ("_max_length",)
    START = START
    WAKE = WAKE

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        super().__init__()
        self._max_length = max_length

    def _examine(self, buf: bytearray) -> Verdict:
        if len(buf) < 5:
            return NEED_DATA
        length_field = buf[1] | buf[2] << 8
        total = (length_field & MAX_LENGTH_FIELD) + 2
        if buf[3] & 7 not in _KNOWN_FUNCTIONS or length_field & 0xC000 or total > self._max_length:
            return SKIP
        head = 8 + (buf[4] & 0x0F) + 1
        if len(buf) < head:
            return NEED_DATA
        problem = check_header(buf)
        if problem is not None:
            return Bad(head, *problem)
        if len(buf) < total:
            return NEED_DATA
        problem = check_body(buf, total)
        if problem is not None:
            return Bad(total, *problem)
        return total

    def _decode(self, raw: bytes) -> Frame:
        return frame_from_checked(raw)
