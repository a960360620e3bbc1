"""Resting meters that keep failing, so a dead meter costs its bus (or the PLC module) little.

After ``after`` consecutive failures a meter rests for ``initial_s``, doubling with each
further failure up to ``max_s``; one success forgets everything. Time is the injected clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from protocols.bcd import Address

from .clock import Clock


@dataclass(slots=True)
class _Health:
    failures: int = 0
    resting_until: dt.datetime | None = None


class MeterBackoff:
    def __init__(self, clock: Clock, *, after: int, initial_s: float, max_s: float) -> None:
        self.clock = clock
        self.after = after
        self.initial_s = initial_s
        self.max_s = max_s
        self._health: dict[Address, _Health] = {}

    def resting_until(self, address: Address) -> dt.datetime | None:
        """When the meter may be asked again, or ``None`` when it may be asked now."""
        h = self._health.get(address)
        if h is None or h.resting_until is None or h.resting_until <= self.clock.now():
            return None
        return h.resting_until

    def succeeded(self, address: Address) -> None:
        self._health.pop(address, None)

    def failed(self, address: Address) -> None:
        h = self._health.setdefault(address, _Health())
        h.failures += 1
        over = h.failures - self.after
        if over >= 0:
            rest = min(self.initial_s * 2**over, self.max_s)
            h.resting_until = self.clock.now() + dt.timedelta(seconds=rest)
