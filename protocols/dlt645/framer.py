"""Sans-IO stream framer for DL/T 645 (both editions).

Fed bytes in any chunking, it hands back whole :class:`Frame` objects or :data:`NEED_DATA`.
It survives what an RS-485 line really delivers:

* any number of ``FE`` wake-up bytes before a frame (counted as preamble, not as noise);
* line noise and half frames left over from a collision or a meter that was power-cycled
  (counted as discarded bytes);
* ``68`` and ``16`` bytes inside an address or data (sync uses the second ``68`` at offset 7 and
  the length byte, never a search for ``16``);
* frames with a bad checksum or end byte, truncated frames followed by good ones: the candidate
  is rejected (counted by reason), one byte is dropped and the search resumes, so a good frame
  that starts inside a broken one is still found;
* a non-BCD address in an otherwise intact frame (rejected as ``bad-address``).

A candidate whose length points past the bytes received so far waits for more data; the driver
calls :meth:`Dlt645Framer.feed_eof` when the line goes idle (or the stream ends) so a truncated
tail cannot hide the frames after it.
"""

from __future__ import annotations

from protocols.framing import NEED_DATA, SKIP, Bad, Rejection, StreamFramer, Verdict

from .frame import END, HEADER_LEN, START, WAKE, Frame, frame_from_checked

__all__ = ["Dlt645Framer", "Rejection"]


class Dlt645Framer(StreamFramer[Frame]):
    """Finds DL/T 645 frames in a byte stream."""

    __slots__ = ()
    START = START
    WAKE = WAKE

    def _examine(self, buf: bytearray) -> Verdict:
        avail = len(buf)
        if avail < HEADER_LEN:
            return SKIP if avail >= 8 and buf[7] != START else NEED_DATA
        if buf[7] != START:
            return SKIP
        total = HEADER_LEN + buf[9] + 2
        if avail < total:
            return NEED_DATA
        cs = sum(memoryview(buf)[: total - 2]) & 0xFF
        if buf[total - 2] != cs:
            return Bad(total, "bad-checksum", f"CS is {buf[total - 2]:02X}, computed {cs:02X}")
        if buf[total - 1] != END:
            return Bad(total, "bad-end", f"expected 16, got {buf[total - 1]:02X}")
        return total

    def _decode(self, raw: bytes) -> Frame:
        return frame_from_checked(raw)
