"""Load profiles: how much power a customer draws at each instant, as a pure function of time.

A :class:`LoadProfile` is a daily shape (kW for each local hour) plus a base load and an optional
noise amplitude. A :class:`MeterLoad` scales it for one customer and adds deterministic noise:
each slot (``slot_minutes``, default 15) gets a factor drawn from a ``random.Random`` seeded with
the customer's seed and the local day, so the power at an instant never depends on when or how
often anybody asked. Power is held constant within a slot, in integer units of 0.1 W, which is
what lets the meter integrate energy exactly.

The shape follows the customer's true local time, not the meter's clock: a meter whose clock is
wrong still sees the same evening peak, it only files it under the wrong tariff.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final, Protocol

from .timebase import DAY_US, HOUR_US, MINUTE_US, Zone

#: Power is counted in integer units of 0.1 W (the meter shows kW with 4 decimals).
POWER_UNITS_PER_KW: Final = 10_000


def kw_to_units(kw: Decimal) -> int:
    return int((kw * POWER_UNITS_PER_KW).to_integral_value(ROUND_HALF_EVEN))


def units_to_kw(units: int) -> Decimal:
    return Decimal(units).scaleb(-4)


class LoadSource(Protocol):
    """Piecewise-constant power; what a meter integrates."""

    def power(self, t_us: int) -> int:
        """Power in 0.1 W units drawn from ``t_us`` until :meth:`next_change`."""

    def next_change(self, t_us: int) -> int:
        """The first instant after ``t_us`` at which :meth:`power` may change."""


RESIDENTIAL_SHAPE: Final = tuple(
    Decimal(x)
    for x in (
        "0.18", "0.15", "0.14", "0.13", "0.13", "0.15", "0.30", "0.55",
        "0.45", "0.35", "0.30", "0.40", "0.50", "0.35", "0.30", "0.30",
        "0.35", "0.55", "0.90", "1.20", "1.10", "0.85", "0.55", "0.30",
    )
)  # fmt: skip

COMMERCIAL_SHAPE: Final = tuple(
    Decimal(x)
    for x in (
        "0.40", "0.40", "0.40", "0.40", "0.40", "0.45", "0.60", "1.20",
        "2.80", "3.40", "3.60", "3.50", "3.00", "3.30", "3.50", "3.40",
        "3.20", "2.90", "2.00", "1.40", "1.00", "0.70", "0.50", "0.45",
    )
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """A daily load shape: kW for each local hour 0..23, plus ``base_kw`` all day."""

    hourly_kw: tuple[Decimal, ...] = RESIDENTIAL_SHAPE
    base_kw: Decimal = Decimal("0.05")
    noise: Decimal = Decimal("0.10")
    slot_minutes: int = 15

    def __post_init__(self) -> None:
        if len(self.hourly_kw) != 24:
            raise ValueError(f"a daily shape needs 24 hourly values, got {len(self.hourly_kw)}")
        if any(kw < 0 for kw in self.hourly_kw) or self.base_kw < 0:
            raise ValueError("load cannot be negative")
        if not 0 <= self.noise < 1:
            raise ValueError("noise is a fraction between 0 and 1")
        if self.slot_minutes <= 0 or 60 % self.slot_minutes:
            raise ValueError("slot_minutes must divide an hour")

    @classmethod
    def constant(cls, kw: Decimal | str, slot_minutes: int = 15) -> LoadProfile:
        """The same power all day, no noise (tests compute expected energy by hand)."""
        return cls((Decimal(kw),) * 24, Decimal(0), Decimal(0), slot_minutes)


@dataclass(slots=True)
class MeterLoad:
    """One customer's load: ``profile`` x ``scale`` with per-slot noise seeded by ``seed``."""

    profile: LoadProfile
    zone: Zone
    scale: Decimal = Decimal(1)
    seed: int = 0
    _hour_units: tuple[int, ...] = field(init=False, repr=False)
    _slot_us: int = field(init=False, repr=False)
    _noise_day: int = field(init=False, repr=False, default=-1)
    _noise: Sequence[int] = field(init=False, repr=False, default=())
    _noise_prev_day: int = field(init=False, repr=False, default=-1)
    _noise_prev: Sequence[int] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError("scale cannot be negative")
        p = self.profile
        self._hour_units = tuple(kw_to_units((kw + p.base_kw) * self.scale) for kw in p.hourly_kw)
        self._slot_us = p.slot_minutes * MINUTE_US

    def power(self, t_us: int) -> int:
        local = self.zone.local_us(t_us)
        day, pos = divmod(local, DAY_US)
        units = self._hour_units[pos // HOUR_US]
        if not self.profile.noise:
            return units
        return units * (1000 + self._noise_for(day)[pos // self._slot_us]) // 1000

    def next_change(self, t_us: int) -> int:
        local = self.zone.local_us(t_us)
        return t_us + self._slot_us - local % self._slot_us

    def _noise_for(self, day: int) -> Sequence[int]:
        """Per-slot noise in permille for one local day; the last two days are kept."""
        if day == self._noise_day:
            return self._noise
        if day == self._noise_prev_day:
            return self._noise_prev
        amplitude = int(self.profile.noise * 1000)
        rng = random.Random(self.seed * 1_000_003 + day)
        noise = array(
            "h", (rng.randint(-amplitude, amplitude) for _ in range(DAY_US // self._slot_us))
        )
        self._noise_prev_day, self._noise_prev = self._noise_day, self._noise
        self._noise_day, self._noise = day, noise
        return noise


def slot_random(seed: int, t_us: int, slot_us: int, salt: int) -> random.Random:
    """A generator for read-time jitter (voltage, frequency) that is fixed within one slot."""
    return random.Random((seed * 1_000_003 + t_us // slot_us) * 16 + salt)
