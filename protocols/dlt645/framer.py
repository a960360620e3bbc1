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

from collections.abc import Iterator
from dataclasses import dataclass

from protocols.errors import FrameError
from protocols.framing import NEED_DATA, FramerCounters, FramerStatistics, NeedData

from .frame import END, HEADER_LEN, START, WAKE, Frame, frame_from_checked


@dataclass(frozen=True, slots=True)
class Rejection:
    """A candidate frame that failed a check; ``raw`` is the bytes the candidate spanned."""

    reason: str
    detail: str
    raw: bytes


class Dlt645Framer:
    """Finds DL/T 645 frames in a byte stream."""

    __slots__ = ("_buf", "_counters", "_eof")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._counters = FramerCounters()
        self._eof = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def feed_eof(self) -> None:
        """No more bytes will complete what is buffered (idle line or end of capture)."""
        self._eof = True

    def reset(self) -> None:
        """Drop everything buffered (counted as discarded), e.g. before a new request."""
        self._counters.discarded_bytes += len(self._buf)
        self._buf.clear()
        self._eof = False

    def statistics(self) -> FramerStatistics:
        return self._counters.snapshot(len(self._buf))

    def frames(self) -> Iterator[Frame]:
        """Every whole frame currently buffered."""
        while True:
            event = self.next_frame()
            if event is NEED_DATA:
                return
            assert isinstance(event, Frame)
            yield event

    def next_frame(self) -> Frame | NeedData:
        """The next whole frame, skipping (and counting) rejected candidates."""
        while True:
            event = self.next_event()
            if not isinstance(event, Rejection):
                return event

    def next_event(self) -> Frame | Rejection | NeedData:
        """The next whole frame or rejected candidate, or :data:`NEED_DATA`."""
        buf = self._buf
        counters = self._counters
        while True:
            start = buf.find(START)
            if start < 0:
                self._skip(len(buf))
                self._eof = False
                return NEED_DATA
            if start:
                self._skip(start)
            avail = len(buf)
            if avail < HEADER_LEN:
                if avail >= 8 and buf[7] != START:
                    self._discard(1)
                    continue
                return self._wait()
            if buf[7] != START:
                self._discard(1)
                continue
            total = HEADER_LEN + buf[9] + 2
            if avail < total:
                return self._wait()
            cs = sum(memoryview(buf)[: total - 2]) & 0xFF
            if buf[total - 2] != cs:
                return self._reject(
                    total, "bad-checksum", f"CS is {buf[total - 2]:02X}, computed {cs:02X}"
                )
            if buf[total - 1] != END:
                return self._reject(total, "bad-end", f"expected 16, got {buf[total - 1]:02X}")
            raw = bytes(buf[:total])
            try:
                frame = frame_from_checked(raw)
            except FrameError as exc:
                return self._reject(total, exc.reason, exc.detail)
            del buf[:total]
            counters.frames += 1
            return frame

    def _wait(self) -> NeedData | Rejection:
        if not self._eof:
            return NEED_DATA
        # Nothing more is coming: the candidate at the front is truncated. Reject it by its
        # start byte so the search resumes inside it and frames in the tail are still found.
        raw = bytes(self._buf)
        self._counters.rejected["truncated"] += 1
        self._discard(1)
        return Rejection("truncated", f"{len(raw)} bytes, the frame needs more", raw)

    def _reject(self, total: int, reason: str, detail: str) -> Rejection:
        raw = bytes(self._buf[:total])
        self._counters.rejected[reason] += 1
        self._discard(1)
        return Rejection(reason, detail, raw)

    def _skip(self, n: int) -> None:
        """Drop ``n`` bytes before a start byte: ``FE`` counts as preamble, the rest as noise."""
        chunk = self._buf[:n]
        wake = chunk.count(WAKE)
        self._counters.preamble_bytes += wake
        self._counters.discarded_bytes += n - wake
        del self._buf[:n]

    def _discard(self, n: int) -> None:
        self._counters.discarded_bytes += n
        del self._buf[:n]
