"""The virtual meter as a model: what it answers for every DI family, how its energy, freezes,
clock, relay and prepaid registers evolve under an injected clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.clock import ManualClock
from protocols.bcd import Address
from protocols.dlt645 import (
    ABSENT,
    BroadcastTime,
    Control,
    Direction,
    Edition,
    ErrorResponse,
    ErrorWord,
    Frame,
    Message,
    ReadAddressRequest,
    ReadAddressResponse,
    ReadRequest,
    ReadResponse,
    RelayCommand,
    RelayControl,
    decode_frame,
    decode_message,
    encode_frame,
)
from simulator.config import MeterConfig, PrepaidConfig
from simulator.meter import VirtualMeter
from simulator.profile import LoadProfile, MeterLoad
from simulator.tariff import STANDARD_TOU
from simulator.timebase import Zone

TZ = ZoneInfo("Asia/Shanghai")
ADDR = Address.parse("000000000001")
V7, V97 = Edition.V2007, Edition.V1997
FAR = dt.datetime(2099, 12, 30)


def make_meter(
    clock: ManualClock,
    *,
    profile: LoadProfile | None = None,
    address: Address = ADDR,
    **config: Any,
) -> VirtualMeter:
    cfg = MeterConfig(address, **config)
    load = MeterLoad(profile or LoadProfile.constant("1.2"), Zone(), seed=7)
    return VirtualMeter(cfg, clock, load, start=clock.now())


def wire(meter: VirtualMeter, frame: Frame) -> Message | None:
    """Send ``frame`` and take the reply apart from its wire bytes, as a gateway would."""
    reply = meter.handle(frame)
    if reply is None:
        return None
    return decode_message(decode_frame(encode_frame(reply)))


def read(meter: VirtualMeter, di: int, edition: Edition = V7) -> Message | None:
    return wire(meter, ReadRequest(meter.address, di, edition).to_frame())


def values(meter: VirtualMeter, di: int, edition: Edition = V7) -> dict[str, Any]:
    msg = read(meter, di, edition)
    assert isinstance(msg, ReadResponse), f"{di:08X}: {msg}"
    assert msg.di == di
    decoded = msg.decode()
    assert decoded is not None
    assert decoded.extra == b""
    return decoded.as_dict()


def error_of(meter: VirtualMeter, di: int, edition: Edition = V7) -> int:
    msg = read(meter, di, edition)
    assert isinstance(msg, ErrorResponse), f"{di:08X}: {msg}"
    return msg.error


# --- every DI family, 2007 ------------------------------------------------------------------------


@pytest.fixture
def busy_meter() -> VirtualMeter:
    """A three-phase prepaid meter that has lived through a settlement day and a few freezes."""
    clock = ManualClock(dt.datetime(2024, 3, 9, 8, 0, tzinfo=TZ))
    meter = make_meter(
        clock,
        profile=LoadProfile(noise=Decimal("0.2")),
        phases=3,
        initial_kwh=Decimal("1234.56"),
        initial_reverse_kwh=Decimal("3.21"),
        settlement_day=11,
        prepaid=PrepaidConfig("money", Decimal("0.50"), Decimal("500.00")),
    )
    clock.advance(3 * 86400 + 5 * 3600 + 17)
    return meter


def _tariffs(name: str, values: tuple[Decimal, ...]) -> dict[str, Decimal]:
    return {
        f"{name}_{t}": v
        for t, v in zip(("total", "sharp", "peak", "flat", "valley"), values, strict=True)
    }


def _demand(name: str, m: VirtualMeter, period: int = 0) -> dict[str, Any]:
    regs = m.registers() if period == 0 else m.settlement_record(period).registers  # type: ignore[union-attr]
    return {
        f"{name}_{t}": (d.kw, ABSENT if d.at is None else d.at)
        for t, d in zip(
            ("total", "sharp", "peak", "flat", "valley"), regs.forward_demand, strict=True
        )
    }


def _inst(*names: str) -> Callable[[VirtualMeter], dict[str, Any]]:
    return lambda m: {n: m.instant().values()[n] for n in names}


CASES_2007: list[tuple[int, Callable[[VirtualMeter], dict[str, Any]]]] = [
    # current energies, single values and blocks
    (0x00010000, lambda m: {"forward_active_total": m.registers().forward_active[0]}),
    (0x00010300, lambda m: {"forward_active_flat": m.registers().forward_active[3]}),
    (0x0001FF00, lambda m: _tariffs("forward_active", m.registers().forward_active)),
    (0x0002FF00, lambda m: _tariffs("reverse_active", m.registers().reverse_active)),
    (0x0000FF00, lambda m: _tariffs("combined_active", m.registers().combined_active)),
    (0x0003FF00, lambda m: _tariffs("combined_reactive_1", m.registers().combined_reactive_1)),
    (0x00050000, lambda m: {"reactive_q1_total": m.registers().reactive_q1[0]}),
    (0x0008FF00, lambda m: _tariffs("reactive_q4", m.registers().reactive_q4)),
    (0x00150000, lambda m: {"a_forward_active_total": m.registers().phase_forward[0]}),
    (0x003D0000, lambda m: {"c_forward_active_total": m.registers().phase_forward[2]}),
    # settlement periods
    (0x00010001, lambda m: {"forward_active_total": m.settlement_record(1).forward_active[0]}),  # type: ignore[union-attr]
    (0x0001FF01, lambda m: _tariffs("forward_active", m.settlement_record(1).forward_active)),  # type: ignore[union-attr]
    # max demand, now and at the last settlement
    (0x0101FF00, lambda m: _demand("forward_active_max_demand", m)),
    (0x0101FF01, lambda m: _demand("forward_active_max_demand", m, 1)),
    # daily frozen records
    (0x05060001, lambda m: {"freeze_time": m.daily_record(1).freeze_time}),  # type: ignore[union-attr]
    (0x05060003, lambda m: {"freeze_time": m.daily_record(3).freeze_time}),  # type: ignore[union-attr]
    (0x05060101, lambda m: _tariffs("forward_active", m.daily_record(1).forward_active)),  # type: ignore[union-attr]
    (0x05060102, lambda m: _tariffs("forward_active", m.daily_record(2).forward_active)),  # type: ignore[union-attr]
    (0x05060201, lambda m: _tariffs("reverse_active", m.daily_record(1).reverse_active)),  # type: ignore[union-attr]
    (0x05060501, lambda m: _tariffs("reactive_q1", m.daily_record(1).registers.reactive_q1)),  # type: ignore[union-attr]
    # instantaneous variables
    (0x02010100, _inst("voltage_a")),
    (0x0201FF00, _inst("voltage_a", "voltage_b", "voltage_c")),
    (0x02020200, _inst("current_b")),
    (0x0202FF00, _inst("current_a", "current_b", "current_c")),
    (0x02030000, _inst("active_power_total")),
    (0x0203FF00, _inst("active_power_total", "active_power_a", "active_power_b", "active_power_c")),
    (0x02040000, _inst("reactive_power_total")),
    (0x02050000, _inst("apparent_power_total")),
    (0x0206FF00, _inst("power_factor_total", "power_factor_a", "power_factor_b", "power_factor_c")),
    (0x02070100, _inst("phase_angle_a")),
    (0x02800001, _inst("neutral_current")),
    (0x02800002, _inst("frequency")),
    (0x02800007, _inst("temperature")),
    (0x02800008, lambda m: {"clock_battery_voltage": Decimal("3.60")}),
    (0x0280000A, lambda m: {"clock_battery_minutes": m.battery_minutes()}),
    # events
    (
        0x03010000,
        lambda m: {f"loss_of_voltage_{p}_{w}": 0 for p in "abc" for w in ("count", "minutes")},
    ),
    (0x03110000, lambda m: {"power_down_count": 0}),
    (0x03300D00, lambda m: {"meter_cover_open_count": 0}),
    (0x03300E00, lambda m: {"terminal_cover_open_count": 0}),
    # parameters and status
    (
        0x04000101,
        lambda m: {"weekday": (m.now_local().weekday() + 1) % 7, "date": m.now_local().date()},
    ),
    (0x04000102, lambda m: {"time": m.now_local().time().replace(microsecond=0)}),
    (0x04000401, lambda m: {"comm_address": "000000000001"}),
    (0x04000402, lambda m: {"meter_number": "000000000001"}),
    (0x04000409, lambda m: {"active_constant": 1200}),
    (0x04000501, lambda m: {"status_word_1": m.status_word(1)}),
    (0x04000503, lambda m: {"status_word_3": m.status_word(3)}),
    (0x04000505, lambda m: {"status_word_5": m.status_word(5)}),
    (0x04000703, lambda m: {"baud_3": 2400}),
    (
        0x040007FF,
        lambda m: {f"baud_{n}": b for n, b in enumerate((1200, 1200, 2400, 2400, 2400), 1)},
    ),
    # prepaid
    (0x00900100, lambda m: {"remaining_energy": m.prepaid().remaining_energy}),  # type: ignore[union-attr]
    (0x00900101, lambda m: {"overdraft_energy": m.prepaid().overdraft_energy}),  # type: ignore[union-attr]
    (0x00900200, lambda m: {"remaining_amount": m.prepaid().remaining_amount}),  # type: ignore[union-attr]
    (0x00900201, lambda m: {"overdraft_amount": m.prepaid().overdraft_amount}),  # type: ignore[union-attr]
]


@pytest.mark.parametrize(("di", "expected"), CASES_2007, ids=[f"{di:08X}" for di, _ in CASES_2007])
def test_each_2007_family_answers_the_modelled_value(
    busy_meter: VirtualMeter, di: int, expected: Callable[[VirtualMeter], dict[str, Any]]
) -> None:
    assert values(busy_meter, di) == expected(busy_meter)


def test_the_busy_meter_really_has_history(busy_meter: VirtualMeter) -> None:
    # Guards the table above against comparing absent records with absent records.
    assert busy_meter.daily_record(3) is not None
    record = busy_meter.settlement_record(1)
    assert record is not None
    assert record.day == dt.date(2024, 3, 11)
    assert busy_meter.registers().forward_active[0] > record.forward_active[0] > Decimal("1234.56")
    assert busy_meter.registers().reverse_active[0] == Decimal("3.21")
    assert busy_meter.prepaid().remaining_amount < Decimal("500.00")  # type: ignore[union-attr]


def test_instantaneous_values_agree_with_the_load() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 9, 12, 0, tzinfo=TZ))
    meter = make_meter(clock, profile=LoadProfile.constant("2.2"))
    v = values(meter, 0x0201FF00) | values(meter, 0x0202FF00) | values(meter, 0x02030000)
    assert v["voltage_b"] is ABSENT
    assert v["current_c"] is ABSENT
    assert abs(v["voltage_a"] - Decimal(220)) <= Decimal("3.3")  # +-1.5 % jitter
    assert abs(v["active_power_total"] - Decimal("2.2")) < Decimal("0.002")
    assert abs(v["current_a"] - Decimal(2200) / (v["voltage_a"] * Decimal("0.95"))) < Decimal(
        "0.02"
    )
    assert values(meter, 0x02060000)["power_factor_total"] == Decimal("0.950")
    assert Decimal("49.95") <= values(meter, 0x02800002)["frequency"] <= Decimal("50.05")


# --- 1997 -----------------------------------------------------------------------------------------


@pytest.fixture
def meter_1997() -> VirtualMeter:
    clock = ManualClock(dt.datetime(2024, 2, 20, 8, 0, tzinfo=TZ))
    meter = make_meter(clock, edition=V97, initial_kwh=Decimal("500"))
    clock.advance(12 * 86400)  # past the settlement on March 1st
    return meter


CASES_1997: list[tuple[int, Callable[[VirtualMeter], dict[str, Any]]]] = [
    (0x9010, lambda m: {"forward_active_total": m.registers().forward_active[0]}),
    (0x9012, lambda m: {"forward_active_peak": m.registers().forward_active[2]}),
    (0x901F, lambda m: _tariffs("forward_active", m.registers().forward_active)),
    (0x9020, lambda m: {"reverse_active_total": Decimal("0.00")}),
    (0x911F, lambda m: _tariffs("forward_reactive", m.registers().combined_reactive_1)),
    (0x9410, lambda m: {"forward_active_total": m.settlement_record(1).forward_active[0]}),  # type: ignore[union-attr]
    (0x9000, lambda m: {"active_total": m.registers().forward_active[0]}),
    (0xB611, lambda m: {"voltage_a": m.instant().voltage[0].quantize(Decimal(1))}),  # type: ignore[union-attr]
    (
        0xB61F,
        lambda m: {
            "voltage_a": m.instant().voltage[0].quantize(Decimal(1)),  # type: ignore[union-attr]
            "voltage_b": ABSENT,
            "voltage_c": ABSENT,
        },
    ),
    (0xB621, lambda m: {"current_a": m.instant().current[0].quantize(Decimal("0.01"))}),  # type: ignore[union-attr]
    (0xB630, lambda m: {"active_power_total": m.instant().active_power}),
    (0xB650, lambda m: {"power_factor_total": Decimal("0.950")}),
    (
        0xC010,
        lambda m: {"weekday": (m.now_local().weekday() + 1) % 7, "date": m.now_local().date()},
    ),
    (0xC011, lambda m: {"time": m.now_local().time().replace(microsecond=0)}),
    (0xC030, lambda m: {"active_constant": 1200}),
    (0xC032, lambda m: {"meter_number": "000000000001"}),
    (0xC033, lambda m: {"user_number": "000000000001"}),
]


@pytest.mark.parametrize(("di", "expected"), CASES_1997, ids=[f"{di:04X}" for di, _ in CASES_1997])
def test_each_1997_family_answers_the_modelled_value(
    meter_1997: VirtualMeter, di: int, expected: Callable[[VirtualMeter], dict[str, Any]]
) -> None:
    assert values(meter_1997, di, V97) == expected(meter_1997)


def test_1997_reply_codes_on_the_wire(meter_1997: VirtualMeter) -> None:
    request = ReadRequest(ADDR, 0x9010, V97).to_frame()
    assert request.control.byte == 0x01
    reply = meter_1997.handle(request)
    assert reply is not None
    assert reply.control.byte == 0x81
    refused = meter_1997.handle(ReadRequest(ADDR, 0xB612, V97).to_frame())  # no phase B
    assert refused is not None
    assert encode_frame(refused, preamble=0)[8:11] == bytes.fromhex("C10135")


def test_editions_ignore_each_other(meter_1997: VirtualMeter) -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, tzinfo=TZ))
    meter_2007 = make_meter(clock)
    assert meter_1997.handle(ReadRequest(ADDR, 0x00010000).to_frame()) is None
    assert meter_2007.handle(ReadRequest(ADDR, 0x9010, V97).to_frame()) is None


# --- no data, silence, wildcard -------------------------------------------------------------------


@pytest.mark.parametrize(
    "di",
    [
        0x12345678,  # not in the registry
        0x05040001,  # hourly freeze: declared, not modelled
        0x02010200,  # phase B voltage on a single-phase meter
        0x00290000,  # phase B energy on a single-phase meter
        0x00900200,  # prepaid balance on a post-paid meter
        0x0506003E,  # a daily record 62 days old that does not exist yet
        0x0001000C,  # a settlement twelve months ago
        0x00010500,  # tariff 5 on a four-tariff meter
        0x0103FF00,  # reactive max demand
    ],
    ids=lambda di: f"{di:08X}",
)
def test_unsupported_di_is_err_02(di: int) -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock)
    assert error_of(meter, di) == ErrorWord.NO_DATA
    reply = meter.handle(ReadRequest(ADDR, di).to_frame())
    assert reply is not None
    assert encode_frame(reply, preamble=0)[8:11] == bytes.fromhex("D10135")  # as captured


def test_silence_for_other_addresses_and_broadcast_reads() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock)
    assert meter.handle(ReadRequest(Address.parse("000000000002"), 0x00010000).to_frame()) is None
    assert meter.handle(ReadRequest(Address.parse("999999999999"), 0x00010000).to_frame()) is None
    reply_frame = ReadResponse(ADDR, 0x00010000, b"\x00" * 4).to_frame()
    assert meter.handle(reply_frame) is None  # another meter's reply on the same bus
    assert meter.handle_bytes(b"\xfe\xfe\x68\x01\x00") is None  # half a frame


def test_read_address_on_the_wildcard() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock, address=Address.parse("000102030425"))
    reply = wire(meter, ReadAddressRequest().to_frame())
    assert reply == ReadAddressResponse(Address.parse("000102030425"))
    partial = Address("AAAAAAAA0425")
    assert wire(meter, ReadAddressRequest(partial).to_frame()) == reply
    assert meter.handle(ReadAddressRequest(Address("AAAAAAAA0426")).to_frame()) is None


def test_handle_bytes_round_trip() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock, initial_kwh=Decimal("42.5"), reply_preamble=2)
    raw = meter.handle_bytes(encode_frame(ReadRequest(ADDR, 0x00010000).to_frame()))
    assert raw is not None
    assert raw.startswith(b"\xfe\xfe\x68")
    msg = decode_message(decode_frame(raw))
    assert isinstance(msg, ReadResponse)
    assert msg.decode().as_dict() == {"forward_active_total": Decimal("42.50")}  # type: ignore[union-attr]


# --- energy integration and freezes ---------------------------------------------------------------


def test_constant_load_by_hand() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 0, 0, tzinfo=TZ))
    meter = make_meter(clock, profile=LoadProfile.constant("1.2"))
    clock.advance(86400)
    # STANDARD_TOU: sharp 2 h, peak 5 h, flat 8 h, valley 9 h; 1.2 kW all day.
    assert meter.registers().forward_active == (
        Decimal("28.80"),
        Decimal("2.40"),
        Decimal("6.00"),
        Decimal("9.60"),
        Decimal("10.80"),
    )
    assert meter.exact_forward_kwh() == Decimal("28.8")


def test_frozen_record_equals_registers_at_midnight() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 9, 30, tzinfo=TZ))
    meter = make_meter(clock, profile=LoadProfile(), initial_kwh=Decimal(100))
    midnight = dt.datetime(2024, 3, 2, tzinfo=TZ)
    clock.set(midnight - dt.timedelta(microseconds=1))
    assert meter.frozen_record(dt.date(2024, 3, 2)) is None
    clock.set(midnight)
    at_midnight = meter.registers()
    record = meter.frozen_record(dt.date(2024, 3, 2))
    assert record is not None
    assert record.registers == at_midnight
    assert record.freeze_time == dt.datetime(2024, 3, 2, 0, 0)
    assert record.frozen_at == midnight
    clock.advance(5 * 3600)
    assert meter.frozen_record(dt.date(2024, 3, 2)) == record
    assert meter.registers().forward_active[0] > at_midnight.forward_active[0]
    assert values(meter, 0x05060001) == {"freeze_time": dt.datetime(2024, 3, 2, 0, 0)}
    assert values(meter, 0x05060101) == _tariffs("forward_active", record.forward_active)


def test_one_big_step_equals_many_small_steps() -> None:
    start = dt.datetime(2024, 3, 1, 8, 13, tzinfo=TZ)
    profile = LoadProfile(noise=Decimal("0.3"))
    stepped_clock, jumped_clock = ManualClock(start), ManualClock(start)
    stepped = make_meter(stepped_clock, profile=profile, initial_kwh=Decimal("77.7"))
    jumped = make_meter(jumped_clock, profile=profile, initial_kwh=Decimal("77.7"))
    for _ in range(3 * 24 * 60 // 7):
        stepped_clock.advance(7 * 60)
        stepped.registers()
    jumped_clock.set(stepped_clock.now())
    assert jumped.registers() == stepped.registers()
    assert jumped.exact_forward_kwh() == stepped.exact_forward_kwh()
    days = [dt.date(2024, 3, d) for d in (2, 3, 4)]
    for day in days:
        record = jumped.frozen_record(day)
        assert record is not None
        assert record == stepped.frozen_record(day)
        assert record.frozen_at == dt.datetime.combine(day, dt.time(0), TZ)
    assert jumped.daily_record(4) is None  # three midnights crossed, three records
    daily = [jumped.daily_record(n).forward_active[0] for n in (3, 2, 1)]  # type: ignore[union-attr]
    assert daily == sorted(daily)
    assert len(set(daily)) == 3


def test_sixty_two_daily_records_are_kept() -> None:
    clock = ManualClock(dt.datetime(2024, 1, 1, 12, tzinfo=TZ))
    meter = make_meter(clock, profile=LoadProfile.constant("0.5"))
    clock.advance(70 * 86400)
    assert meter.daily_record(62) is not None
    assert meter.daily_record(63) is None
    assert values(meter, 0x0506003E)["freeze_time"] == dt.datetime(2024, 1, 10)
    assert values(meter, 0x05060001)["freeze_time"] == dt.datetime(2024, 3, 11)


def test_settlement_records() -> None:
    clock = ManualClock(dt.datetime(2024, 1, 15, 8, tzinfo=TZ))
    meter = make_meter(clock, profile=LoadProfile.constant("1"))
    clock.set(dt.datetime(2024, 3, 5, 8, tzinfo=TZ))
    last, before = meter.settlement_record(1), meter.settlement_record(2)
    assert last is not None
    assert before is not None
    assert (last.day, before.day) == (dt.date(2024, 3, 1), dt.date(2024, 2, 1))
    assert last.forward_active[0] - before.forward_active[0] == Decimal(24 * 29)  # leap February
    assert values(meter, 0x00010001) == {"forward_active_total": last.forward_active[0]}
    assert values(meter, 0x00010002) == {"forward_active_total": before.forward_active[0]}
    assert error_of(meter, 0x00010003) == ErrorWord.NO_DATA


# --- the meter's own clock ------------------------------------------------------------------------


def test_clock_drift_and_offset() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 12, tzinfo=TZ))
    fast = make_meter(clock, clock_drift_s_per_day=Decimal(10))
    behind = make_meter(clock, clock_offset_s=Decimal(-120), address=Address.parse("2"))
    clock.advance(3 * 86400)
    true_local = clock.now().astimezone(TZ).replace(tzinfo=None)
    assert fast.clock_error() == dt.timedelta(seconds=30)
    assert values(fast, 0x04000102)["time"] == (true_local + dt.timedelta(seconds=30)).time()
    assert values(behind, 0x04000102)["time"] == (true_local - dt.timedelta(minutes=2)).time()
    assert values(fast, 0x04000101)["date"] == dt.date(2024, 3, 4)


def test_a_meter_freezes_by_its_own_clock() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 12, tzinfo=TZ))
    meter = make_meter(clock, clock_offset_s=Decimal(600))  # ten minutes fast
    clock.set(dt.datetime(2024, 3, 1, 23, 50, tzinfo=TZ))
    record = meter.frozen_record(dt.date(2024, 3, 2))
    assert record is not None
    assert record.freeze_time == dt.datetime(2024, 3, 2, 0, 0)  # what it says
    assert record.frozen_at == dt.datetime(2024, 3, 1, 23, 50, tzinfo=TZ)  # when it happened


def test_broadcast_time_sync_is_adopted_without_reply() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 12, tzinfo=TZ))
    meter = make_meter(clock, clock_offset_s=Decimal(200), clock_drift_s_per_day=Decimal(5))
    true_local = clock.now().astimezone(TZ).replace(tzinfo=None)
    assert meter.handle(BroadcastTime(true_local).to_frame()) is None
    assert meter.clock_error() == dt.timedelta(0)
    clock.advance(86400)
    assert meter.clock_error() == dt.timedelta(seconds=5)  # the quartz still drifts


def test_broadcast_time_sync_follows_the_smart_meter_rules() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 12, tzinfo=TZ))
    far = make_meter(clock, clock_offset_s=Decimal(400))
    near = make_meter(clock, clock_offset_s=Decimal(60))

    def sync() -> None:
        true_local = clock.now().astimezone(TZ).replace(tzinfo=None)
        for meter in (far, near):
            meter.handle(BroadcastTime(true_local).to_frame())

    sync()
    assert far.clock_error() == dt.timedelta(seconds=400)  # more than 5 minutes: refused
    assert near.clock_error() == dt.timedelta(0)
    near.set_clock(near.now_local() + dt.timedelta(seconds=30))
    sync()
    assert near.clock_error() == dt.timedelta(seconds=30)  # once a day
    clock.set(dt.datetime(2024, 3, 2, 23, 58, tzinfo=TZ))
    sync()
    assert near.clock_error() == dt.timedelta(seconds=30)  # not near midnight
    clock.set(dt.datetime(2024, 3, 3, 9, 0, tzinfo=TZ))
    sync()
    assert near.clock_error() == dt.timedelta(0)


# --- relay ----------------------------------------------------------------------------------------


def relay(
    meter: VirtualMeter,
    command: RelayCommand,
    *,
    until: dt.datetime = FAR,
    password: str = "000000",
) -> Message | None:
    return wire(meter, RelayControl(meter.address, command, until, password=password).to_frame())


def test_trip_stops_consumption_and_status_word_3_follows() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock, profile=LoadProfile.constant("1"))
    clock.advance(3600)
    reply = relay(meter, RelayCommand.TRIP)
    assert reply is not None
    assert not isinstance(reply, ErrorResponse)
    assert meter.handle(RelayControl(ADDR, RelayCommand.TRIP, FAR).to_frame()).control.byte == 0x9C  # type: ignore[union-attr]
    assert meter.relay_open
    word = values(meter, 0x04000503)["status_word_3"]
    assert word.word == 0x0050  # as captured on a tripped meter
    assert word.bits["relay_open"]
    assert word.bits["relay_trip_commanded"]
    before = meter.registers().forward_active[0]
    clock.advance(5 * 3600)
    assert meter.registers().forward_active[0] == before == Decimal("1.00")
    assert values(meter, 0x02030000)["active_power_total"] == 0
    assert values(meter, 0x02020100)["current_a"] == 0
    relay(meter, RelayCommand.CLOSE)
    assert not meter.relay_open
    assert values(meter, 0x04000503)["status_word_3"].word == 0x0000
    clock.advance(3600)
    assert meter.registers().forward_active[0] == Decimal("2.00")


def test_close_allowed_closes_and_is_recorded() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock)
    relay(meter, RelayCommand.TRIP)
    relay(meter, RelayCommand.CLOSE_ALLOWED)
    assert not meter.relay_open
    assert meter.last_relay_command is not None
    assert meter.last_relay_command.command is RelayCommand.CLOSE_ALLOWED


@pytest.mark.parametrize(
    ("until", "password", "error"),
    [
        (dt.datetime(2024, 3, 1, 7, 59, 59), "000000", ErrorWord.OTHER),  # expired (meter time)
        (FAR, "123456", ErrorWord.PASSWORD),
    ],
    ids=["expired", "bad-password"],
)
def test_refused_commands(until: dt.datetime, password: str, error: ErrorWord) -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock)
    reply = relay(meter, RelayCommand.TRIP, until=until, password=password)
    assert isinstance(reply, ErrorResponse)
    assert reply.error == error
    assert not meter.relay_open
    raw = meter.handle(RelayControl(ADDR, RelayCommand.TRIP, until, password=password).to_frame())
    assert raw is not None
    assert raw.control.byte == 0xDC


def test_keep_power_refuses_trip() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock)
    relay(meter, RelayCommand.KEEP_POWER)
    assert values(meter, 0x04000503)["status_word_3"].bits["keep_power"]
    assert isinstance(relay(meter, RelayCommand.TRIP), ErrorResponse)
    assert not meter.relay_open
    relay(meter, RelayCommand.KEEP_POWER_RELEASE)
    relay(meter, RelayCommand.TRIP)
    assert meter.relay_open


def test_valid_until_is_meter_local_time() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock, clock_offset_s=Decimal(-600))  # meter reads 07:50
    assert not isinstance(
        relay(meter, RelayCommand.TRIP, until=dt.datetime(2024, 3, 1, 7, 55)), ErrorResponse
    )


# --- prepaid --------------------------------------------------------------------------------------


def test_prepaid_balance_falls_with_consumption_into_overdraft() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(
        clock,
        profile=LoadProfile.constant("1"),
        prepaid=PrepaidConfig("money", Decimal("0.50"), Decimal("10.00")),
    )
    assert values(meter, 0x04000503)["status_word_3"].bits["meter_type"] == "money_prepaid"
    clock.advance(10 * 3600)
    assert values(meter, 0x00900200) == {"remaining_amount": Decimal("5.00")}
    assert values(meter, 0x00900100) == {"remaining_energy": Decimal("10.00")}
    clock.advance(20 * 3600)
    assert values(meter, 0x00900200) == {"remaining_amount": Decimal("0.00")}
    assert values(meter, 0x00900201) == {"overdraft_amount": Decimal("5.00")}
    assert values(meter, 0x00900101) == {"overdraft_energy": Decimal("10.00")}
    meter.top_up(Decimal("20.00"))
    assert meter.prepaid().remaining_amount == Decimal("15.00")  # type: ignore[union-attr]


def test_energy_prepaid() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(
        clock,
        profile=LoadProfile.constant("1"),
        prepaid=PrepaidConfig("energy", Decimal("0.50"), Decimal("3.00")),
    )
    clock.advance(2 * 3600)
    assert values(meter, 0x00900100) == {"remaining_energy": Decimal("1.00")}
    assert values(meter, 0x04000503)["status_word_3"].bits["meter_type"] == "energy_prepaid"


def test_tou_table_is_applied_in_local_time() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 19, 0, tzinfo=TZ))
    meter = make_meter(clock, profile=LoadProfile.constant("1"))
    clock.advance(3600)
    assert STANDARD_TOU.at(19 * 3600 * 10**6)[0] == 1
    assert meter.registers().forward_active[1] == Decimal("1.00")  # 19:00-20:00 is sharp


# --- robustness ---------------------------------------------------------------------------------

_FUZZ_CLOCK = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
_FUZZ_2007 = make_meter(_FUZZ_CLOCK, phases=3, prepaid=PrepaidConfig())
_FUZZ_1997 = make_meter(_FUZZ_CLOCK, edition=V97, address=Address.parse("2"))


@settings(max_examples=400, deadline=None)
@given(
    function=st.integers(0, 0x1F),
    data=st.binary(max_size=40),
    target=st.sampled_from(["000000000001", "000000000002", "999999999999", "AAAAAAAAAAAA"]),
)
def test_any_request_is_answered_or_ignored_never_raises(
    function: int, data: bytes, target: str
) -> None:
    frame = Frame(Address(target), Control(function, Direction.REQUEST), data)
    for meter in (_FUZZ_2007, _FUZZ_1997):
        reply = meter.handle(frame)
        if reply is not None:
            assert reply.address == meter.address
            assert reply.control.direction is Direction.RESPONSE
            decode_message(decode_frame(encode_frame(reply)))  # whatever it says is well-formed


def test_absent_deadline_and_time_are_refused_not_crashed() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 1, 8, tzinfo=TZ))
    meter = make_meter(clock, clock_offset_s=Decimal(30))
    trip = RelayControl(ADDR, RelayCommand.TRIP, FAR).to_frame()
    zeroed = Frame(trip.address, trip.control, trip.data[:10] + bytes(6))
    reply = wire(meter, zeroed)
    assert isinstance(reply, ErrorResponse)
    assert not meter.relay_open
    sync = BroadcastTime(dt.datetime(2024, 1, 1)).to_frame()
    assert meter.handle(Frame(sync.address, sync.control, b"\xff" * 6)) is None
    assert meter.clock_error() == dt.timedelta(seconds=30)
