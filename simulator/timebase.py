"""Simulated time in integer microseconds, the district's time zone, and a meter's own clock.

Everything inside the simulator counts UTC microseconds since the epoch as plain ``int``s: the
energy integration multiplies power by elapsed microseconds and must stay exact however a
stretch of time is cut into steps, which floats and ``timedelta`` sums cannot promise.

:class:`MeterClock` is the meter's quartz: true time plus an offset plus a linear drift. It
maps true instants to what the meter believes and back (the meter freezes and switches tariffs
by its own clock, so those boundaries are found by inverting it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo

US: Final = 1_000_000
MINUTE_US: Final = 60 * US
HOUR_US: Final = 3600 * US
DAY_US: Final = 86_400 * US
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US: Final = dt.timedelta(microseconds=1)


def to_us(instant: dt.datetime) -> int:
    """An aware datetime as UTC microseconds since the epoch."""
    if instant.tzinfo is None:
        raise ValueError(f"{instant} is naive; the simulator needs aware instants")
    return (instant - EPOCH) // _ONE_US


def from_us(us: int) -> dt.datetime:
    """UTC microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + dt.timedelta(microseconds=us)


def seconds_to_us(seconds: Decimal | float | int) -> int:
    return int(Decimal(str(seconds)) * US)


@dataclass(frozen=True, slots=True)
class Zone:
    """The time zone meters keep their local time in (DL/T 645 timestamps are local, naive)."""

    name: str = "Asia/Shanghai"

    @property
    def tz(self) -> ZoneInfo:
        return _zone(self.name)

    def offset_us(self, us: int) -> int:
        """UTC offset in force at UTC instant ``us``."""
        key = (self.name, us // DAY_US)
        offset = _DAY_OFFSETS.get(key)
        if offset is not None:
            return offset
        offset = _offset(self.tz, us)
        day_start = key[1] * DAY_US
        # Zones change offset at most once a day: if both ends of this UTC day agree, so does
        # every instant in between, and the day can be answered from the cache.
        if _offset(self.tz, day_start) == offset == _offset(self.tz, day_start + DAY_US - 1):
            if len(_DAY_OFFSETS) > 4096:
                _DAY_OFFSETS.clear()
            _DAY_OFFSETS[key] = offset
        return offset

    def local_us(self, us: int) -> int:
        """Local wall-clock time as microseconds since the local epoch (for day/slot arithmetic)."""
        return us + self.offset_us(us)

    def local(self, us: int) -> dt.datetime:
        """The naive local wall-clock time a meter shows at UTC instant ``us``."""
        return from_us(us).astimezone(self.tz).replace(tzinfo=None)

    def utc_us(self, local: dt.datetime) -> int:
        """UTC microseconds of a naive local wall-clock time."""
        return to_us(local.replace(tzinfo=self.tz))

    def midnight_us(self, day: dt.date) -> int:
        """UTC microseconds of local 00:00 of ``day``."""
        return self.utc_us(dt.datetime(day.year, day.month, day.day))


_ZONES: dict[str, ZoneInfo] = {}
_DAY_OFFSETS: dict[tuple[str, int], int] = {}


def _offset(tz: ZoneInfo, us: int) -> int:
    offset = from_us(us).astimezone(tz).utcoffset()
    assert offset is not None
    return offset // _ONE_US


def _zone(name: str) -> ZoneInfo:
    zone = _ZONES.get(name)
    if zone is None:
        zone = _ZONES[name] = ZoneInfo(name)
    return zone


class MeterClock:
    """What a meter's clock reads: ``t + offset + (t - ref) x drift / day``, all in microseconds.

    ``drift_us_per_day`` is positive for a clock that runs fast. Setting the clock (broadcast
    time sync) re-anchors ``ref`` at the instant of setting, so drift accumulates from there.
    """

    __slots__ = ("drift_us_per_day", "offset_us", "ref_us")

    def __init__(self, ref_us: int, offset_us: int = 0, drift_us_per_day: int = 0) -> None:
        if drift_us_per_day <= -DAY_US // 2:
            raise ValueError("a clock cannot lose half a day per day")
        self.ref_us = ref_us
        self.offset_us = offset_us
        self.drift_us_per_day = drift_us_per_day

    def read(self, true_us: int) -> int:
        return true_us + self.offset_us + (true_us - self.ref_us) * self.drift_us_per_day // DAY_US

    def true_of(self, meter_us: int) -> int:
        """The first true instant at which the meter's clock reads ``meter_us`` or later."""
        span = (meter_us - self.offset_us - self.ref_us) * DAY_US
        return self.ref_us - (-span // (DAY_US + self.drift_us_per_day))

    def set(self, true_us: int, meter_us: int) -> None:
        """Make the clock read ``meter_us`` at ``true_us`` (drift continues from there)."""
        self.ref_us = true_us
        self.offset_us = meter_us - true_us

    def step(self, true_us: int, delta_us: int) -> None:
        self.set(true_us, self.read(true_us) + delta_us)

    def set_drift(self, true_us: int, drift_us_per_day: int) -> None:
        self.set(true_us, self.read(true_us))
        self.drift_us_per_day = drift_us_per_day

    def error_us(self, true_us: int) -> int:
        """How far ahead (positive) or behind the meter's clock is at ``true_us``."""
        return self.read(true_us) - true_us
