"""Injected time. Every scheduler, check and simulator takes a :class:`Clock`.

* :class:`SystemClock` — the real one.
* :class:`ScaledClock` — calendar time that runs ``speed`` times faster than real time from an
  agreed origin, so a simulator and a gateway in two processes see the same simulated instant
  when given the same ``origin``, ``real_origin`` and ``speed``. Sleeping is scaled too.
* :class:`ManualClock` — moved by the test; ``sleep`` returns when the test has advanced
  the clock far enough.

``now()`` is always timezone-aware UTC; meters keep local time and convert at the edge.
Wire timing (baud, turnaround) is measured with ``time.monotonic`` and never scaled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol

UTC = dt.UTC


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current instant, timezone-aware UTC."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """``origin`` + (real time since ``real_origin``) x ``speed``."""

    def __init__(
        self, origin: dt.datetime, speed: float = 1.0, real_origin: float | None = None
    ) -> None:
        if origin.tzinfo is None:
            raise ValueError("origin must be timezone-aware")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.origin = origin.astimezone(UTC)
        self.speed = speed
        self.real_origin = time.time() if real_origin is None else real_origin

    def now(self) -> dt.datetime:
        return self.origin + dt.timedelta(seconds=(time.time() - self.real_origin) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._changed = asyncio.Event()

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._changed.set()

    def set(self, instant: dt.datetime) -> None:
        self._now = instant.astimezone(UTC)
        self._changed.set()

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + dt.timedelta(seconds=max(0.0, seconds))
        while self._now < deadline:
            self._changed.clear()
            await self._changed.wait()
