"""Energy registers: the exact accumulators a virtual meter integrates into, and what it shows.

The accumulators are integers in units of 0.1 W x 1 microsecond (power units times elapsed
microseconds), so integration is exact and does not depend on how time was cut into steps:
one step over three days and ten thousand small steps give identical registers. That integer is
the exact accumulator; :func:`units_to_kwh` turns it into the ``Decimal`` the meter displays,
truncated to 2 decimals and rolling over at 999999.99 kWh as a 6+2 digit register does.

Reactive registers accumulate ``energy x tan_num`` (the meter's tan(phi) kept as a fraction), so
they stay exact too; they are divided by ``tan_den`` only when shown.

Frozen and settlement records are kept as displayed values in a compact ``array`` (62 daily
records per meter add up over a district). :class:`RegisterBank` owns all of this for one meter.
"""

from __future__ import annotations

import datetime as dt
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from .measure import split_phases
from .timebase import from_us

#: Accumulator units (0.1 W x 1 us) in one kWh, and in 0.01 kWh.
UNITS_PER_KWH: Final = 36 * 10**12
UNITS_PER_CENTI_KWH: Final = 36 * 10**10
#: A 6+2 digit register rolls over here (in 0.01 kWh).
ROLLOVER: Final = 10**8

# Live register layout (indices into the accumulator list): 5 = total + four tariffs.
FWD: Final = 0
REV: Final = 5
Q1: Final = 10
Q2: Final = 15
Q3: Final = 20
Q4: Final = 25
PH_FWD: Final = 30  # phases A, B, C (totals only)
PH_REV: Final = 33
N_ENERGY: Final = 36
# Demand layout: power units and the meter-local minute it was reached, per tariff slot.
D_FWD: Final = 0
D_FWD_AT: Final = 5
D_REV: Final = 10
D_REV_AT: Final = 15
N_DEMAND: Final = 20

_LOCAL_EPOCH: Final = dt.datetime(1970, 1, 1)


def centi_kwh(units: int, divisor: int = 1) -> int:
    """Accumulator units -> the displayed register in 0.01 kWh (truncated, rolled over)."""
    return units // (UNITS_PER_CENTI_KWH * divisor) % ROLLOVER


def units_to_kwh(units: int, divisor: int = 1) -> Decimal:
    return Decimal(centi_kwh(units, divisor)).scaleb(-2)


def kwh_to_units(kwh: Decimal) -> int:
    return int(kwh * 100 * UNITS_PER_CENTI_KWH)


def local_minute(local: dt.datetime) -> int:
    return (local - _LOCAL_EPOCH) // dt.timedelta(minutes=1)


def minute_to_local(minute: int) -> dt.datetime:
    return _LOCAL_EPOCH + dt.timedelta(minutes=minute)


@dataclass(frozen=True, slots=True)
class Demand:
    """A maximum demand: kW and the meter-local minute it was reached (``None``: never)."""

    kw: Decimal
    at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Registers:
    """What the meter displays; every tuple is (total, sharp, peak, flat, valley)."""

    forward_active: tuple[Decimal, ...]
    reverse_active: tuple[Decimal, ...]
    reactive_q1: tuple[Decimal, ...]
    reactive_q2: tuple[Decimal, ...]
    reactive_q3: tuple[Decimal, ...]
    reactive_q4: tuple[Decimal, ...]
    phase_forward: tuple[Decimal, ...]  # A, B, C
    phase_reverse: tuple[Decimal, ...]
    forward_demand: tuple[Demand, ...]
    reverse_demand: tuple[Demand, ...]

    @property
    def combined_active(self) -> tuple[Decimal, ...]:
        """Forward + reverse (the default combination word of State Grid meters)."""
        return tuple(
            _wrap(f + r) for f, r in zip(self.forward_active, self.reverse_active, strict=True)
        )

    @property
    def combined_reactive_1(self) -> tuple[Decimal, ...]:
        return tuple(_wrap(a + b) for a, b in zip(self.reactive_q1, self.reactive_q2, strict=True))

    @property
    def combined_reactive_2(self) -> tuple[Decimal, ...]:
        return tuple(_wrap(a + b) for a, b in zip(self.reactive_q3, self.reactive_q4, strict=True))

    def quantity(self, name: str) -> tuple[Decimal, ...]:
        """A register family by its registry quantity name (``forward_active``...)."""
        value: tuple[Decimal, ...] = getattr(self, name)
        return value

    @property
    def forward_total(self) -> Decimal:
        return self.forward_active[0]

    @property
    def reverse_total(self) -> Decimal:
        return self.reverse_active[0]


def _wrap(value: Decimal) -> Decimal:
    return value % Decimal(ROLLOVER).scaleb(-2)


@dataclass(frozen=True, slots=True)
class FrozenRecord:
    """A daily freeze (or settlement record): the meter-local day it belongs to and the registers.

    ``freeze_time`` is what ``05060001`` reports (that day 00:00, meter-local); ``frozen_at``
    is the true instant the meter froze, which differs when its clock is wrong.
    """

    day: dt.date
    freeze_time: dt.datetime
    frozen_at: dt.datetime
    registers: Registers

    @property
    def forward_active(self) -> tuple[Decimal, ...]:
        return self.registers.forward_active

    @property
    def reverse_active(self) -> tuple[Decimal, ...]:
        return self.registers.reverse_active


def snapshot(energy: Sequence[int], demand: Sequence[int], reactive_divisor: int) -> array[int]:
    """The displayed values of live registers, compactly: energies in 0.01 kWh, then demand."""
    out = array("q", (centi_kwh(u) for u in energy))
    for q in range(Q1, PH_FWD):
        out[q] = centi_kwh(energy[q], reactive_divisor)
    out.extend(demand)
    return out


_SLICES: Final = {
    "forward_active": (FWD, 5), "reverse_active": (REV, 5),
    "reactive_q1": (Q1, 5), "reactive_q2": (Q2, 5), "reactive_q3": (Q3, 5), "reactive_q4": (Q4, 5),
    "phase_forward": (PH_FWD, 3), "phase_reverse": (PH_REV, 3),
}  # fmt: skip
_SUMS: Final = {
    "combined_active": ("forward_active", "reverse_active"),
    "combined_reactive_1": ("reactive_q1", "reactive_q2"),
    "combined_reactive_2": ("reactive_q3", "reactive_q4"),
}


class RegisterView:
    """One quantity at a time from a :func:`snapshot` (a read needs one, not all ten)."""

    __slots__ = ("snap",)

    def __init__(self, snap: Sequence[int]) -> None:
        self.snap = snap

    def _ints(self, name: str) -> Sequence[int]:
        start, n = _SLICES[name]
        return self.snap[start : start + n]

    def quantity(self, name: str) -> tuple[Decimal, ...]:
        """Registers by registry quantity name: ``forward_active``, ``combined_reactive_1``..."""
        if name in _SUMS:
            a, b = (self._ints(n) for n in _SUMS[name])
            return tuple(Decimal((x + y) % ROLLOVER).scaleb(-2) for x, y in zip(a, b, strict=True))
        return tuple(Decimal(v).scaleb(-2) for v in self._ints(name))

    def demand(self, *, forward: bool) -> tuple[Demand, ...]:
        start, at = (D_FWD, D_FWD_AT) if forward else (D_REV, D_REV_AT)
        snap, base = self.snap, N_ENERGY
        return tuple(
            Demand(
                Decimal(snap[base + start + i]).scaleb(-4),
                minute_to_local(snap[base + at + i]) if snap[base + at + i] else None,
            )
            for i in range(5)
        )


def registers_from(snap: Sequence[int]) -> Registers:
    """A :class:`Registers` from a :func:`snapshot`."""
    view = RegisterView(snap)
    return Registers(
        **{name: view.quantity(name) for name in _SLICES},
        forward_demand=view.demand(forward=True),
        reverse_demand=view.demand(forward=False),
    )


DAILY_RECORDS: Final = 62
SETTLEMENT_RECORDS: Final = 12

_Kept = tuple[dt.date, int, Sequence[int]]  # meter-local day, true instant frozen, snapshot


def _initial_split(kwh: Decimal) -> list[int]:
    """Total + four tariffs for a register that starts at ``kwh``: 10/30/35/25 %, exact sum."""
    total = kwh_to_units(kwh)
    sharp, peak, valley = total // 10, total * 3 // 10, total // 4
    return [total, sharp, peak, total - sharp - peak - valley, valley]


class RegisterBank:
    """One meter's live accumulators, its maximum-demand registers and its frozen records."""

    __slots__ = ("_daily", "_demand", "_energy", "_settlements", "_tan_den", "_tan_num")

    def __init__(
        self,
        *,
        initial_kwh: Decimal,
        initial_reverse_kwh: Decimal,
        phases: int,
        power_factor: Decimal,
    ) -> None:
        tan = (1 / power_factor**2 - 1).sqrt()
        self._tan_den = 10**6
        self._tan_num = int((tan * self._tan_den).to_integral_value())
        en = self._energy = [0] * N_ENERGY
        for base, qbase, phase_base, kwh in (
            (FWD, Q1, PH_FWD, initial_kwh),
            (REV, Q3, PH_REV, initial_reverse_kwh),
        ):
            split = _initial_split(kwh)
            en[base : base + 5] = split
            en[qbase : qbase + 5] = [u * self._tan_num for u in split]
            for i, part in enumerate(split_phases(split[0], phases)):
                en[phase_base + i] = part
        self._demand = [0] * N_DEMAND
        self._daily: deque[_Kept] = deque(maxlen=DAILY_RECORDS)
        self._settlements: deque[_Kept] = deque(maxlen=SETTLEMENT_RECORDS)

    def add(self, parts: Sequence[int], span: int, tariff: int, *, reverse: bool) -> int:
        """Register ``sum(parts)`` (power units per phase) held for ``span`` microseconds."""
        load = sum(parts)
        energy = load * span
        en = self._energy
        base, qbase, phase_base = (REV, Q3, PH_REV) if reverse else (FWD, Q1, PH_FWD)
        en[base] += energy
        en[base + tariff] += energy
        reactive = energy * self._tan_num
        en[qbase] += reactive
        en[qbase + tariff] += reactive
        for i, p in enumerate(parts):
            en[phase_base + i] += p * span
        return energy

    def note_demand(
        self, load: int, tariff: int, minute: Callable[[], int], *, reverse: bool
    ) -> None:
        """Raise the maximum demand if ``load`` beats it (``minute()``: meter-local, when)."""
        d = self._demand
        slot, at = (D_REV, D_REV_AT) if reverse else (D_FWD, D_FWD_AT)
        if load > d[slot] or load > d[slot + tariff]:
            when = minute()
            for i in (slot, slot + tariff):
                if load > d[i]:
                    d[i] = load
                    d[i - slot + at] = when

    def step_down(self, units: int, tariff: int) -> None:
        """The forward total and one tariff lose ``units`` (a register going backwards)."""
        for i in (FWD, FWD + tariff):
            self._energy[i] = max(0, self._energy[i] - units)

    def freeze(self, day: dt.date, at_us: int, *, settlement: bool) -> None:
        """The daily freeze of ``day``; on the settlement day also a settlement record, after
        which the maximum demand of the new billing period starts from zero."""
        snap = snapshot(self._energy, self._demand, self._tan_den)
        self._daily.appendleft((day, at_us, snap))
        if settlement:
            self._settlements.appendleft((day, at_us, snap))
            self._demand = [0] * N_DEMAND

    def shown(self) -> Registers:
        return registers_from(snapshot(self._energy, self._demand, self._tan_den))

    def view(self) -> RegisterView:
        return RegisterView(snapshot(self._energy, self._demand, self._tan_den))

    def daily_view(self, n: int) -> tuple[dt.date, RegisterView] | None:
        if not 1 <= n <= len(self._daily):
            return None
        day, _, snap = self._daily[n - 1]
        return day, RegisterView(snap)

    def settlement_view(self, n: int) -> RegisterView | None:
        return (
            RegisterView(self._settlements[n - 1][2]) if 1 <= n <= len(self._settlements) else None
        )

    @property
    def forward_units(self) -> int:
        return self._energy[FWD]

    def daily(self, n: int) -> FrozenRecord | None:
        return _record(self._daily[n - 1]) if 1 <= n <= len(self._daily) else None

    def daily_of(self, day: dt.date) -> FrozenRecord | None:
        for kept in self._daily:
            if kept[0] == day:
                return _record(kept)
        return None

    def settlement(self, n: int) -> FrozenRecord | None:
        return _record(self._settlements[n - 1]) if 1 <= n <= len(self._settlements) else None


def _record(kept: _Kept) -> FrozenRecord:
    day, at, snap = kept
    freeze_time = dt.datetime(day.year, day.month, day.day)
    return FrozenRecord(day, freeze_time, from_us(at), registers_from(snap))
