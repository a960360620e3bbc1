"""Prepaid balance and cost control: tariffs priced by hand, the journal over a spool, warnings,
overdraft and the cut-off recommendation with its protections, local balance cross-check."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.clock import ManualClock
from gateway.checks import Checker, Registers, price, year_start
from gateway.config import Config, TariffConfig
from spool import (
    BalanceKind,
    ChecksStore,
    PostedEntry,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Spool,
)

from .test_checks_rules import ZONE, D

FLAT = TariffConfig(name="flat", kind="flat", price=D("0.5283"))
TOU = TariffConfig(
    name="tou", kind="tou", sharp=D("1.2"), peak=D("1.0"), flat=D("0.7"), valley=D("0.35")
)
TIERED = TariffConfig(
    name="tiered", kind="tiered", thresholds_kwh=[D(2760), D(4800)],
    prices=[D("0.5283"), D("0.5783"), D("0.8283")],
)  # fmt: skip
T = dt.datetime(2025, 6, 1, tzinfo=ZONE)


def regs(total: str, *periods: str, hours: float = 0) -> Registers:
    names = ("sharp", "peak", "flat", "valley")
    return Registers(
        T + dt.timedelta(hours=hours), D(total), dict(zip(names, map(D, periods), strict=False))
    )


# -- tariffs, by hand ------------------------------------------------------------------------


def test_flat() -> None:
    c = price(
        FLAT,
        regs("100.00"),
        regs("120.00", hours=24),
        zone=ZONE,
        last_year_start=None,
        last_year_kwh=D(0),
    )
    assert (c.kwh, c.amount) == (D("20.00"), D("10.566000"))  # 20.00 x 0.5283


def test_time_of_use_by_the_tariff_registers() -> None:
    prev = regs("10.00", "1.00", "2.00", "3.00", "4.00")
    cur = regs("20.00", "2.50", "4.00", "6.00", "7.50", hours=24)
    c = price(TOU, prev, cur, zone=ZONE, last_year_start=None, last_year_kwh=D(0))
    # 1.50 x 1.2 + 2.00 x 1.0 + 3.00 x 0.7 + 3.50 x 0.35 = 1.8 + 2.0 + 2.1 + 1.225
    assert c.amount == D("7.125")
    # The registers are truncated one by one: what the total has over their sum is flat-priced.
    skew = price(TOU, prev, regs("20.01", "2.50", "4.00", "6.00", "7.50"), zone=ZONE,
                 last_year_start=None, last_year_kwh=D(0))  # fmt: skip
    assert skew.amount == D("7.132")
    whole = price(
        TOU, regs("10.00"), regs("20.00"), zone=ZONE, last_year_start=None, last_year_kwh=D(0)
    )
    assert whole.amount == D("7.000")  # no tariff registers: 10 kWh at the flat price


def test_tiered_blocks_within_a_year() -> None:
    d = dt.date(2025, 6, 1)
    one = price(
        TIERED,
        regs("0"),
        regs("20"),
        zone=ZONE,
        last_year_start=year_start(TIERED, d),
        last_year_kwh=D(2750),
    )
    assert one.amount == D(10) * D("0.5283") + D(10) * D("0.5783")  # 11.0660
    assert one.year_kwh == D(2770)
    three = price(
        TIERED,
        regs("0"),
        regs("2100"),
        zone=ZONE,
        last_year_start=year_start(TIERED, d),
        last_year_kwh=D(2750),
    )
    # 10 at block 1, 2040 at block 2 (to 4800), 50 at block 3
    assert three.amount == D("5.283") + D("1179.7320") + D("41.4150")
    assert [p["block"] for p in three.parts] == [1, 2, 3]


@pytest.mark.parametrize(
    ("reset", "day", "start"),
    [
        ("01-01", dt.date(2025, 12, 31), dt.date(2025, 1, 1)),
        ("01-01", dt.date(2026, 1, 1), dt.date(2026, 1, 1)),
        ("07-01", dt.date(2025, 6, 30), dt.date(2024, 7, 1)),
        ("07-01", dt.date(2025, 7, 1), dt.date(2025, 7, 1)),
    ],
)
def test_tariff_year_start(reset: str, day: dt.date, start: dt.date) -> None:
    assert year_start(TIERED.model_copy(update={"reset": reset}), day) == start


def test_a_new_tariff_year_counts_from_zero() -> None:
    new_year = dt.datetime(2026, 1, 1, tzinfo=ZONE)
    c = price(
        TIERED, Registers(new_year, D(0)), Registers(new_year + dt.timedelta(days=1), D(40)),
        zone=ZONE, last_year_start=dt.date(2025, 1, 1), last_year_kwh=D(4799),
    )  # fmt: skip
    assert (c.year_start, c.year_kwh, c.amount) == (dt.date(2026, 1, 1), D(40), D(40) * D("0.5283"))


# -- the journal and its alarms, through the checker ------------------------------------------

A_FLAT, A_TOU, A_TIER, A_LOCAL = "000000000011", "000000000012", "000000000013", "000000000014"
DAY0 = dt.datetime(2025, 12, 29, tzinfo=ZONE)


def config(spool: Path, **account: Any) -> Config:
    doc: dict[str, Any] = {
        "gateway": {"id": "g"},
        "spool": {"path": str(spool)},
        "bus": [{"name": "b", "kind": "serial", "device": "/dev/null"}],
        "checks": {"cutoff": {"holidays": ["2026-01-02"]}},
        "tariff": [
            {"name": "flat", "kind": "flat", "price": "0.5"},
            {"name": "tou", "kind": "tou", "sharp": "1", "peak": "0.8", "flat": "0.5",
             "valley": "0.2"},
            {"name": "small-blocks", "kind": "tiered", "thresholds_kwh": ["100", "200"],
             "prices": ["0.5", "0.6", "0.8"], "reset": "01-01"},
        ],
        "account": [
            {"id": "flat", "tariff": "flat", "initial_balance": "60", "opened": DAY0.isoformat(),
             **account},
            {"id": "tou", "tariff": "tou", "initial_balance": "100"},
            {"id": "tiered", "tariff": "small-blocks", "initial_balance": "200"},
            {"id": "local", "tariff": "flat", "initial_balance": "30"},
        ],
        "meter": [
            {"address": A_FLAT, "bus": "b", "prepaid": "remote", "account": "flat"},
            {"address": A_TOU, "bus": "b", "prepaid": "remote", "account": "tou"},
            {"address": A_TIER, "bus": "b", "prepaid": "remote", "account": "tiered"},
            {"address": A_LOCAL, "bus": "b", "prepaid": "local", "account": "local"},
        ],
    }  # fmt: skip
    return Config.model_validate(doc)


def frozen_reading(
    meter: str, day: int, total: Decimal, periods: tuple[Decimal, ...] = ()
) -> Reading:
    when = DAY0 + dt.timedelta(days=day)
    values = {"forward_active_total": ReadingValue(total, "kWh")}
    for name, v in zip(("sharp", "peak", "flat", "valley"), periods, strict=False):
        values[f"forward_active_{name}"] = ReadingValue(v, "kWh")
    return Reading(meter, "05060101", when, when + dt.timedelta(minutes=6), values, Quality.OK,
                   ReadingKind.DAILY_FROZEN, "b")  # fmt: skip


def balance_reading(
    meter: str, when: dt.datetime, remaining: str, overdraft: str = "0"
) -> list[Reading]:
    return [
        Reading(meter, di, when, when, {name: ReadingValue(D(v), "CNY")}, Quality.OK,
                ReadingKind.PREPAID, "b")
        for di, name, v in (("00900200", "remaining_amount", remaining),
                            ("00900201", "overdraft_amount", overdraft))
    ]  # fmt: skip


def days_of(meter: str, daily: str, count: int, periods: bool = False) -> list[Reading]:
    out = []
    for d in range(count):
        total = D(1000) + D(daily) * d
        split = (total / 4,) * 4 if periods else ()
        out.append(frozen_reading(meter, d, total, split))
    return out


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


async def run(checker: Checker, when: dt.datetime) -> None:
    await checker.run_once(when.astimezone(dt.UTC))


async def test_balances_match_a_hand_calculation(spool: Spool, tmp_path: Path) -> None:
    cfg = config(tmp_path / "spool.sqlite")
    await spool.write_readings(
        days_of(A_FLAT, "20", 3) + days_of(A_TOU, "8", 3, periods=True) + days_of(A_TIER, "40", 6)
    )
    checker = Checker(cfg, spool, ManualClock(DAY0))
    await run(checker, DAY0 + dt.timedelta(days=5, hours=9))
    store = ChecksStore(spool)
    # flat: 60 - 2 days x 20 kWh x 0.5
    assert await store.balance("flat") == D("40.0")
    # tou: each tariff register +2 kWh a day: 2 x (1 + 0.8 + 0.5 + 0.2) = 5 a day, 2 days
    assert await store.balance("tou") == D("90.0")
    # tiered (blocks at 100 and 200 kWh a year, reset on 01-01), 40 kWh a day from 12-29:
    #   12-29 20.0 | 12-30 20.0 | 12-31 (80 -> 120) 20 x 0.5 + 20 x 0.6 = 22.0
    #   01-01 (new year, 0 -> 40) 20.0 | 01-02 (40 -> 80) 20.0
    assert await store.balance("tiered") == D(200) - D(20) - D(20) - D(22) - D(20) - D(20)
    journal = [p.entry for p in await store.balance_entries("tiered")]
    assert [e.kind.value for e in journal] == ["opening", "anchor", *["consumption"] * 5]
    assert [e.year_kwh for e in journal[2:]] == [D(40), D(80), D(120), D(40), D(80)]
    # Running again posts nothing more.
    report = await checker.run_once((DAY0 + dt.timedelta(days=5, hours=10)).astimezone(dt.UTC))
    assert report.balance_entries == 0


async def _alarms(spool: Spool, meter: str) -> list[tuple[str, dt.datetime, dt.datetime]]:
    return [
        (a.type, a.window_start.astimezone(ZONE), a.window_end.astimezone(ZONE))
        for a in await spool.alarms(meter=meter)
        if "balance" in a.type or a.type.startswith(("overdraft", "cutoff"))
    ]


async def test_warnings_overdraft_and_cutoff_at_the_right_reading(
    spool: Spool, tmp_path: Path
) -> None:
    cfg = config(tmp_path / "spool.sqlite")
    checker = Checker(cfg, spool, ManualClock(DAY0))
    # 60 at 12-29, then -10 a day: 50 at 12-30 (level 1), 10 at 01-03 (level 2), -10 at 01-05.
    for day in range(8):
        await spool.write_readings([frozen_reading(A_FLAT, day, D(1000) + D(20) * day)])
        for hour in (0.2, 8.0, 12.0):  # just after collection, at 08:00, at noon
            await run(checker, DAY0 + dt.timedelta(days=day, hours=hour))
    d = lambda n, h=0.0: DAY0 + dt.timedelta(days=n, hours=h)  # noqa: E731
    assert await _alarms(spool, A_FLAT) == [
        ("balance_warning_1", d(1), d(1)),
        ("balance_warning_2", d(5), d(5)),
        ("overdraft", d(7), d(7)),
        # 01-05 (day 7) 00:12 is night; the first run outside 18:00-08:00 recommends.
        ("cutoff_recommended", d(7, 8), d(7, 8)),
    ]


async def test_cutoff_is_never_at_night_on_holidays_or_while_protected(
    spool: Spool, tmp_path: Path
) -> None:
    cfg = config(tmp_path / "spool.sqlite", initial_balance="15")
    down = {"reachable": True}
    checker = Checker(cfg, spool, ManualClock(DAY0), headend=lambda: down["reachable"])
    await spool.write_readings([frozen_reading(A_FLAT, d, D(1000) + D(20) * d) for d in range(3)])
    d = lambda n, h=0.0: DAY0 + dt.timedelta(days=n, hours=h)  # noqa: E731
    await run(checker, d(2, 0.2))  # 12-31 00:12: overdrawn (-5), but night
    assert not [a for a in await _alarms(spool, A_FLAT) if a[0] == "cutoff_recommended"]
    await run(checker, d(2, 9))  # day: recommended
    await run(checker, d(2, 18))  # night begins: withdrawn
    await run(checker, d(3, 9))  # 01-01: a weekday here, recommended again
    await run(checker, d(4, 9))  # 01-02: a configured holiday
    cut = [(a[0], a[1]) for a in await _alarms(spool, A_FLAT) if a[0].startswith("cutoff")]
    assert cut == [
        ("cutoff_recommended", d(2, 9)),
        ("cutoff_recommended.cleared", d(2, 9)),
        ("cutoff_recommended", d(3, 9)),
        ("cutoff_recommended.cleared", d(3, 9)),
    ]
    # The head-end unreachable longer than the limit (a day) protects the account too.
    down["reachable"] = False
    await run(checker, d(5, 9))
    status = {s.account: s for s in checker.accounts((d(5, 9)).astimezone(dt.UTC))}
    assert status["flat"].protections == ()
    await run(checker, d(6, 10))
    status = {s.account: s for s in checker.accounts((d(6, 10)).astimezone(dt.UTC))}
    assert status["flat"].protections == ("headend_unreachable",)
    assert status["flat"].balance == D(-5)
    assert status["flat"].days_left == D(0)
    active = await ChecksStore(spool).active_alarms(types=["cutoff_recommended"])
    assert active == []  # made at 01-03 09:00, withdrawn at 01-04 10:00


async def test_protected_account_is_never_recommended(spool: Spool, tmp_path: Path) -> None:
    cfg = config(tmp_path / "spool.sqlite", initial_balance="15", protected=True)
    checker = Checker(cfg, spool, ManualClock(DAY0))
    await spool.write_readings([frozen_reading(A_FLAT, d, D(1000) + D(20) * d) for d in range(3)])
    await run(checker, DAY0 + dt.timedelta(days=2, hours=9))
    types = [a[0] for a in await _alarms(spool, A_FLAT)]
    assert "overdraft" in types
    assert "cutoff_recommended" not in types


async def test_top_up_clears_the_warnings_and_days_left_follows_the_average(
    spool: Spool, tmp_path: Path
) -> None:
    top_up = {
        "id": "T-1",
        "at": (DAY0 + dt.timedelta(days=2, hours=10)).isoformat(),
        "amount": "100",
    }
    cfg = config(tmp_path / "spool.sqlite", initial_balance="45", top_ups=[top_up])
    checker = Checker(cfg, spool, ManualClock(DAY0))
    await spool.write_readings([frozen_reading(A_FLAT, d, D(1000) + D(20) * d) for d in range(3)])
    await run(checker, DAY0 + dt.timedelta(days=2, hours=9))  # before the top-up's time
    assert await ChecksStore(spool).balance("flat") == D(25)
    await spool.write_readings([frozen_reading(A_FLAT, 3, D(1060))])
    await run(checker, DAY0 + dt.timedelta(days=3, hours=9))
    assert await ChecksStore(spool).balance("flat") == D(115)
    types = [a[0] for a in await _alarms(spool, A_FLAT)]
    assert types == ["balance_warning_1", "balance_warning_1.cleared"]
    (status,) = [s for s in checker.accounts() if s.account == "flat"]
    assert status.days_left == D("11.5")  # 115 / 10 a day


async def test_local_meter_balance_cross_checked_against_the_ledger(
    spool: Spool, tmp_path: Path
) -> None:
    cfg = config(tmp_path / "spool.sqlite")
    checker = Checker(cfg, spool, ManualClock(DAY0))
    await spool.write_readings(days_of(A_LOCAL, "10", 3))  # 30 at 12-29, -5 a day
    # The meter agrees (within 1.00) on 12-30, and has lost its balance on 12-31.
    await spool.write_readings(
        balance_reading(A_LOCAL, DAY0 + dt.timedelta(days=1, minutes=8), "25.60")
    )
    await spool.write_readings(
        balance_reading(A_LOCAL, DAY0 + dt.timedelta(days=2, minutes=8), "0", "1.20")
    )
    await run(checker, DAY0 + dt.timedelta(days=2, hours=1))
    found = [a for a in await spool.alarms(meter=A_LOCAL) if a.type == "balance_divergence"]
    assert len(found) == 1
    evidence = found[0].details["evidence"]
    assert isinstance(evidence, dict)
    assert (evidence["meter_balance"], evidence["ledger_balance"]) == (D("-1.20"), D("20.0"))


def _full_average(journal: list[PostedEntry], at: dt.datetime, days: int) -> Decimal | None:
    """The average daily cost over the full journal entries, details and all."""
    cost, spanned = Decimal(0), Decimal(0)
    for p in journal:
        e = p.entry
        if e.kind is BalanceKind.CONSUMPTION and at - dt.timedelta(days=days) < e.entry_time <= at:
            cost -= e.amount
            span = e.details["days"]
            assert isinstance(span, Decimal)
            spanned += span
    return cost / spanned if spanned > 0 else None


async def test_compact_entries_judge_as_the_full_journal(spool: Spool, tmp_path: Path) -> None:
    top_up = {"id": "T-1", "at": (DAY0 + dt.timedelta(days=3, hours=10)).isoformat(),
              "amount": "100"}  # fmt: skip
    cfg = config(tmp_path / "spool.sqlite", top_ups=[top_up])
    await spool.write_readings(
        days_of(A_FLAT, "20", 6) + days_of(A_TOU, "8", 6, periods=True) + days_of(A_TIER, "40", 6)
    )
    when = DAY0 + dt.timedelta(days=5, hours=9)
    checker = Checker(cfg, spool, ManualClock(DAY0))
    await run(checker, when)
    # A restarted checker loads the same compact entries the first one posted.
    restarted = Checker(cfg, spool, ManualClock(DAY0))
    await run(restarted, when + dt.timedelta(hours=1))
    for account in ("flat", "tou", "tiered"):
        journal = await ChecksStore(spool).balance_entries(account)
        expected = [(p.entry.entry_time, p.entry.kind, p.entry.ref, p.balance) for p in journal]
        for c in (checker, restarted):
            book = c.ledgers.books[account]
            assert [(x.time, x.kind, x.ref, x.balance) for x in book.entries] == expected
            assert book.balance == journal[-1].balance
            for p in journal:
                t = p.entry.entry_time
                for days in (1, 2, 30):
                    assert book.average_daily_cost(t, days) == _full_average(journal, t, days)
                found = book.balance_at(t + dt.timedelta(hours=1))
                last = [q for q in journal if q.entry.entry_time <= t + dt.timedelta(hours=1)][-1]
                assert found is not None
                assert (found.ref, found.balance) == (last.entry.ref, last.balance)
    flat = checker.ledgers.books["flat"]
    assert flat.refs == {(BalanceKind.OPENING, "opening"), (BalanceKind.TOP_UP, "T-1")}
    # 60 + 100 - 5 days x 20 kWh x 0.5 = 110; 10 a day over the last two days
    assert flat.balance == D(110)
    assert flat.average_daily_cost(when, 2) == D(10)
