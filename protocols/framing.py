"""What every sans-IO stream framer in this package shares: the "need more data" answer and the
counters that tell an operator how noisy a line is.

A framer is fed bytes in whatever chunks the transport delivers and hands back whole frames.
It never reads a port and never blocks.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final


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
