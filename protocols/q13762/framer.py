"""Sans-IO stream framer for Q/GDW 1376.2 (the UART between concentrator and PLC/HPLC module).

Fed bytes in any chunking, it hands back whole :class:`Frame` objects or :data:`NEED_DATA`.
It survives what a module UART really delivers:

* boot banners, debug text and half frames from a module that reset mid-frame (counted as
  discarded bytes; there is no FE preamble in 1376.2, so an FE is noise too);
* a ``68`` in noise whose length field is impossible (below 15 or above ``max_length``): not a
  candidate, skipped quietly so a noisy line cannot make the framer wait for 64 KiB;
* ``68`` and ``16`` inside addresses and data (sync uses L, never a search for ``16``);
* frames with a bad checksum or end byte, truncated frames followed by good ones, frames whose
  DT or data unit is malformed: the candidate is rejected (counted by reason), one byte is
  dropped and the search resumes, so a good frame that starts inside a broken one is found.

A candidate whose length points past the bytes received waits for more data; the driver calls
:meth:`Q13762Framer.feed_eof` when the line goes idle (or the capture ends) so a truncated tail
cannot hide the frames after it. Interface and counters mirror :class:`~protocols.dlt645.
framer.Dlt645Framer`.
"""

from __future__ import annotations

from typing import Final

from protocols.framing import NEED_DATA, SKIP, Bad, StreamFramer, Verdict

from .frame import END, MIN_LENGTH, START, Frame, checksum, frame_from_checked

#: Longest frame accepted by default; real modules stay well below (file-transfer packets
#: are the largest). Raise it for a module that reports a larger maximum in AFN03 F10.
DEFAULT_MAX_LENGTH: Final = 2048


class Q13762Framer(StreamFramer[Frame]):
    """Finds 1376.2 frames in a byte stream."""

    __slots__ = ("_max_length",)
    START = START

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        super().__init__()
        self._max_length = max_length

    def _examine(self, buf: bytearray) -> Verdict:
        if len(buf) < 3:
            return NEED_DATA
        total = buf[1] | buf[2] << 8
        if not MIN_LENGTH <= total <= self._max_length:
            return SKIP
        if len(buf) < total:
            return NEED_DATA
        cs = checksum(memoryview(buf)[3 : total - 2])
        if buf[total - 2] != cs:
            return Bad(total, "bad-checksum", f"CS is {buf[total - 2]:02X}, computed {cs:02X}")
        if buf[total - 1] != END:
            return Bad(total, "bad-end", f"expected 16, got {buf[total - 1]:02X}")
        return total

    def _decode(self, raw: bytes) -> Frame:
        return frame_from_checked(raw)
