"""Hypothesis strategies for DL/T 645 values, one per value format in the registry."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from protocols.dlt645.formats import (
    ABSENT,
    BAUD_BITS,
    AsciiText,
    BaudFeature,
    BcdInteger,
    BcdNumber,
    BcdTimestamp,
    DigitString,
    HexString,
    Repeated,
    StatusWord,
    ValueFormat,
)
from protocols.dlt645.registry import DataItem, DemandWithTime


def _number_bounds(fmt: BcdNumber) -> int:
    if fmt.signed:
        return 80 * 100 ** (fmt.size - 1) - 1
    return 100**fmt.size - 1


def value_strategy(fmt: ValueFormat) -> st.SearchStrategy[Any]:
    if isinstance(fmt, Repeated):
        return st.lists(value_strategy(fmt.item), min_size=1, max_size=8)
    if isinstance(fmt, DemandWithTime):
        return st.tuples(value_strategy(fmt.demand), value_strategy(BcdTimestamp("YYMMDDhhmm")))
    if isinstance(fmt, BcdNumber):
        top = _number_bounds(fmt)
        low = -top if fmt.signed else 0
        return st.one_of(
            st.just(ABSENT),
            st.integers(low, top).map(lambda v: Decimal(v).scaleb(-fmt.decimals)),
        )
    if isinstance(fmt, BcdInteger):
        return st.integers(0, 100**fmt.size - 1)
    if isinstance(fmt, BcdTimestamp):
        moments = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59, 59))
        match fmt.pattern:
            case "YYMMDDhhmmss":
                return moments.map(lambda m: m.replace(microsecond=0))
            case "YYMMDDhhmm":
                return moments.map(lambda m: m.replace(second=0, microsecond=0))
            case "YYMMDD":
                return moments.map(lambda m: m.date())
            case "hhmmss":
                return moments.map(lambda m: m.time().replace(microsecond=0))
        return moments.map(lambda m: m.replace(year=2000, second=0, microsecond=0))
    if isinstance(fmt, DigitString):
        return st.text("0123456789", min_size=fmt.size * 2, max_size=fmt.size * 2)
    if isinstance(fmt, HexString):
        return st.binary(min_size=fmt.size, max_size=fmt.size).map(lambda b: b.hex().upper())
    if isinstance(fmt, AsciiText):
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
        return st.text(alphabet, min_size=0, max_size=fmt.size)
    if isinstance(fmt, BaudFeature):
        return st.sampled_from(sorted(BAUD_BITS.values()))
    if isinstance(fmt, StatusWord):
        return st.integers(0, 256**fmt.size - 1)
    raise TypeError(f"no strategy for {fmt!r}")


def record_strategy(item: DataItem) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f.name: value_strategy(f.format) for f in item.fields})


def random_record(item: DataItem, rng: random.Random) -> dict[str, Any]:
    """One valid record for ``item`` without hypothesis (for exhaustive sweeps)."""
    return {f.name: _random_value(f.format, rng) for f in item.fields}


def _random_value(fmt: ValueFormat, rng: random.Random) -> Any:
    if isinstance(fmt, Repeated):
        return [_random_value(fmt.item, rng) for _ in range(rng.randint(1, 6))]
    if isinstance(fmt, DemandWithTime):
        return (_random_value(fmt.demand, rng), _random_value(BcdTimestamp("YYMMDDhhmm"), rng))
    if isinstance(fmt, BcdNumber):
        top = _number_bounds(fmt)
        return Decimal(rng.randint(-top if fmt.signed else 0, top)).scaleb(-fmt.decimals)
    if isinstance(fmt, BcdInteger):
        return rng.randint(0, 100**fmt.size - 1)
    if isinstance(fmt, BcdTimestamp):
        m = dt.datetime(2000, 1, 1) + dt.timedelta(seconds=rng.randint(0, 99 * 365 * 86400))
        match fmt.pattern:
            case "YYMMDDhhmmss":
                return m
            case "YYMMDDhhmm":
                return m.replace(second=0)
            case "YYMMDD":
                return m.date()
            case "hhmmss":
                return m.time()
        return m.replace(year=2000, second=0)
    if isinstance(fmt, DigitString):
        return "".join(rng.choice("0123456789") for _ in range(fmt.size * 2))
    if isinstance(fmt, AsciiText):
        return "".join(rng.choice("ABC123") for _ in range(rng.randint(0, fmt.size)))
    if isinstance(fmt, BaudFeature):
        return rng.choice(sorted(BAUD_BITS.values()))
    if isinstance(fmt, StatusWord):
        return rng.randint(0, 256**fmt.size - 1)
    raise TypeError(f"no generator for {fmt!r}")


def normalise(item: DataItem, record: dict[str, Any]) -> dict[str, Any]:
    """What parsing gives back for ``record`` (status words come back as StatusBits)."""
    out = {}
    for f in item.fields:
        v = record[f.name]
        if isinstance(f.format, StatusWord):
            v = f.format.decode(f.format.encode(v))
        out[f.name] = v
    return out
