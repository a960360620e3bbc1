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

from collections.abc import Iterator
from typing import Final

from protocols.dlt645.framer import Rejection
from protocols.framing import NEED_DATA, FramerCounters, FramerStatistics, NeedData

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


class Dlt698Framer:
    """Finds DL/T 698.45 frames in a byte stream."""

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
        while True:
            start = buf.find(START)
            if start < 0:
                self._skip(len(buf))
                self._eof = False
                return NEED_DATA
            if start:
                self._skip(start)
            if len(buf) < 5:
                return self._wait()
            length_field = buf[1] | buf[2] << 8
            total = (length_field & MAX_LENGTH_FIELD) + 2
            if (
                buf[3] & 7 not in _KNOWN_FUNCTIONS
                or length_field & 0xC000
                or total > self._max_length
            ):
                self._discard(1)
                continue
            head = 8 + (buf[4] & 0x0F) + 1
            if len(buf) < head:
                return self._wait()
            problem = check_header(buf)
            if problem is not None:
                return self._reject(head, *problem)
            if len(buf) < total:
                return self._wait()
            problem = check_body(buf, total)
            if problem is not None:
                return self._reject(total, *problem)
            raw = bytes(buf[:total])
            del buf[:total]
            self._counters.frames += 1
            return frame_from_checked(raw)

    def _wait(self) -> NeedData | Rejection:
        if not self._eof:
            return NEED_DATA
        # Nothing more is coming: reject the truncated candidate by its start byte so the
        # search resumes inside it and frames in the tail are still found.
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
