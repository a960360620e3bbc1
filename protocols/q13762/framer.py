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

from collections.abc import Iterator
from typing import Final

from protocols.dlt645.framer import Rejection
from protocols.errors import RemoteProtocolError
from protocols.framing import NEED_DATA, FramerCounters, FramerStatistics, NeedData

from .frame import END, MIN_LENGTH, START, Frame, checksum, frame_from_checked

#: Longest frame accepted by default; real modules stay well below (file-transfer packets
#: are the largest). Raise it for a module that reports a larger maximum in AFN03 F10.
DEFAULT_MAX_LENGTH: Final = 2048


class Q13762Framer:
    """Finds 1376.2 frames in a byte stream."""

    __slots__ = ("_buf", "_counters", "_eof", "_max_length")

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self._buf = bytearray()
        self._counters = FramerCounters()
        self._eof = False
        self._max_length = max_length

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def feed_eof(self) -> None:
        """No more bytes will complete what is buffered (idle line or end of capture)."""
        self._eof = True

    def reset(self) -> None:
        """Drop everything buffered (counted as discarded), e.g. after a module reset."""
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
        while True:
            start = buf.find(START)
            if start < 0:
                self._discard(len(buf))
                self._eof = False
                return NEED_DATA
            if start:
                self._discard(start)
            if len(buf) < 3:
                return self._wait()
            total = buf[1] | buf[2] << 8
            if not MIN_LENGTH <= total <= self._max_length:
                self._discard(1)
                continue
            if len(buf) < total:
                return self._wait()
            cs = checksum(memoryview(buf)[3 : total - 2])
            if buf[total - 2] != cs:
                return self._reject(
                    total, "bad-checksum", f"CS is {buf[total - 2]:02X}, computed {cs:02X}"
                )
            if buf[total - 1] != END:
                return self._reject(total, "bad-end", f"expected 16, got {buf[total - 1]:02X}")
            raw = bytes(buf[:total])
            try:
                frame = frame_from_checked(raw)
            except RemoteProtocolError as exc:
                return self._reject(total, exc.reason, exc.detail)
            del buf[:total]
            self._counters.frames += 1
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

    def _discard(self, n: int) -> None:
        self._counters.discarded_bytes += n
        del self._buf[:n]
