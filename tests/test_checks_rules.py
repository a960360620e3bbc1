"""Each edge rule at and around every threshold, on hand-made histories.

A rule reports observations that *change* its verdict (holds are never reported), so for a pair
of reads the verdict is the state of its one observation, or "hold" when there is none.
The helpers here are shared with the other ``test_checks_*`` modules.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.checks import Context, Finding, MeterHistory, State, history_of
from gateway.checks.context import districts
from gateway.checks.rules_collection import archive, collection_rate, missed_reading
from gateway.checks.rules_energy import (
    above_physical_max,
    consumption_jump,
    deviation,
    meter_stopped,
    physical_max_kwh,
    register_decreased,
    reverse_energy,
)
from gateway.checks.rules_state import (
    battery,
    clock_deviation,
    covers,
    power_down,
    relay,
    voltage,
)
from gateway.config import ChecksConfig, Config, MeterConfig
from spool import Event, Quality, ReadingKind, ScanRow

ZONE = ZoneInfo("Asia/Shanghai")
T0 = dt.datetime(2025, 6, 1, tzinfo=ZONE)
METER = "000000000001"
_IDS = itertools.count(1)


def at(day: float = 0, hour: float = 0, minute: float = 0) -> dt.datetime:
    return T0 + dt.timedelta(days=day, hours=hour, minutes=minute)


def D(x: str | int) -> Decimal:
    return Decimal(str(x))


def row(
    kind: ReadingKind,
    time: dt.datetime,
    *,
    meter: str = METER,
    quality: Quality = Quality.OK,
    read: dt.datetime | None = None,
    di: str = "00000000",
    **values: Any,
) -> ScanRow:
    return ScanRow(
        next(_IDS), meter, di, kind, time, read or time + dt.timedelta(minutes=5), quality, values
    )


def frozen(
    day: int, total: str | Decimal, *, reverse: str | None = None, **kw: Any
) -> list[ScanRow]:
    """A verified daily frozen value at local midnight of day ``day`` (and its reverse DI)."""
    out = [row(ReadingKind.DAILY_FROZEN, at(day), forward_active_total=D(total), **kw)]
    if reverse is not None:
        out.append(row(ReadingKind.DAILY_FROZEN, at(day), reverse_active_total=D(reverse), **kw))
    return out


def snap(time: dt.datetime, **values: Any) -> ScanRow:
    return row(ReadingKind.REALTIME, time, **{k: _dec(v) for k, v in values.items()})


def _dec(v: Any) -> Any:
    return D(v) if isinstance(v, str | int) and not isinstance(v, bool) else v


def hist(*rows: ScanRow | list[ScanRow], meter: str = METER) -> MeterHistory:
    flat: list[ScanRow] = []
    for r in rows:
        flat.extend(r if isinstance(r, list) else [r])
    return history_of(meter, flat)


def meter_cfg(address: str = METER, **kw: Any) -> MeterConfig:
    return MeterConfig(address=address, bus="b", **kw)


def checks(**tables: Any) -> ChecksConfig:
    return ChecksConfig.model_validate(tables)


def ctx(
    now: dt.datetime | None = None,
    settings: ChecksConfig | None = None,
    since: dt.datetime | None = None,
    meters: Sequence[str] = (METER,),
) -> Context:
    now = now or at(40)
    settings = settings or ChecksConfig()
    watched = since or at(-100)
    return Context(
        now,
        ZONE,
        settings,
        dict.fromkeys(meters, watched),
        now - dt.timedelta(days=settings.history_days),
    )


def only(findings: list[Finding], type_: str) -> Finding | None:
    hits = [f for f in findings if f.type == type_]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def verdicts(findings: list[Finding], type_: str) -> list[str]:
    """The reported states of one type in time order ('abnormal', 'normal')."""
    f = only(findings, type_)
    return [] if f is None else [o.state.value for o in f.observations]


def verdict(findings: list[Finding], type_: str) -> str:
    """The single verdict of a one-pair history, 'hold' when nothing was reported."""
    v = verdicts(findings, type_)
    assert len(v) <= 1, v
    return v[0] if v else "hold"


# -- 示度下降 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("100.00", "99.99", "abnormal"),
        ("100.00", "100.00", "normal"),
        ("100.00", "100.01", "normal"),
    ],
)
def test_register_decreased_frozen(before: str, after: str, expected: str) -> None:
    h = hist(frozen(0, before), frozen(1, after))
    assert verdict(register_decreased(h, meter_cfg(), ctx()), "register_decreased") == expected


def test_register_decreased_ignores_unverified_frozen_values() -> None:
    h = hist(frozen(0, "100"), frozen(1, "50", quality=Quality.UNVERIFIED), frozen(2, "101"))
    assert verdicts(register_decreased(h, meter_cfg(), ctx()), "register_decreased") == ["normal"]


def test_register_decreased_real_time_step_is_one_episode_not_two() -> None:
    # The same step back is seen by the hourly reads and by the next frozen value: the frozen
    # day holds real-time reads, so only the real-time observation speaks.
    h = hist(
        frozen(0, "100"),
        snap(at(0, 22), forward_active_total="110"),
        snap(at(0, 23), forward_active_total="60"),
        frozen(1, "61"),
    )
    f = only(register_decreased(h, meter_cfg(), ctx()), "register_decreased")
    assert f is not None
    assert [(o.state, o.at, o.since) for o in f.observations] == [
        (State.ABNORMAL, at(0, 23), at(0, 22))
    ]


# -- 停走 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("power_kw", "minutes", "after", "expected"),
    [
        ("0.16", 15, "100.00", "abnormal"),  # 0.16 kW x 15 min = 0.04 kWh: at the threshold
        ("0.15", 15, "100.00", "hold"),  # 0.0375 kWh < 0.04: not judged
        ("0.16", 15, "100.01", "normal"),  # it moved
        ("0.50", 14, "100.00", "hold"),  # shorter than the 15-minute window
        ("0.00", 60, "100.00", "hold"),  # no load
    ],
)
def test_meter_stopped_real_time(power_kw: str, minutes: int, after: str, expected: str) -> None:
    h = hist(
        snap(at(1, 10), forward_active_total="100.00", active_power_total=power_kw),
        snap(at(1, 10, minutes), forward_active_total=after, active_power_total=power_kw),
    )
    assert verdict(meter_stopped(h, meter_cfg(), ctx()), "meter_stopped") == expected


def test_meter_stopped_takes_the_smaller_end_power() -> None:
    # Load switched off right after the first read: the second read shows no power.
    h = hist(
        snap(at(1, 10), forward_active_total="100.00", active_power_total="2.0"),
        snap(at(1, 11), forward_active_total="100.00", active_power_total="0.0"),
    )
    assert verdict(meter_stopped(h, meter_cfg(), ctx()), "meter_stopped") == "hold"


def test_meter_stopped_frozen_day_with_a_day_of_power_snapshots() -> None:
    reads = [
        snap(at(0, h), active_power_total="0.5", forward_active_total="100.00") for h in range(25)
    ]
    h = hist(frozen(0, "100.00"), frozen(1, "100.00"), *reads)
    # The real-time reads cover the day, so they speak: one stopped episode from the first pair.
    f = only(
        meter_stopped(h, meter_cfg(), ctx(settings=checks(realtime_history_h=30))), "meter_stopped"
    )
    assert f is not None
    assert [o.state for o in f.observations] == [State.ABNORMAL]
    assert f.observations[0].at == at(0, 1)


def test_meter_stopped_frozen_pair_judged_from_power_when_real_time_has_no_energy() -> None:
    reads = [snap(at(0, h), active_power_total="0.5") for h in range(25)]
    h = hist(frozen(0, "100.00"), frozen(1, "100.00"), *reads)
    found = meter_stopped(h, meter_cfg(), ctx())
    assert verdict(found, "meter_stopped") == "abnormal"
    assert only(found, "meter_stopped").observations[0].details()["source"] == "daily_frozen"  # type: ignore[union-attr]


# -- 超差 / 飞走 --------------------------------------------------------------------------------


def _ratio_history(ratio: str, power: str = "1.0", hours: float = 1) -> MeterHistory:
    expected = D(power) * D(str(hours))
    return hist(
        snap(at(1, 10), forward_active_total="100.00", active_power_total=power),
        snap(
            at(1, 10 + hours),
            forward_active_total=str(D("100.00") + expected * D(ratio)),
            active_power_total=power,
        ),
    )


@pytest.mark.parametrize(
    ("ratio", "over", "fast"),
    [
        ("1.0", "normal", "normal"),
        ("2.0", "normal", "normal"),  # at the over clear ratio
        ("2.01", "hold", "normal"),
        ("4.0", "hold", "normal"),  # at the over ratio: not above it
        ("4.01", "abnormal", "hold"),
        ("6.0", "abnormal", "hold"),  # at the fast ratio
        ("6.01", "abnormal", "abnormal"),
    ],
)
def test_deviation_thresholds(ratio: str, over: str, fast: str) -> None:
    found = deviation(_ratio_history(ratio), meter_cfg(), ctx())
    assert (verdict(found, "over_deviation"), verdict(found, "running_fast")) == (over, fast)


@pytest.mark.parametrize(("power", "expected"), [("0.01", "hold"), ("0.011", "abnormal")])
def test_deviation_skipped_at_or_below_min_expected(power: str, expected: str) -> None:
    assert (
        verdict(deviation(_ratio_history("10", power), meter_cfg(), ctx()), "running_fast")
        == expected
    )


def test_deviation_hysteresis_keeps_one_episode_through_the_band() -> None:
    rows = []
    total = D("100")
    for i, ratio in enumerate(["1", "4.5", "3.0", "5.0", "2.5", "1.9", "1.0"]):
        rows.append(snap(at(1, i), forward_active_total=str(total), active_power_total="1"))
        total += D(ratio)
    rows.append(snap(at(1, 7), forward_active_total=str(total), active_power_total="1"))
    f = only(deviation(hist(*rows), meter_cfg(), ctx()), "over_deviation")
    assert f is not None
    assert [(o.state, o.at) for o in f.observations] == [
        (State.NORMAL, at(1, 1)),
        (State.ABNORMAL, at(1, 2)),
        (State.NORMAL, at(1, 6)),
    ]


# -- physical maximum --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phases", "wiring", "un", "imax", "limit"),
    [
        (1, None, "220", "60", "316.8"),  # 220 V x 60 A x 24 h
        (3, "four_wire", "220", "10", "158.4"),  # x 3
        (3, None, "220", "10", "158.4"),  # a three-phase meter defaults to four-wire
        (3, "three_wire", "100", "1.5", "6.23538290724795826"),  # x sqrt 3
    ],
)
def test_physical_maximum(phases: int, wiring: str | None, un: str, imax: str, limit: str) -> None:
    m = meter_cfg(
        phases=phases, wiring=wiring, rated_voltage=un, basic_current="1", max_current=imax
    )
    lim = physical_max_kwh(m)
    assert abs(lim - D(limit)) < D("1e-12")
    register = lim.quantize(D("0.01"), ROUND_FLOOR)  # registers count hundredths of a kWh
    for energy, expected in ((register, "normal"), (register + D("0.01"), "abnormal")):
        h = hist(frozen(0, "1000"), frozen(1, D(1000) + energy))
        assert verdict(above_physical_max(h, m, ctx()), "above_physical_max") == expected


# -- abnormal jump -----------------------------------------------------------------------------


def _days(*energies: str) -> MeterHistory:
    total = D("1000")
    rows = [frozen(0, total)]
    for i, e in enumerate(energies, start=1):
        total += D(e)
        rows.append(frozen(i, total))
    return hist(*rows)


@pytest.mark.parametrize(
    ("last", "expected"),
    [("50", "normal"), ("50.01", "abnormal"), ("0.9", "normal")],
)
def test_consumption_jump_factor(last: str, expected: str) -> None:
    # Seven days of 10 kWh (the minimum history), then the day judged: 5 x median = 50.
    found = consumption_jump(_days(*["10"] * 7, last), meter_cfg(), ctx())
    assert verdict(found, "consumption_jump") == expected


def test_consumption_jump_needs_the_minimum_history_and_min_kwh() -> None:
    assert (
        verdicts(
            consumption_jump(_days(*["10"] * 6, "500"), meter_cfg(), ctx()), "consumption_jump"
        )
        == []
    )
    tiny = consumption_jump(_days(*["0.1"] * 7, "0.99"), meter_cfg(), ctx())
    assert "abnormal" not in verdicts(tiny, "consumption_jump")
    over = consumption_jump(_days(*["0.1"] * 7, "1.0"), meter_cfg(), ctx())
    assert verdicts(over, "consumption_jump")[-1] == "abnormal"


def test_consumption_jump_median_leaves_out_days_that_went_negative() -> None:
    found = consumption_jump(_days(*["10"] * 7, "-30", "50.01"), meter_cfg(), ctx())
    assert verdicts(found, "consumption_jump")[-1] == "abnormal"


# -- reverse energy ----------------------------------------------------------------------------


@pytest.mark.parametrize(("after", "expected"), [("5.01", "abnormal"), ("5.00", "normal")])
def test_reverse_register_rising(after: str, expected: str) -> None:
    h = hist(frozen(0, "100", reverse="5.00"), frozen(1, "110", reverse=after))
    assert verdict(reverse_energy(h, meter_cfg(), ctx()), "reverse_energy") == expected


def test_reverse_direction_bit_and_master_meters() -> None:
    h = hist(
        row(ReadingKind.STATUS, at(1), active_power_reverse=False),
        row(ReadingKind.STATUS, at(2), active_power_reverse=True),
        row(ReadingKind.STATUS, at(3), active_power_reverse=False),
    )
    assert verdicts(reverse_energy(h, meter_cfg(), ctx()), "reverse_energy") == [
        "normal",
        "abnormal",
        "normal",
    ]
    assert reverse_energy(h, meter_cfg(role="master"), ctx()) == []


# -- clock ---------------------------------------------------------------------------------------


def clock(time: dt.datetime, drift: int) -> ScanRow:
    wall = time.replace(tzinfo=None)
    return row(
        ReadingKind.CLOCK,
        time,
        meter_time=str(wall + dt.timedelta(seconds=drift)),
        gateway_time=str(wall),
        drift=drift,
    )


@pytest.mark.parametrize(
    ("drift", "expected"),
    [(299, "normal"), (300, "abnormal"), (-300, "abnormal"), (-299, "normal")],
)
def test_clock_threshold(drift: int, expected: str) -> None:
    found = clock_deviation(hist(clock(at(1, 10), drift)), meter_cfg(), ctx())
    assert verdict(found, "clock_deviation") == expected


@pytest.mark.parametrize(
    ("time", "drift", "expected"),
    [
        (at(1, 23, 54), 0, "normal"),
        (at(1, 23, 55), 400, "hold"),  # gateway clock in the quiet minutes
        (at(1, 0, 4), 400, "hold"),
        (at(1, 0, 5), 400, "abnormal"),  # the window ends at 00:05
        (at(1, 23, 50), 400, "hold"),  # the meter reads 23:56:40
        (at(1, 0, 10), -400, "hold"),  # the meter reads 00:03:20
    ],
)
def test_clock_skipped_around_midnight(time: dt.datetime, drift: int, expected: str) -> None:
    found = clock_deviation(hist(clock(time, drift)), meter_cfg(), ctx())
    assert verdict(found, "clock_deviation") == expected


def test_clock_clears_when_back_inside_and_clear_s_widens_the_band() -> None:
    series = [clock(at(d, 10), drift) for d, drift in enumerate([0, 400, 280, 100])]
    assert verdicts(clock_deviation(hist(*series), meter_cfg(), ctx()), "clock_deviation") == [
        "normal",
        "abnormal",
        "normal",
    ]
    tight = ctx(settings=checks(clock={"clear_s": 200}))
    f = only(clock_deviation(hist(*series), meter_cfg(), tight), "clock_deviation")
    assert f is not None
    assert [(o.state, o.at) for o in f.observations][-1] == (State.NORMAL, at(3, 10))


# -- voltage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volts", "amps", "loss", "failure", "over"),
    [
        ("220.0", "1.000", "normal", "normal", "normal"),
        ("171.7", "1.000", "hold", "hold", "normal"),  # 78 % of 220 is 171.6
        ("171.5", "1.000", "abnormal", "hold", "normal"),
        ("171.5", "0.025", "hold", "hold", "normal"),  # 0.5 % of Ib = 5 A is 0.025 A
        ("171.5", "0.026", "abnormal", "hold", "normal"),
        ("132.0", "0.000", "hold", "hold", "normal"),  # 60 % of 220: not below
        ("131.9", "0.000", "hold", "abnormal", "normal"),
        ("187.0", "1.000", "normal", "normal", "normal"),  # recovery at 85 %
        ("264.0", "1.000", "normal", "normal", "hold"),  # 120 %: not above
        ("264.1", "1.000", "normal", "normal", "abnormal"),
        ("253.0", "1.000", "normal", "normal", "normal"),  # 115 %: recovered
    ],
)
def test_voltage_thresholds(volts: str, amps: str, loss: str, failure: str, over: str) -> None:
    h = hist(snap(at(1, 10), voltage_a=volts, current_a=amps))
    found = voltage(h, meter_cfg(), ctx())
    got = tuple(verdict(found, t) for t in ("voltage_loss", "phase_failure", "overvoltage"))
    assert got == (loss, failure, over)


def test_voltage_any_phase_raises_all_phases_clear() -> None:
    m = meter_cfg(phases=3)
    rows = [
        snap(at(1, 1), voltage_a="220", voltage_b="150", voltage_c="220", current_b="2"),
        snap(at(1, 2), voltage_a="220", voltage_b="180", voltage_c="220", current_b="2"),
        snap(at(1, 3), voltage_a="220", voltage_b="200", voltage_c="186", current_b="2"),
        snap(at(1, 4), voltage_a="220", voltage_b="200", voltage_c="190", current_b="2"),
    ]
    assert verdicts(voltage(hist(*rows), m, ctx()), "voltage_loss") == ["abnormal", "normal"]
    f = only(voltage(hist(*rows), m, ctx()), "voltage_loss")
    assert f is not None
    assert f.observations[-1].at == at(1, 4)


# -- tamper ----------------------------------------------------------------------------------


def counters(day: int, **values: int) -> ScanRow:
    return row(ReadingKind.EVENT_COUNTER, at(day, 0, 6), **values)


def test_cover_counters() -> None:
    h = hist(
        counters(0, meter_cover_open_count=3, terminal_cover_open_count=0),
        counters(1, meter_cover_open_count=4, terminal_cover_open_count=0),
        counters(2, meter_cover_open_count=4, terminal_cover_open_count=1),
    )
    found = covers(h, meter_cfg(), ctx())
    assert verdicts(found, "meter_cover_opened") == ["abnormal", "normal"]
    assert verdicts(found, "terminal_cover_opened") == ["normal", "abnormal"]


@pytest.mark.parametrize(
    ("jump", "increase", "expected"),
    [(1, 1, "abnormal"), (2, 1, "normal"), (2, 2, "abnormal"), (1, 0, "normal")],
)
def test_power_down_jump(jump: int, increase: int, expected: str) -> None:
    h = hist(counters(0, power_down_count=5), counters(1, power_down_count=5 + increase))
    found = power_down(h, meter_cfg(), ctx(settings=checks(power_down={"jump": jump})))
    assert verdict(found, "power_down") == expected


@pytest.mark.parametrize(
    ("is_open", "commanded", "expected"),
    [
        (False, False, "normal"),
        (True, True, "normal"),
        (True, False, "abnormal"),
        (False, True, "abnormal"),
    ],
)
def test_relay_against_the_commanded_state(is_open: bool, commanded: bool, expected: str) -> None:
    h = hist(row(ReadingKind.STATUS, at(1), relay_open=is_open, relay_trip_commanded=commanded))
    assert verdict(relay(h, meter_cfg(), ctx()), "relay_mismatch") == expected


def test_clock_battery_low() -> None:
    h = hist(
        *(
            row(ReadingKind.STATUS, at(d), clock_battery_low=v)
            for d, v in enumerate([False, True, True, False])
        )
    )
    assert verdicts(battery(h, meter_cfg(), ctx()), "clock_battery_low") == [
        "normal",
        "abnormal",
        "normal",
    ]


# -- missed reading and collection rate -----------------------------------------------------


def test_missed_reading_deadline_and_late_arrival() -> None:
    now = at(3, 12)
    h = hist(
        frozen(0, "1", read=at(0, 5, 59)),  # read by the 06:00 deadline
        frozen(1, "2", read=at(1, 6, 1)),  # a minute late
        frozen(2, "3", quality=Quality.UNVERIFIED),  # not verified: missed
        # day 3: its deadline has passed too and nothing was read
    )
    found = missed_reading(h, meter_cfg(), ctx(now, since=at(-1, 7)))
    by_day = {
        f.observations[0].start: [(o.state.value, o.at) for o in f.observations] for f in found
    }
    assert all(f.keyed for f in found)
    assert by_day == {
        at(0): [("normal", at(0, 5, 59))],
        at(1): [("abnormal", at(1, 6)), ("normal", at(1, 6, 1))],
        at(2): [("abnormal", at(2, 6))],
        at(3): [("abnormal", at(3, 6))],
    }


def test_missed_reading_only_for_days_after_the_meter_was_watched() -> None:
    found = missed_reading(hist(), meter_cfg(), ctx(at(3, 12), since=at(2, 6)))
    assert [f.observations[0].start for f in found] == [at(3)]  # day 2's deadline = since
    assert missed_reading(None, meter_cfg(), ctx(at(3, 5, 59), since=at(2, 7))) == []


def test_missed_reading_1997_meter_register_read_that_day_counts() -> None:
    h = hist(
        row(
            ReadingKind.DAILY_FROZEN,
            at(1, 0, 7),
            quality=Quality.NOT_FROZEN,
            forward_active_total=D("5"),
        )
    )
    found = missed_reading(h, meter_cfg(edition="1997"), ctx(at(1, 12), since=at(0, 7)))
    assert [[o.state.value for o in f.observations] for f in found] == [["normal"]]


def _district_config(users: int) -> Config:
    meters = [{"address": f"{i:012d}", "bus": "b"} for i in range(1, users + 1)]
    meters.append({"address": "000000009001", "bus": "b", "role": "master"})
    bus = {"name": "b", "kind": "serial", "device": "/dev/null"}
    return Config.model_validate({"gateway": {"id": "g"}, "bus": [bus], "meter": meters})


def test_collection_rate_threshold_and_clear_when_back_filled() -> None:
    config = _district_config(49)  # 50 meters with the master: 49/50 = 0.98
    histories = {
        m.address: hist(frozen(1, "1", read=at(1, 1)), meter=m.address) for m in config.meter
    }
    c = ctx(at(1, 12), since=at(0, 7), meters=[m.address for m in config.meter])
    (district,) = districts(config)
    found, rates = collection_rate(district, histories, c)
    assert [r.rate for r in rates] == [D("1.0000")]
    assert [o.state.value for o in found[0].observations] == ["normal"]

    late = "000000000001"
    histories[late] = hist(frozen(1, "1", read=at(1, 7)), meter=late)
    found, rates = collection_rate(district, histories, c)
    assert (rates[0].rate, rates[0].missing) == (D("0.9800"), [late])
    assert [o.state.value for o in found[0].observations] == ["normal"]  # 0.98 is enough

    histories[late] = hist(meter=late)
    histories["000000000002"] = hist(meter="000000000002")
    found, rates = collection_rate(district, histories, c)
    assert rates[0].rate == D("0.9600")
    assert found[0].meter == "000000009001"
    assert found[0].keyed
    assert [o.state.value for o in found[0].observations] == ["abnormal"]

    histories["000000000002"] = hist(frozen(1, "1", read=at(1, 9)), meter="000000000002")
    found, _ = collection_rate(district, histories, c)
    assert [(o.state.value, o.at) for o in found[0].observations] == [
        ("abnormal", at(1, 6)),
        ("normal", at(1, 9)),
    ]


# -- archive ---------------------------------------------------------------------------------


def test_archive_unknown_addresses_and_meters_never_seen() -> None:
    config = _district_config(2)
    stranger = "999999999999"
    histories = {
        "000000000001": hist(frozen(1, "1"), meter="000000000001"),
        stranger: hist(frozen(1, "1"), meter=stranger),
    }
    reports = [Event("plc", "unknown_meter", "888888888888", at(1, 3))]
    c = ctx(at(2), since=at(0), meters=[m.address for m in config.meter])
    found = archive(config, histories, reports, c)
    unknown = {
        f.meter: f
        for f in found
        if f.type == "unknown_meter" and f.observations[0].state is State.ABNORMAL
    }
    assert set(unknown) == {stranger, "888888888888"}
    not_seen = {f.meter: f.observations[0].state.value for f in found if f.type == "meter_not_seen"}
    assert not_seen == {
        "000000000001": "normal",
        "000000000002": "abnormal",
        "000000009001": "abnormal",
    }
    # Within the grace period nothing is said of a meter not seen yet.
    young = archive(config, histories, [], ctx(at(0, 23), since=at(0), meters=["000000000002"]))
    assert "000000000002" not in {f.meter for f in young if f.type == "meter_not_seen"}
