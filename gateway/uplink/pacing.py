"""Drain pacing: a token bucket in records per second, so a backlog built up during an outage
goes out at a rate the broker and head-end can take instead of all at once.

Ordinary traffic (a district's readings trickle in) never waits: the bucket holds one second
of records, and at least one full batch, so only a sustained drain is held to ``rate``.
``rate`` 0 turns pacing off.
"""

from __future__ import annotations

from .reconnect import RealTimer, Timer


class Pacer:
    def __init__(self, rate: float, *, burst: float, timer: Timer | None = None) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.rate = rate
        self.burst = max(burst, rate)
        self.timer: Timer = timer or RealTimer()
        self._tokens = self.burst
        self._stamp = self.timer.monotonic()
        self.waited_s = 0.0

    def _refill(self) -> None:
        now = self.timer.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, records: int) -> float:
        """Wait until ``records`` may go; return how long that took (0 when unpaced)."""
        if self.rate == 0:
            return 0.0
        self._refill()
        # A batch larger than the bucket may go once the bucket is full (it goes into debt).
        need = min(float(records), self.burst)
        waited = 0.0
        if self._tokens < need:
            waited = (need - self._tokens) / self.rate
            await self.timer.sleep(waited)
            self._refill()
        self._tokens -= records
        self.waited_s += waited
        return waited
