"""Reconnect back-off: exponential, capped, with jitter; time and randomness are injected.

Delays grow ``minimum x factor**n`` up to ``maximum``; each is drawn uniformly from the upper
half of that value ("equal jitter"), so a fleet of gateways that lost the same broker spreads
its reconnects, yet no delay collapses towards zero and turns into a tight loop.

Wire timing (back-off, pacing, acknowledgement timeouts) runs on a :class:`Timer`: real
monotonic time in the daemon even when the calendar clock is scaled, a fake one in tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol


class Timer(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this timer's time."""


class RealTimer:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class Backoff:
    """``next_delay()`` after each failure, ``reset()`` after a connection that worked."""

    def __init__(
        self,
        minimum: float,
        maximum: float,
        *,
        timer: Timer | None = None,
        rng: random.Random | None = None,
        factor: float = 2.0,
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"need 0 < minimum <= maximum, got {minimum}, {maximum}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.minimum = minimum
        self.maximum = maximum
        self.factor = factor
        self.timer: Timer = timer or RealTimer()
        self.rng = rng or random.Random()
        self.failures = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay (before jitter)."""
        # min() before the power would overflow: stop growing once the cap is reached.
        exponent = min(self.failures, 64)
        return min(self.maximum, self.minimum * self.factor**exponent)

    def next_delay(self) -> float:
        top = self.ceiling()
        self.failures += 1
        return self.rng.uniform(top / 2, top)

    def reset(self) -> None:
        self.failures = 0

    async def wait(self) -> float:
        """Sleep the next delay on the timer; return it."""
        delay = self.next_delay()
        await self.timer.sleep(delay)
        return delay
