"""The [checks], [[tariff]] and [[account]] tables: defaults, the shipped example, and exact
messages for what is wrong; and the checker's run loop and its place in the daemon."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.clock import ManualClock
from gateway.checks import Checker
from gateway.config import ConfigError, load_config, parse_config
from gateway.daemon import build
from spool import Quality, Reading, ReadingKind, ReadingValue, Spool

from .test_checks_rules import at

ROOT = Path(__file__).resolve().parents[1]
BASE = """
[gateway]
id = "gw1"
[[bus]]
name = "b"
device = "/dev/ttyS1"
[[meter]]
address = "000000000001"
bus = "b"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "amigw.toml")
    return info.value.lines()


def test_defaults_are_the_issues_thresholds() -> None:
    c = parse_config(BASE).checks
    assert c.missed_reading.deadline_time == dt.time(6, 0)
    assert c.meter_stopped.min_expected_kwh == Decimal("0.04")
    assert c.meter_stopped.realtime_window_s == 900
    assert c.meter_stopped.frozen_window_days == 1
    assert (c.deviation.over_ratio, c.deviation.fast_ratio) == (Decimal("4.0"), Decimal("6.0"))
    assert c.deviation.min_expected_kwh == Decimal("0.01")
    assert (c.consumption_jump.factor, c.consumption_jump.window_days) == (Decimal(5), 30)
    assert (c.clock.threshold_s, c.clock.clear_below_s) == (300, 300)
    assert (c.clock.quiet_start, c.clock.quiet_end) == ("23:55", "00:05")
    v = c.voltage
    assert (v.loss_ratio, v.loss_current_ratio, v.failure_ratio, v.over_ratio) == (
        Decimal("0.78"), Decimal("0.005"), Decimal("0.60"), Decimal("1.20"),
    )  # fmt: skip
    assert (c.line_loss.completeness, c.line_loss.low, c.line_loss.high) == (
        Decimal("0.98"), Decimal("-0.01"), Decimal("0.10"),
    )  # fmt: skip
    assert (c.prepaid.warning_1, c.prepaid.warning_2) == (Decimal(50), Decimal(10))
    assert (c.cutoff.night_start, c.cutoff.night_end) == ("18:00", "08:00")
    assert c.collection_rate.min_rate == Decimal("0.98")


def test_the_shipped_example_documents_tariffs_and_accounts() -> None:
    config = load_config(ROOT / "etc" / "amigw.toml")
    assert {t.name: t.kind for t in config.tariff} == {
        "residential": "tiered",
        "commercial-tou": "tou",
    }
    (account,) = config.account
    assert (account.tariff, account.initial_balance) == ("residential", Decimal("100.00"))
    assert config.checks.enabled


BAD = [
    (
        "tariff shapes",
        '[[tariff]]\nname = "t"\nkind = "tiered"\nthresholds_kwh = ["200", "100"]\n'
        'prices = ["1", "2", "3"]\n[[tariff]]\nname = "u"\nkind = "tou"\nsharp = "1"\n'
        '[[tariff]]\nname = "v"\n',
        [
            "amigw.toml: tariff[0]: thresholds_kwh must be ascending and non-empty",
            "amigw.toml: tariff[1]: a tou tariff needs peak, flat, valley",
            "amigw.toml: tariff[2]: a flat tariff needs price",
        ],
    ),
    (
        "references",
        '[[tariff]]\nname = "t"\nprice = "1"\n[[account]]\nid = "A"\ntariff = "nope"\n'
        '[[meter]]\naddress = "000000000002"\nbus = "b"\nprepaid = "remote"\naccount = "B"\n'
        'tariff = "x"\n',
        [
            "amigw.toml: account[0].tariff: unknown tariff 'nope' (defined: t)",
            "amigw.toml: meter[1].tariff: unknown tariff 'x' (defined: t)",
            "amigw.toml: meter[1].account: prepaid meter 000000000002 names unknown account 'B'",
        ],
    ),
    (
        "bands",
        "[checks.deviation]\nover_ratio = 5\nfast_ratio = 4\nfast_clear_ratio = 3\n"
        "[checks.line_loss]\nlow = 0.2\n[checks.clock]\nquiet_start = '24:00'\n",
        [
            "amigw.toml: checks.deviation: fast_ratio (飞走) must not be below over_ratio (超差)",
            "amigw.toml: checks.clock.quiet_start: time of day must be HH:MM, got '24:00'",
            "amigw.toml: checks.line_loss: low must be below high",
        ],
    ),
    (
        "account top-ups",
        '[[tariff]]\nname = "t"\nprice = "1"\n[[account]]\nid = "A"\ntariff = "t"\n'
        "top_ups = [{id = 'x', at = 2025-01-01T00:00:00, amount = '5'}]\n",
        [
            "amigw.toml: account[0].top_ups[0].at: needs a UTC offset"
            " (meters keep local time; say which)"
        ],
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_tables_get_exact_messages(name: str, text: str, expected: list[str]) -> None:
    assert sorted(errors_of(BASE + text)) == sorted(expected)


async def _settle(checker: Checker, runs: int) -> None:
    """Let the loop work (the spool answers from its own thread) until ``runs`` runs, then a
    little longer, and check it stopped there."""
    for _ in range(500):
        if checker.statistics().runs >= runs:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert checker.statistics().runs == runs


async def test_run_loop_checks_after_writes_and_on_its_interval(tmp_path: Path) -> None:
    text = BASE + f'[spool]\npath = "{tmp_path / "s.sqlite"}"\n[checks]\ninterval_s = 600\n'
    config = parse_config(text)
    clock = ManualClock(at(1))
    async with Spool.connect(config.spool.path) as spool:
        checker = Checker(config, spool, clock)
        task = asyncio.create_task(checker.run())
        try:
            await _settle(checker, 1)
            clock.advance(30)  # a write wakes it, but not before min_interval_s (60 s)
            value = {"forward_active_total": ReadingValue(Decimal("1.00"), "kWh")}
            await spool.write_readings(
                [Reading("000000000001", "05060101", at(1), at(1), value, Quality.OK,
                         ReadingKind.DAILY_FROZEN, "b")]
            )  # fmt: skip
            await _settle(checker, 1)
            clock.advance(31)
            await _settle(checker, 2)
            clock.advance(600)  # nothing written: the interval alone brings the next run
            await _settle(checker, 3)
        finally:
            checker.stop()
            await asyncio.wait_for(task, 5)


async def test_the_daemon_runs_the_checks(tmp_path: Path) -> None:
    config = parse_config(BASE + f'[spool]\npath = "{tmp_path / "s.sqlite"}"\n')
    daemon = await build(config, ManualClock(at(1)))
    try:
        assert daemon.checker is not None
        assert daemon.checker.config is config
    finally:
        await daemon.spool.close()
