"""Time-of-use (分时) tables: which of the four tariff periods applies at a local time of day.

A table is a list of switch points ``("HH:MM", tariff)`` within one day, evaluated in the meter's
local time by the meter's own clock (a meter whose clock is wrong bills the wrong period, as in
the field). Tariffs follow Chinese usage: 1 sharp (尖), 2 peak (峰), 3 flat (平), 4 valley (谷).
"""

from __future__ import annotations

import enum
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .timebase import DAY_US, MINUTE_US


class Tariff(enum.IntEnum):
    SHARP = 1
    PEAK = 2
    FLAT = 3
    VALLEY = 4


TARIFF_COUNT: Final = 4
_HHMM: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(text: str) -> int:
    """``"HH:MM"`` -> minutes after midnight."""
    match = _HHMM.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time of day HH:MM")
    return int(match.group(1)) * 60 + int(match.group(2))


@dataclass(frozen=True, slots=True)
class TouTable:
    """Switch points in minutes after local midnight, ascending; the last wraps past midnight."""

    minutes: tuple[int, ...]
    tariffs: tuple[Tariff, ...]

    def __post_init__(self) -> None:
        if not self.minutes or len(self.minutes) != len(self.tariffs):
            raise ValueError("a time-of-use table needs at least one switch point")
        if list(self.minutes) != sorted(set(self.minutes)):
            raise ValueError("switch points must be strictly ascending")

    @classmethod
    def parse(cls, periods: Iterable[tuple[str, int]]) -> TouTable:
        """Build from ``[("00:00", 4), ("08:00", 3), ...]`` in any order."""
        pairs = sorted((parse_hhmm(start), Tariff(tariff)) for start, tariff in periods)
        if len({m for m, _ in pairs}) != len(pairs):
            raise ValueError("two periods start at the same time")
        return cls(tuple(m for m, _ in pairs), tuple(t for _, t in pairs))

    def at(self, day_us: int) -> tuple[Tariff, int]:
        """Tariff at ``day_us`` microseconds after local midnight, and microseconds it has left."""
        minute = day_us // MINUTE_US
        i = bisect_right(self.minutes, minute) - 1
        # Before the first switch point the previous day's last period is still running.
        tariff = self.tariffs[i]
        next_switch = (
            self.minutes[i + 1] * MINUTE_US
            if i + 1 < len(self.minutes)
            else DAY_US + self.minutes[0] * MINUTE_US
        )
        return tariff, next_switch - day_us

    def describe(self) -> Sequence[tuple[str, int]]:
        return [
            (f"{m // 60:02d}:{m % 60:02d}", int(t))
            for m, t in zip(self.minutes, self.tariffs, strict=True)
        ]


#: A common provincial residential/commercial split (valley at night, sharp in the evening peak).
STANDARD_TOU: Final = TouTable.parse(
    [
        ("00:00", Tariff.VALLEY),
        ("08:00", Tariff.FLAT),
        ("10:00", Tariff.PEAK),
        ("12:00", Tariff.FLAT),
        ("17:00", Tariff.PEAK),
        ("19:00", Tariff.SHARP),
        ("21:00", Tariff.PEAK),
        ("22:00", Tariff.FLAT),
        ("23:00", Tariff.VALLEY),
    ]
)

#: Everything in the flat period (meters without time-of-use billing).
FLAT_TOU: Final = TouTable.parse([("00:00", Tariff.FLAT)])
