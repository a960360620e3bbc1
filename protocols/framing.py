"""What every sans-IO stream framer in this package shares: the "need more data" answer, the
counters that tell an operator how noisy a line is, and :class:`StreamFramer`, the buffer
discipline all three protocols' framers follow.

A framer is fed bytes in whatever chunks the transport delivers and hands back whole frames.
It never reads a port and never blocks. A protocol says only how to judge a candidate that
starts at a start byte (:meth:`StreamFramer._examine`) and how to build a frame from checked
bytes (:meth:`StreamFramer._decode`); the search, the resync after a bad candidate (drop one
byte, look again, so a good frame inside a broken one is still found), the end-of-stream rule
and the counting are here, once.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar

from .errors import RemoteProtocolError


class _NeedData(enum.Enum):
    NEED_DATA = "need-data"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by a framer's ``next_frame()`` when the buffer holds no whole frame yet.
NEED_DATA: Final = _NeedData.NEED_DATA
NeedData = _NeedData


@dataclass(frozen=True, slots=True)
class FramerStatistics:
    """A snapshot of a framer's counters (metrics read these)."""

    frames: int
    preamble_bytes: int
    discarded_bytes: int
    rejected: MappingProxyType[str, int]
    buffered: int

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(slots=True)
class FramerCounters:
    """Mutable counters kept by a framer; :meth:`snapshot` freezes them."""

    frames: int = 0
    preamble_bytes: int = 0
    discarded_bytes: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def snapshot(self, buffered: int) -> FramerStatistics:
        return FramerStatistics(
            frames=self.frames,
            preamble_bytes=self.preamble_bytes,
            discarded_bytes=self.discarded_bytes,
            rejected=MappingProxyType(dict(self.rejected)),
            buffered=buffered,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """What a probe found at an offset: a frame, or a rejected candidate with its evidence."""

    protocol: str
    length: int
    frame: Any | None = None
    reason: str = ""
    detail: str = ""
    evidence: int = 0


@dataclass(frozen=True, slots=True)
class Rejection:
    """A candidate frame that failed a check; ``raw`` is the bytes the candidate spanned."""

    reason: str
    detail: str
    raw: bytes


class _Skip(enum.Enum):
    SKIP = "skip"


#: :meth:`StreamFramer._examine`: the start byte at the front begins no frame of this protocol.
SKIP: Final = _Skip.SKIP


@dataclass(frozen=True, slots=True)
class Bad:
    """:meth:`StreamFramer._examine`: a candidate of ``length`` bytes that fails a check."""

    length: int
    reason: str
    detail: str


#: What :meth:`StreamFramer._examine` says of the candidate at the front of the buffer: its
#: total length when it is whole and its checks hold, or one of the answers above.
Verdict = int | NeedData | _Skip | Bad

F = TypeVar("F")


class StreamFramer(Generic[F]):
    """Finds frames of one protocol in a byte stream (see the module docstring)."""

    __slots__ = ("_buf", "_counters", "_eof")

    START: int = 0x68
    #: wake-up byte counted as preamble (not noise) before a frame; ``None``: the protocol has none
    WAKE: int | None = None

    def __init__(self) -> None:
        self._buf = bytearray()
        self._counters = FramerCounters()
        self._eof = False

    # -- to be said by each protocol ------------------------------------------------------
    def _examine(self, buf: bytearray) -> Verdict:
        """Judge the candidate at ``buf[0]`` (a start byte); ``NEED_DATA`` to wait for more."""
        raise NotImplementedError

    def _decode(self, raw: bytes) -> F:
        """The frame of checked bytes; a :class:`RemoteProtocolError` rejects the candidate."""
        raise NotImplementedError

    # -- the stream -----------------------------------------------------------------------
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

    def frames(self) -> Iterator[F]:
        """Every whole frame currently buffered."""
        while True:
            event = self.next_frame()
            if event is NEED_DATA:
                return
            yield event

    def next_frame(self) -> F | NeedData:
        """The next whole frame, skipping (and counting) rejected candidates."""
        while True:
            event = self.next_event()
            if not isinstance(event, Rejection):
                return event

    def next_event(self) -> F | Rejection | NeedData:
        """The next whole frame or rejected candidate, or :data:`NEED_DATA`."""
        buf = self._buf
        while True:
            start = buf.find(self.START)
            if start < 0:
                self._skip(len(buf))
                self._eof = False
                return NEED_DATA
            if start:
                self._skip(start)
            verdict = self._examine(buf)
            if verdict is NEED_DATA:
                return self._wait()
            if verdict is SKIP:
                self._discard(1)
                continue
            if isinstance(verdict, Bad):
                return self._reject(verdict.length, verdict.reason, verdict.detail)
            assert isinstance(verdict, int)
            raw = bytes(buf[:verdict])
            try:
                frame = self._decode(raw)
            except RemoteProtocolError as exc:
                return self._reject(verdict, exc.reason, exc.detail)
            del buf[:verdict]
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

    def _skip(self, n: int) -> None:
        """Drop ``n`` bytes before a start byte: wake-up bytes count as preamble, the rest as
        noise."""
        wake = self._buf.count(self.WAKE, 0, n) if self.WAKE is not None else 0
        self._counters.preamble_bytes += wake
        self._counters.discarded_bytes += n - wake
        del self._buf[:n]

    def _discard(self, n: int) -> None:
        self._counters.discarded_bytes += n
        del self._buf[:n]
