"""Faults on the link and anomalies in the meter, each observable as the gateway would see it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.clock import ManualClock
from protocols.bcd import Address
from protocols.dlt645 import (
    Dlt645Framer,
    ErrorResponse,
    ReadRequest,
    ReadResponse,
    RelayCommand,
    RelayControl,
    decode_frame,
    decode_message,
    encode_frame,
)
from protocols.errors import FrameError
from protocols.framing import NEED_DATA
from simulator import faults as f
from simulator.bus import MemoryBus
from simulator.config import MeterConfig, PrepaidConfig
from simulator.district import District
from simulator.meter import VirtualMeter
from simulator.profile import LoadProfile, MeterLoad
from simulator.timebase import Zone

TZ = ZoneInfo("Asia/Shanghai")
START = dt.datetime(2024, 3, 1, 8, 0, tzinfo=TZ)
ADDR = Address.parse("000000000001")


def at(hours: float) -> dt.datetime:
    return START + dt.timedelta(hours=hours)


def window(start_h: float, end_h: float | None = None) -> f.Window:
    return f.Window(at(start_h), None if end_h is None else at(end_h))


def make_meter(
    clock: ManualClock, anomalies: tuple[f.Anomaly, ...] = (), **config: Any
) -> VirtualMeter:
    cfg = MeterConfig(ADDR, **config)
    return VirtualMeter(
        cfg, clock, MeterLoad(LoadProfile.constant("1.2"), Zone()), anomalies, start=START
    )


def values(meter: VirtualMeter, di: int) -> dict[str, Any]:
    reply = meter.handle(ReadRequest(meter.address, di).to_frame())
    assert reply is not None
    msg = decode_message(decode_frame(encode_frame(reply)))
    assert isinstance(msg, ReadResponse), msg
    return msg.decode().as_dict()  # type: ignore[union-attr]


def forward(meter: VirtualMeter) -> Decimal:
    v: Decimal = values(meter, 0x00010000)["forward_active_total"]
    return v


# --- link faults ---------------------------------------------------------------------------------


def linked(
    clock: ManualClock, *faults: f.LinkFault, preamble: int = 0
) -> tuple[District, MemoryBus, VirtualMeter]:
    meter = VirtualMeter(
        MeterConfig(ADDR, reply_preamble=preamble),
        clock,
        MeterLoad(LoadProfile.constant("1"), Zone()),
        start=START,
    )
    district = District(
        clock, [(meter, "bus")], link_faults={ADDR: f.LinkFaults(ADDR, faults, seed=3)}
    )
    return district, MemoryBus(district, "bus"), meter


READ = encode_frame(ReadRequest(ADDR, 0x0001FF00).to_frame())


async def test_silent_window_and_commands_sent_then_are_lost() -> None:
    clock = ManualClock(START)
    _, bus, meter = linked(clock, f.Silent(window(1, 2)))
    assert await bus.exchange(READ) is not None
    clock.set(at(1))
    assert await bus.exchange(READ) is None
    trip = encode_frame(RelayControl(ADDR, RelayCommand.TRIP, dt.datetime(2099, 1, 1)).to_frame())
    assert await bus.exchange(trip) is None
    assert not meter.relay_open  # it never heard the command
    clock.set(at(2))
    assert await bus.exchange(READ) is not None


def test_slow_reply_adds_delay() -> None:
    clock = ManualClock(at(1))
    district, _, _ = linked(clock, f.SlowReply(window(0, 2), delay_ms=700))
    reply = district.respond_bytes("bus", READ)
    assert reply is not None
    assert reply.delay_s == pytest.approx(0.7)
    clock.set(at(3))
    assert district.respond_bytes("bus", READ).delay_s == 0  # type: ignore[union-attr]


def test_garbled_replies_fail_the_checks() -> None:
    clock = ManualClock(at(1))
    _, bus, _ = linked(clock, f.Garbled(window(0), flips=3))
    clean_bus = linked(ManualClock(at(1)))[1]
    for _ in range(20):
        clock.advance(1)
        garbled, clean = bus.exchange_nowait(READ), clean_bus.exchange_nowait(READ)
        assert garbled is not None
        assert clean is not None
        assert garbled != clean
        assert len(garbled) == len(clean)
        framer = Dlt645Framer()
        framer.feed(garbled)
        framer.feed_eof()
        assert list(framer.frames()) == [] or decode_frame(garbled).data != decode_frame(clean).data


def test_bad_checksum() -> None:
    _, bus, _ = linked(ManualClock(at(1)), f.BadChecksum(window(0)), preamble=4)
    reply = bus.exchange_nowait(READ)
    assert reply is not None
    with pytest.raises(FrameError) as exc:
        decode_frame(reply)
    assert exc.value.reason == "bad-checksum"


def test_truncated_reply() -> None:
    _, bus, _ = linked(ManualClock(at(1)), f.Truncated(window(0), drop=5))
    reply = bus.exchange_nowait(READ)
    assert reply is not None
    assert len(reply) == 12 + 24 - 5
    framer = Dlt645Framer()
    framer.feed(reply)
    assert framer.next_frame() is NEED_DATA


def test_reply_from_another_address() -> None:
    _, bus, _ = linked(ManualClock(at(1)), f.WrongAddress(window(0)))
    reply = bus.exchange_nowait(READ)
    assert reply is not None
    frame = decode_frame(reply)  # a perfectly valid frame...
    assert frame.address == Address.parse("000000000002")  # ...from the wrong meter


def test_probability_fires_on_a_fraction() -> None:
    clock = ManualClock(at(1))
    _, bus, _ = linked(clock, f.BadChecksum(window(0), probability=0.3))
    bad = 0
    for _ in range(300):
        reply = bus.exchange_nowait(READ)
        assert reply is not None
        try:
            decode_frame(reply)
        except FrameError:
            bad += 1
    assert 50 < bad < 130


# --- anomalies -----------------------------------------------------------------------------------


def test_register_backwards_steps_down_at_its_start() -> None:
    clock = ManualClock(START)
    meter = make_meter(
        clock, (f.RegisterBackwards(window(2), kwh=Decimal(50)),), initial_kwh=Decimal(1000)
    )
    clock.set(at(1))
    before = forward(meter)
    clock.set(at(6))  # jumps over the start: applied at its exact instant anyway
    assert before == Decimal("1001.20")
    assert forward(meter) == Decimal(1000) + Decimal("1.2") * 6 - 50
    assert forward(meter) < before


def test_stopped_meter_under_load() -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.StoppedMeter(window(2)),))
    clock.set(at(8))
    assert forward(meter) == Decimal("2.40")  # two hours, then nothing
    clock.advance(3600)
    assert forward(meter) == Decimal("2.40")
    assert abs(values(meter, 0x02030000)["active_power_total"] - Decimal("1.2")) < Decimal("0.002")
    assert values(meter, 0x02020100)["current_a"] > Decimal(5)


def test_fast_meter() -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.FastMeter(window(1, 3), factor=Decimal(3)),))
    clock.set(at(4))
    assert forward(meter) == Decimal("1.2") * (1 + 3 * 2 + 1)
    assert abs(values(meter, 0x02030000)["active_power_total"] - Decimal("1.2")) < Decimal("0.002")


def test_reverse_energy() -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.ReverseEnergy(window(1, 3)),))
    clock.set(at(2))
    assert values(meter, 0x04000501)["status_word_1"].bits["active_power_reverse"]
    assert values(meter, 0x02030000)["active_power_total"] < 0
    assert values(meter, 0x02020100)["current_a"] < 0
    clock.set(at(4))
    assert values(meter, 0x00020000) == {"reverse_active_total": Decimal("2.40")}
    assert forward(meter) == Decimal("2.40")
    assert not values(meter, 0x04000501)["status_word_1"].bits["active_power_reverse"]


def test_clock_drift_beyond_five_minutes() -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.ClockDrift(window(1), offset_s=Decimal(420)),))
    clock.set(at(0.5))
    assert meter.clock_error() == dt.timedelta(0)
    clock.set(at(2))
    assert meter.clock_error() == dt.timedelta(minutes=7)
    shown = values(meter, 0x04000102)["time"]
    assert shown == dt.time(10, 7)


@pytest.mark.parametrize(
    ("cover", "di", "name"),
    [
        ("meter", 0x03300D00, "meter_cover_open_count"),
        ("terminal", 0x03300E00, "terminal_cover_open_count"),
    ],
)
def test_cover_opened(cover: str, di: int, name: str) -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.CoverOpened(window(1), cover=cover),))  # type: ignore[arg-type]
    clock.set(at(1) - dt.timedelta(microseconds=1))
    assert values(meter, di) == {name: 0}
    clock.set(at(1))
    assert values(meter, di) == {name: 1}
    clock.set(at(30))
    assert values(meter, di) == {name: 1}


def test_loss_of_voltage_on_a_phase() -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.LossOfVoltage(window(1, 3), phase="b"),), phases=3)
    clock.set(at(2))
    v = values(meter, 0x0201FF00) | values(meter, 0x0202FF00)
    assert v["voltage_b"] < Decimal("0.78") * 220 < v["voltage_a"]
    assert v["current_b"] > Decimal(1)  # the current keeps flowing
    assert values(meter, 0x04000505)["status_word_5"].bits["loss_of_voltage"]
    clock.set(at(4))
    totals = values(meter, 0x03010000)
    assert (totals["loss_of_voltage_b_count"], totals["loss_of_voltage_b_minutes"]) == (1, 120)
    assert totals["loss_of_voltage_a_count"] == 0
    # Phase B registered only 60 % of its share for two hours.
    assert meter.registers().phase_forward[1] < meter.registers().phase_forward[0]
    assert forward(meter) == Decimal("4.80") - Decimal("0.4") * 2 * Decimal("0.4")


def test_power_down() -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.PowerDown(window(1, 3)),))
    clock.set(at(2))
    assert meter.handle(ReadRequest(ADDR, 0x00010000).to_frame()) is None
    clock.set(at(4))
    assert values(meter, 0x03110000) == {"power_down_count": 1}
    assert forward(meter) == Decimal("1.2") * 2
    assert values(meter, 0x03110001) == {
        "power_down_start": dt.datetime(2024, 3, 1, 9, 0),
        "power_down_end": dt.datetime(2024, 3, 1, 11, 0),
    }


def test_balance_runs_out() -> None:
    clock = ManualClock(START)
    prepaid = PrepaidConfig("money", Decimal("0.50"), Decimal("100.00"))
    meter = make_meter(
        clock, (f.BalanceOut(window(1), remaining=Decimal("1.50")),), prepaid=prepaid
    )
    clock.set(at(1))
    assert values(meter, 0x00900200) == {"remaining_amount": Decimal("1.50")}
    clock.set(at(5))  # 4.8 kWh at 0.50 = 2.40 CNY
    assert values(meter, 0x00900200) == {"remaining_amount": Decimal("0.00")}
    assert values(meter, 0x00900201) == {"overdraft_amount": Decimal("0.90")}


def test_battery_low() -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.BatteryLow(window(1)),))
    assert not values(meter, 0x04000501)["status_word_1"].bits["clock_battery_low"]
    clock.set(at(1))
    assert values(meter, 0x04000501)["status_word_1"].bits["clock_battery_low"]
    assert values(meter, 0x02800008) == {"clock_battery_voltage": Decimal("2.10")}


def test_anomalies_during_a_freeze_are_filed_under_the_right_day() -> None:
    clock = ManualClock(START)
    meter = make_meter(clock, (f.StoppedMeter(window(16, 40)),))  # from midnight to midnight
    clock.set(at(72))
    day2 = meter.frozen_record(dt.date(2024, 3, 2))
    day3 = meter.frozen_record(dt.date(2024, 3, 3))
    assert day2 is not None
    assert day3 is not None
    assert day2.forward_active[0] == Decimal("1.2") * 16
    assert day3.forward_active[0] == day2.forward_active[0]


def test_error_replies_are_still_faulted() -> None:
    clock = ManualClock(at(1))
    district, _, _ = linked(clock, f.WrongAddress(window(0), address=Address.parse("777")))
    reply = district.respond_bytes("bus", encode_frame(ReadRequest(ADDR, 0x12345678).to_frame()))
    assert reply is not None
    msg = decode_message(decode_frame(reply.data))
    assert isinstance(msg, ErrorResponse)
    assert msg.address == Address.parse("777")
