"""Pricing one interval of consumption by a tariff: flat, time-of-use, tiered (阶梯电价).

The interval runs between two verified register reads of one meter (``Registers``). Money is
exact: kWh (two decimals) times prices (four) is a Decimal product, nothing is rounded, so a
balance is the exact sum of its entries and a hand calculation gives the same digits.

* **flat** — total kWh x price.
* **tou** — each tariff register's increase (sharp 尖, peak 峰, flat 平, valley 谷) x its price.
  Registers are truncated independently, so their increases may not add up to the total's: the
  difference is priced at the flat price. A read without tariff registers is priced wholly at
  the flat price.
* **tiered** — annual blocks: kWh up to the first threshold at the first price, and so on,
  counted from the tariff year's start (the last ``reset`` month-day, local, at or before the
  interval's start). An interval is charged in the year it starts in; with daily frozen reads
  there is a read at 00:00 of the reset day, so nothing straddles the reset.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from gateway.config import TariffConfig
from spool import JSONValue

PERIODS: Final = ("sharp", "peak", "flat", "valley")


@dataclass(frozen=True, slots=True)
class Registers:
    """A meter's forward active registers at one instant (a charge point)."""

    time: dt.datetime
    total: Decimal
    periods: Mapping[str, Decimal] = field(default_factory=dict)

    def as_details(self) -> dict[str, JSONValue]:
        out: dict[str, JSONValue] = {"time": self.time.isoformat(), "total": self.total}
        out.update(self.periods)
        return out

    @classmethod
    def from_details(cls, data: Mapping[str, JSONValue]) -> Registers:
        time, total = data["time"], data["total"]
        assert isinstance(time, str)
        assert isinstance(total, Decimal)
        periods = {p: v for p in PERIODS if isinstance(v := data.get(p), Decimal)}
        return cls(dt.datetime.fromisoformat(time), total, periods)

    def not_below(self, other: Registers) -> bool:
        """Every register at or above ``other``'s (a consumption interval, not a step back)."""
        if self.total < other.total:
            return False
        return all(self.periods[p] >= v for p, v in other.periods.items() if p in self.periods)


@dataclass(frozen=True, slots=True)
class Charge:
    """What an interval costs: ``amount`` >= 0 (the ledger posts it negated)."""

    kwh: Decimal
    amount: Decimal
    year_start: dt.date
    year_kwh: Decimal  # the account's kWh in the tariff year after this interval
    parts: Sequence[Mapping[str, JSONValue]]


def year_start(tariff: TariffConfig, day: dt.date) -> dt.date:
    """The tariff year containing ``day`` starts on the last reset month-day at or before it."""
    month, mday = tariff.reset_month_day
    candidate = dt.date(day.year, month, mday)
    return candidate if candidate <= day else dt.date(day.year - 1, month, mday)


def _part(label: str, name: str | int, kwh: Decimal, unit: Decimal) -> dict[str, JSONValue]:
    return {label: name, "kwh": kwh, "price": unit, "amount": kwh * unit}


def _block_parts(tariff: TariffConfig, before: Decimal, kwh: Decimal) -> list[dict[str, JSONValue]]:
    bounds = [Decimal(0), *tariff.thresholds_kwh]
    parts: list[dict[str, JSONValue]] = []
    for i, price in enumerate(tariff.prices):
        low = bounds[i]
        high = bounds[i + 1] if i + 1 < len(bounds) else None
        top = before + kwh if high is None else min(before + kwh, high)
        portion = top - max(before, low)
        if portion > 0:
            parts.append(_part("block", i + 1, portion, price))
    return parts


def price(
    tariff: TariffConfig,
    prev: Registers,
    cur: Registers,
    *,
    zone: dt.tzinfo,
    last_year_start: dt.date | None,
    last_year_kwh: Decimal,
) -> Charge:
    """Price ``(prev, cur]``. ``last_year_*`` are the account's tariff year and its kWh so far
    (from its previous consumption entry); a new year starts the count at zero."""
    kwh = cur.total - prev.total
    if kwh < 0:
        raise ValueError(f"registers went back ({prev.total} -> {cur.total}): not a consumption")
    start = year_start(tariff, prev.time.astimezone(zone).date())
    before = last_year_kwh if last_year_start == start else Decimal(0)
    parts: list[dict[str, JSONValue]] = []
    if tariff.kind == "flat":
        assert tariff.price is not None
        parts.append(_part("period", "all", kwh, tariff.price))
    elif tariff.kind == "tou":
        flat_price = tariff.flat
        assert flat_price is not None
        known = set(prev.periods) & set(cur.periods)
        counted = Decimal(0)
        if known == set(PERIODS):
            for period in PERIODS:
                step = cur.periods[period] - prev.periods[period]
                unit = getattr(tariff, period)
                assert isinstance(unit, Decimal)
                counted += step
                parts.append(_part("period", period, step, unit))
        rest = kwh - counted
        if rest:
            parts.append(_part("period", "unsplit", rest, flat_price))
    else:
        parts = _block_parts(tariff, before, kwh)
    amount = sum((p["amount"] for p in parts if isinstance(p["amount"], Decimal)), Decimal(0))
    return Charge(kwh, amount, start, before + kwh, parts)
