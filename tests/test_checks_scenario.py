"""The edge checks over a simulated district, collected for six and a half simulated days.

One meter per anomaly the simulator can inject (and a wrong-address meter for the archive, two
prepaid meters), eight healthy meters with noisy but normal consumption, and the master meter,
read by the real collector (hourly real-time snapshots) in memory under a manual clock, in
half-hour steps; the checker runs after every step. Every injected anomaly is raised exactly
once at its meter, in the right window, and cleared when it ends; nothing is raised on a
healthy meter; line loss equals the simulator's ground truth; prepaid balances equal a hand
calculation from the simulator's registers; and a restarted checker raises and clears nothing
again.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from drivers.clock import ManualClock
from gateway.checks import Checker
from gateway.checks import checker as checker_module
from gateway.checks import history as history_module
from gateway.collector.collector import Collector
from gateway.config import Config
from protocols.bcd import Address
from simulator.channel import MemoryChannel
from simulator.district import District
from simulator.scenario import build_district
from spool import CLEARED_SUFFIX, Alarm, ChecksStore, LineLossState, Spool

from .districts import config_text, scenario_from
from .test_checks_rules import ZONE

# One simulated week is collected once for the module; every test reads what it left.
pytestmark = pytest.mark.asyncio(loop_scope="module")

START = dt.datetime(2025, 6, 1, tzinfo=ZONE)
END = START + dt.timedelta(days=6, hours=12)
STEP = dt.timedelta(minutes=30)
HEALTHY = [f"00000000100{i}" for i in range(1, 9)]
MASTER = "000000009001"
PRICE = Decimal("0.5283")


def d(day: float, hour: float = 0, minute: float = 0) -> dt.datetime:
    return START + dt.timedelta(days=day, hours=hour, minutes=minute)


SCENARIO = f"""
name = "checks"
[simulation]
start = {START.isoformat()}
timezone = "Asia/Shanghai"
seed = 11
history_days = 10
[defaults]
bus = "rs485-1"
profile = "residential"
scale = [0.6, 1.8]
[[buses]]
name = "rs485-1"
baud = 9600
[master]
address = "{MASTER}"
bus = "rs485-1"
phases = 3
line_loss = 0.04
[[meter_groups]]
first_address = "000000001001"
count = 8
[[meter_groups]]
first_address = "000000002001"
count = 11
[[meters]]
address = "000000002012"
scale = 1.0
prepaid = {{ kind = "money", price = 0.5283, balance = 100.00 }}
[[meters]]
address = "000000002013"
prepaid = {{ kind = "money", price = 0.5283, balance = 500.00 }}
[[meters]]
address = "000000002014"
scale = 0.3

[[timeline]]
kind = "register_backwards"
meter = "000000002001"
start = "+1d14h30m"
kwh = 5
[[timeline]]
kind = "stopped"
meter = "000000002002"
start = "+1d10h"
end = "+2d10h"
[[timeline]]
kind = "fast"
meter = "000000002003"
start = "+2d"
end = "+4d"
factor = 10
[[timeline]]
kind = "fast"
meter = "000000002004"
start = "+2d"
end = "+4d"
factor = 4.5
[[timeline]]
kind = "reverse"
meter = "000000002005"
start = "+1d12h"
end = "+1d18h"
[[timeline]]
kind = "clock_drift"
meter = "000000002006"
start = "+1d14h"
offset_s = 400
[[timeline]]
kind = "clock_drift"
meter = "000000002006"
start = "+3d14h"
offset_s = -400
[[timeline]]
kind = "cover_open"
meter = "000000002007"
start = "+1d14h"
[[timeline]]
kind = "loss_of_voltage"
meter = "000000002008"
start = "+1d14h"
end = "+1d20h"
voltage_ratio = 0.70
[[timeline]]
kind = "power_down"
meter = "000000002009"
start = "+2d3h"
end = "+2d10h"
[[timeline]]
kind = "battery_low"
meter = "000000002010"
start = "+1d14h"
end = "+3d14h"
[[timeline]]
kind = "wrong_address"
meter = "000000002011"
address = "999999999999"
start = "+0h"
end = "+2d"
[[timeline]]
kind = "balance_out"
meter = "000000002013"
start = "+2d12h"
[[timeline]]
kind = "fast"
meter = "000000002014"
start = "+2d"
end = "+4d"
factor = 3
"""

REMOTE_OPENING = Decimal("18.00")
TOP_UP_AT = d(4, 10)


def gateway_config(spool: Path, district: District) -> Config:
    doc: dict[str, Any] = tomllib.loads(
        config_text(
            scenario_from(SCENARIO),
            spool,
            catch_up_days=10,
            collection={"realtime_interval_s": 3600},
        )
    )
    local = district.meters[Address("000000002013")].config.prepaid
    assert local is not None
    doc["tariff"] = [{"name": "flat", "kind": "flat", "price": str(PRICE)}]
    doc["account"] = [
        {"id": "remote", "tariff": "flat", "initial_balance": str(REMOTE_OPENING),
         "opened": START.isoformat(),
         "top_ups": [{"id": "T-1", "at": TOP_UP_AT.isoformat(), "amount": "100"}]},
        # The local meter's own balance opened at the warm-up start, when it froze first.
        {"id": "local", "tariff": "flat", "initial_balance": str(local.balance),
         "opened": (START - dt.timedelta(days=10)).isoformat()},
    ]  # fmt: skip
    for m in doc["meter"]:
        if m["address"] == "000000002012":
            m["account"] = "remote"
        if m["address"] == "000000002013":
            m.update(prepaid="local", account="local")
        if m["address"] == "000000002014":
            m.update(basic_current="0.5", max_current="1")  # 5.28 kWh a day at most
    return Config.model_validate(doc)


@dataclass
class Run:
    district: District
    spool: Spool
    config: Config
    checker: Checker
    alarms: list[Alarm]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("checks-scenario")
    clock = ManualClock(START)
    district = build_district(scenario_from(SCENARIO), clock)
    config = gateway_config(tmp / "spool.sqlite", district)
    spool = await Spool.open(config.spool.path)
    channels: dict[str, Any] = {b.name: MemoryChannel(district, b.name, clock) for b in config.bus}
    collector = Collector(config, spool, channels, clock)
    checker = Checker(config, spool, clock)
    planned = None
    try:
        while clock.now() < END:
            today = clock.now().astimezone(ZONE).date()
            if today != planned:  # as the collector's own planner does, once a day
                await collector.plan()
                planned = today
            for bus in channels:
                while await collector.collect_bus(bus):
                    pass
            await checker.run_once()
            clock.advance(STEP.total_seconds())
        yield Run(district, spool, config, checker, await spool.alarms())
    finally:
        await spool.close()


def _by_meter(alarms: list[Alarm]) -> dict[tuple[str, str], list[Alarm]]:
    out: dict[tuple[str, str], list[Alarm]] = defaultdict(list)
    for a in alarms:
        out[(a.meter, a.type)].append(a)
    return out


@dataclass(frozen=True)
class Expect:
    meter: str
    type: str
    first: tuple[dt.datetime, dt.datetime]  # the first abnormal observation falls in here
    cleared: tuple[dt.datetime, dt.datetime] | None  # the clear's time, or None: still active


DAILY_READ = (dt.timedelta(minutes=5), dt.timedelta(hours=1))


def daily_read(day: int) -> tuple[dt.datetime, dt.datetime]:
    return (d(day) + DAILY_READ[0], d(day) + DAILY_READ[1])


def hour(day: int, h: float) -> tuple[dt.datetime, dt.datetime]:
    return (d(day, h), d(day, h))


ANOMALIES = [
    Expect("000000002001", "register_decreased", (d(1, 14, 30), d(1, 15)), (d(1, 15), d(1, 16))),
    Expect("000000002002", "meter_stopped", (d(1, 10), d(1, 11)), (d(2, 10), d(2, 11))),
    Expect("000000002003", "running_fast", (d(2), d(2, 1)), (d(4), d(4, 1))),
    Expect("000000002003", "over_deviation", (d(2), d(2, 1)), (d(4), d(4, 1))),
    # day 2's energy is judged at day 3's freeze; day 4's (normal again) at day 5's
    Expect("000000002003", "consumption_jump", hour(3, 0), hour(5, 0)),
    Expect("000000002004", "over_deviation", (d(2), d(2, 12)), (d(4), d(4, 1))),
    Expect("000000002005", "reverse_energy", (d(1, 12), d(1, 13)), (d(1, 18), d(1, 19))),
    Expect("000000002006", "clock_deviation", daily_read(2), daily_read(4)),
    Expect("000000002007", "meter_cover_opened", daily_read(2), daily_read(3)),
    Expect("000000002008", "voltage_loss", (d(1, 14), d(1, 15)), (d(1, 20), d(1, 21))),
    Expect("000000002009", "power_down", daily_read(3), daily_read(4)),
    Expect("000000002010", "clock_battery_low", daily_read(2), daily_read(4)),
    Expect("000000002011", "meter_not_seen", (d(1), d(1, 0, 10)), (d(2), d(2, 2))),
    Expect("000000002013", "balance_divergence", daily_read(3), None),
    Expect("000000002014", "above_physical_max", hour(3, 0), hour(5, 0)),
]


def _check(alarm: Alarm, clears: dict[tuple[str, str, dt.datetime], Alarm], e: Expect) -> None:
    lo, hi = e.first
    assert lo <= alarm.window_end <= hi, (e, alarm)
    assert alarm.window_start <= alarm.window_end
    clear = clears.get((alarm.meter, alarm.type, alarm.window_start))
    if e.cleared is None:
        assert clear is None, (e, clear)
        return
    assert clear is not None, e
    lo, hi = e.cleared
    assert lo <= clear.window_end <= hi, (e, clear)


def _split(alarms: list[Alarm]) -> tuple[list[Alarm], dict[tuple[str, str, dt.datetime], Alarm]]:
    raises = [a for a in alarms if not a.type.endswith(CLEARED_SUFFIX)]
    clears = {
        (a.meter, a.type.removesuffix(CLEARED_SUFFIX), a.window_start): a
        for a in alarms
        if a.type.endswith(CLEARED_SUFFIX)
    }
    return raises, clears


async def test_every_anomaly_raised_once_and_cleared_when_it_ends(run: Run) -> None:
    raises, clears = _split(run.alarms)
    by = _by_meter(raises)
    for e in ANOMALIES:
        found = by.get((e.meter, e.type), [])
        assert len(found) == 1, (e, found)
        _check(found[0], clears, e)
    # The wrong-address meter missed days 0 and 1 (by 06:00), back-filled on day 2.
    missed = sorted(by[("000000002011", "missed_reading")], key=lambda a: a.window_start)
    assert [(a.window_start, a.window_end) for a in missed] == [(d(0), d(0, 6)), (d(1), d(1, 6))]
    for a in missed:
        _check(a, clears, Expect(a.meter, a.type, (a.window_end, a.window_end), (d(2), d(2, 2))))
    # ... which is the district's collection rate below 98 % on those days (22 of 23 meters).
    low = sorted(by[(MASTER, "collection_rate_low")], key=lambda a: a.window_start)
    assert [a.window_start for a in low] == [d(0), d(1)]
    assert low[0].details["evidence"]["rate"] == Decimal("0.9565")  # type: ignore[index]


async def test_nothing_raised_on_healthy_meters(run: Run) -> None:
    assert [a for a in run.alarms if a.meter in HEALTHY] == []


async def test_nothing_unexpected_anywhere(run: Run) -> None:
    raises, _ = _split(run.alarms)
    expected = {(e.meter, e.type) for e in ANOMALIES} | {
        ("000000002011", "missed_reading"),
        (MASTER, "collection_rate_low"),
        ("000000002012", "balance_warning_1"),
        ("000000002012", "balance_warning_2"),
        ("000000002012", "overdraft"),
        ("000000002012", "cutoff_recommended"),
    }
    unexpected = {(a.meter, a.type) for a in raises} - expected
    assert {t for m, t in unexpected if m == MASTER} <= {"line_loss_high", "line_loss_negative"}
    assert {(m, t) for m, t in unexpected if m != MASTER} == set()


def _ground_truth(district: District, day: dt.date) -> Decimal | None:
    def energy(address: str) -> Decimal | None:
        meter = district.meters[Address(address)]
        a, b = meter.frozen_record(day), meter.frozen_record(day + dt.timedelta(days=1))
        return None if a is None or b is None else b.forward_active[0] - a.forward_active[0]

    master = energy(MASTER)
    users = [energy(str(m.address)) for m in district.users]
    if master is None or any(u is None for u in users):
        return None
    total = sum((u for u in users if u is not None), Decimal(0))
    return ((master - total) / master).quantize(Decimal("0.000001"), ROUND_HALF_EVEN)


async def test_line_loss_equals_the_simulators_ground_truth(run: Run) -> None:
    results = await ChecksStore(run.spool).line_losses()
    complete = {r.day: r for r in results if r.state is LineLossState.COMPLETE}
    # Every day the checks watched, and every back-filled day whose meters all answered.
    assert set(complete) >= {(START + dt.timedelta(days=i)).date() for i in range(-8, 6)}
    for day, r in complete.items():
        assert r.users_read == r.users_total == 22
        assert r.rate == _ground_truth(run.district, day), day
    # Published on the events stream with its inputs.
    events = {e.event_time.date(): e for e in await run.spool.events(type="line_loss")}
    assert set(events) == set(complete)
    sample = events[d(2).date()].details
    assert sample["rate"] == complete[d(2).date()].rate
    assert len(sample["users"]) == 22  # type: ignore[arg-type]
    # Alarms follow the band day by day: one episode per run of days outside it.
    raises, _clears = _split(run.alarms)
    for kind, outside in (
        ("line_loss_high", lambda r: r > Decimal("0.10")),
        ("line_loss_negative", lambda r: r < Decimal("-0.01")),
    ):
        expected_starts = []
        inside = True
        for day in sorted(complete):
            rate = complete[day].rate
            assert rate is not None
            if outside(rate) and inside:
                expected_starts.append(dt.datetime.combine(day, dt.time(), ZONE))
            inside = not outside(rate)
        got = sorted(a.window_start for a in raises if a.meter == MASTER and a.type == kind)
        assert got == expected_starts, kind
    assert any(a.type == "line_loss_negative" for a in raises)  # the fast meters made sure


def _frozen_total(district: District, address: str, day: dt.datetime) -> Decimal:
    record = district.meters[Address(address)].frozen_record(day.date())
    assert record is not None
    return record.forward_active[0]


async def test_prepaid_balances_equal_a_hand_calculation(run: Run) -> None:
    store = ChecksStore(run.spool)
    last = d(6)
    remote = (
        REMOTE_OPENING
        + 100
        - (
            _frozen_total(run.district, "000000002012", last)
            - _frozen_total(run.district, "000000002012", d(0))
        )
        * PRICE
    )
    assert await store.balance("remote") == remote
    opened = START - dt.timedelta(days=10)
    local = (
        Decimal("500.00")
        - (
            _frozen_total(run.district, "000000002013", last)
            - _frozen_total(run.district, "000000002013", opened)
        )
        * PRICE
    )
    assert await store.balance("local") == local


async def test_warnings_and_cutoff_at_the_right_reading(run: Run) -> None:
    # The remote account's balance after each day's frozen value, by hand.
    balance = {0: REMOTE_OPENING}
    for day in range(1, 7):
        used = _frozen_total(run.district, "000000002012", d(day)) - _frozen_total(
            run.district, "000000002012", d(0)
        )
        balance[day] = REMOTE_OPENING - used * PRICE + (100 if d(day) >= TOP_UP_AT else 0)
    first_at = lambda limit: min(n for n in range(5) if balance[n] <= limit)  # noqa: E731
    overdrawn = min(n for n in range(5) if balance[n] < 0)
    assert overdrawn < 4, balance  # the scenario needs an overdraft before the top-up
    raises, clears = _split(run.alarms)
    by = _by_meter(raises)
    for kind, at_day in (
        ("balance_warning_1", first_at(Decimal(50))),
        ("balance_warning_2", first_at(Decimal(10))),
        ("overdraft", overdrawn),
    ):
        (alarm,) = by[("000000002012", kind)]
        assert alarm.window_end == d(at_day), kind
        _check(alarm, clears, Expect(alarm.meter, kind, hour(at_day, 0), (TOP_UP_AT, TOP_UP_AT)))
    # Recommended each morning from 08:00 while overdrawn, withdrawn at 18:00 (night) or by the
    # top-up; never between 18:00 and 08:00.
    cut = sorted(by[("000000002012", "cutoff_recommended")], key=lambda a: a.window_start)
    assert [a.window_start for a in cut] == [d(n, 8) for n in range(overdrawn, 5)]
    ends = [clears[(a.meter, a.type, a.window_start)].window_end for a in cut]
    assert ends == [d(n, 18) for n in range(overdrawn, 4)] + [TOP_UP_AT]


async def test_a_restarted_checker_raises_and_clears_nothing_again(run: Run) -> None:
    before = await run.spool.alarms()
    again = await run.checker.run_once()
    assert (again.raised, again.cleared, again.balance_entries) == (0, 0, 0)
    fresh = Checker(run.config, run.spool, run.checker.clock)
    report = await fresh.run_once()
    assert (report.raised, report.cleared, report.balance_entries, report.line_loss) == (0, 0, 0, 0)
    assert await run.spool.alarms() == before
    stats = run.checker.statistics()
    assert stats.raised["over_deviation"] == 2
    assert stats.active == len(await ChecksStore(run.spool).active_alarms())


async def test_meters_judged_in_chunks_decide_as_all_at_once(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every meter judged from cold against no stored alarms, so every anomaly is raised again.
    checker = run.checker
    now = checker.clock.now()
    decided = dict(checker._decided)
    outcomes = []
    try:
        for size in (1, 7, 10_000):
            monkeypatch.setattr(checker_module, "_METER_CHUNK", size)
            checker._decided.clear()
            ev = await checker.evaluate(now, [])
            outcomes.append((ev.findings, ev.decided.raises, ev.decided.clears, ev.judged))
    finally:
        checker._decided.update(decided)
    assert outcomes[0] == outcomes[1] == outcomes[2]
    raised = {(a.meter, a.type) for a in outcomes[0][1]}
    assert ("000000002012", "overdraft") in raised
    assert len(outcomes[0][3]) == len(run.config.meter)


async def _cold_evaluation(run: Run, now: dt.datetime) -> tuple[Any, ...]:
    """A fresh checker's judgement of every meter at ``now`` against no stored alarms."""
    checker = Checker(run.config, run.spool, run.checker.clock)
    await checker._load(now)
    checker._losses.clear()  # every day's line loss computed again, not read back
    await checker.cache.refresh(now)
    ev = await checker.evaluate(now, [])
    return ev.findings, ev.decided.raises, ev.decided.clears, ev.rates, ev.losses, ev.judged


async def test_history_read_back_from_the_spool_judges_as_history_held_in_memory(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Daily frozen values and counters stay in the spool and are read back per chunk of
    # meters; held in memory instead (as every kind once was), every day judges the same.
    nows = [d(n, 12) for n in (2, 4, 6)]
    monkeypatch.setattr(checker_module, "_METER_CHUNK", 7)
    from_spool = [await _cold_evaluation(run, now) for now in nows]
    monkeypatch.setattr(history_module, "LONG", frozenset())
    held = [await _cold_evaluation(run, now) for now in nows]
    assert from_spool == held
    assert all(e[0] for e in held)  # findings
    assert any(e[1] for e in held)  # raises
    assert any(e[4] for e in held)  # line loss
