"""Scenario files, the district they build (master meter, line loss), and ``amigw simulate``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.clock import ManualClock, ScaledClock
from gateway.cli import simulate as simulate_cli
from protocols.bcd import Address
from protocols.dlt645 import Edition, Frame, ReadRequest, RelayCommand, RelayControl, encode_frame
from simulator import faults as f
from simulator.config import MeterConfig
from simulator.district import District, DistrictLoad
from simulator.meter import VirtualMeter
from simulator.profile import LoadProfile, MeterLoad
from simulator.run import run_simulation, start_simulation
from simulator.scenario import ScenarioError, build_district, load_scenario, parse_scenario
from simulator.timebase import Zone

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "etc" / "scenarios"
TZ = ZoneInfo("Asia/Shanghai")


def test_rs485_12_loads() -> None:
    s = load_scenario(SCENARIOS / "rs485-12.toml")
    assert len(s.meters) == 12
    assert sum(p.config.edition is Edition.V1997 for p in s.meters) == 2
    assert sum(p.config.prepaid is not None for p in s.meters) == 2
    assert s.master is not None
    assert s.master.config.phases == 3
    assert {b.name: b.kind for b in s.buses} == {
        "rs485-1": "rs485",
        "rs485-2": "rs485",
        "dtu-1": "tcp",
    }
    assert {p.bus for p in s.meters if p.config.edition is Edition.V1997} == {"rs485-2"}
    scales = {p.scale for p in s.meters}
    assert len(scales) > 5
    assert all(Decimal("0.6") <= x <= Decimal("1.8") for x in scales)
    assert load_scenario(SCENARIOS / "rs485-12.toml") == s  # the draws are seeded


def test_plc_256_loads_with_every_fault_and_anomaly() -> None:
    s = load_scenario(SCENARIOS / "plc-256.toml")
    assert len(s.meters) == 256
    assert all(p.bus == "plc" for p in s.meters)
    assert s.plc is not None
    assert s.plc.baud == 9600
    kinds = {e.kind for e in s.timeline}
    assert kinds >= {"silent", "garbled", "slow", "bad_checksum", "truncated", "wrong_address"}
    assert kinds >= {
        "register_backwards",
        "stopped",
        "fast",
        "reverse",
        "clock_drift",
        "cover_open",
        "loss_of_voltage",
        "power_down",
        "balance_out",
        "battery_low",
    }
    silent = [a for e in s.timeline if e.kind == "silent" for a in e.addresses]
    assert len(silent) >= 2


def test_plc_256_district_shows_its_anomalies() -> None:
    s = load_scenario(SCENARIOS / "plc-256.toml")
    clock = ManualClock(s.start)
    d = build_district(s, clock)
    assert len(d.on_bus("plc")) == 256
    assert d.master is not None
    assert d.master.daily_record(2) is not None  # two days of history at the start
    clock.advance(2 * 86400)
    meters = d.meters
    assert meters[Address.parse("000000100050")].clock_error() == dt.timedelta(minutes=7)
    assert meters[Address.parse("000000100060")].counters().meter_cover_open == 1
    assert meters[Address.parse("000000400003")].counters().terminal_cover_open == 1
    assert meters[Address.parse("000000100070")].counters().power_down == 1
    assert meters[Address.parse("000000200004")].prepaid().overdraft_amount > 0  # type: ignore[union-attr]
    assert meters[Address.parse("000000400005")].counters().loss_of_voltage_count == (0, 1, 0)
    assert meters[Address.parse("000000100044")].registers().reverse_active[0] > 0
    assert meters[Address.parse("000000300002")].status_word(1).bits["clock_battery_low"]
    link = d.link_faults(Address.parse("000000100007"))
    assert link is not None
    assert link.deaf(0) is False
    assert d.respond("plc", _read(Address.parse("000000100007"))) is None
    assert d.respond("plc", _read(Address.parse("000000100008"))) is not None


def _read(address: Address) -> Frame:
    return ReadRequest(address, 0x00010000).to_frame()


# --- bad scenarios --------------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "simulation": {"start": "2025-06-01T00:00:00+08:00"},
    "buses": [{"name": "rs485-1"}],
    "meters": [{"address": "1"}, {"address": "2"}],
}


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(data, "test.toml")
    return exc.value.errors


def with_(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def test_good_minimal_scenario() -> None:
    s = parse_scenario(GOOD)
    assert [p.address.digits for p in s.meters] == ["000000000001", "000000000002"]
    assert s.meters[0].bus == "rs485-1"  # the only bus


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            with_(meters=[{"address": "1", "edition": 2005}]),
            "meters[0].edition: Input should be '2007' or '1997'",
        ),
        (
            with_(meters=[{"address": "1", "colour": "red"}]),
            "meters[0].colour: Extra inputs are not permitted",
        ),
        (
            with_(meters=[{"address": "1", "bus": "rs485-9"}]),
            "meters[0].bus: unknown bus 'rs485-9' (known: rs485-1)",
        ),
        (with_(defaults={"profile": "bakery"}), "defaults.profile: unknown load profile 'bakery'"),
        (
            with_(meters=[{"address": "12345678901234"}]),
            "meters[0].address: Value error, '12345678901234' is not a meter address",
        ),
        (
            with_(meters=[{"address": "1"}, {"address": "000000000001"}]),
            "meters[1]: address 000000000001 is already used by meters[0]",
        ),
        (
            with_(meter_groups=[{"first_address": "1", "count": 3}]),
            "meter_groups[0] (meter 0): address 000000000001 is already used by meters[0]",
        ),
        (
            with_(timeline=[{"kind": "silent", "meter": "999", "start": "+1h"}]),
            "timeline[0].meter: no meter 000000000999 in the scenario",
        ),
        (
            with_(timeline=[{"kind": "slow", "meter": "1", "start": "+1h", "delay_ms": "soon"}]),
            "timeline[0].delay_ms: Input should be a valid integer",
        ),
        (
            with_(timeline=[{"kind": "melting", "meter": "1", "start": "+1h"}]),
            "timeline[0]: Input tag 'melting'",
        ),
        (
            with_(timeline=[{"kind": "stopped", "meter": "1", "start": "tomorrow"}]),
            "timeline[0].start: Value error, 'tomorrow' is neither a date-time nor an offset",
        ),
        (
            with_(timeline=[{"kind": "stopped", "meter": "1", "start": "+2h", "end": "+1h"}]),
            "timeline[0].end:",
        ),
        (
            with_(timeline=[{"kind": "balance_out", "meter": "1", "start": "+2h"}]),
            "timeline[0].meter: balance_out needs a prepaid meter; 000000000001 is not prepaid",
        ),
        (
            with_(
                timeline=[{"kind": "loss_of_voltage", "meter": "1", "start": "+2h", "phase": "c"}]
            ),
            "timeline[0].phase: meter 000000000001 is single-phase",
        ),
        (
            with_(meters=[{"address": "1", "edition": "1997", "prepaid": {"balance": 10}}]),
            "meters[0].prepaid: prepaid registers need edition 2007",
        ),
        (
            with_(simulation={"start": "2025-06-01T00:00:00", "timezone": "Mars/Olympus"}),
            "simulation.timezone: unknown time zone 'Mars/Olympus'",
        ),
        ({"buses": [], "meters": []}, "simulation: Field required"),
        (with_(meters=[]), "meters: the scenario has no meters"),
        (with_(buses=[{"name": "a"}, {"name": "b"}]), "meters[0].bus: which bus? (known: a, b)"),
        (with_(buses=[{"name": "plc"}]), "buses[0].name: bus name 'plc' is reserved"),
        (with_(buses=[{"name": "a", "baud": 2401}]), "buses[0].baud: Input should be 600, 1200"),
    ],
)
def test_bad_scenario_names_the_key_path(data: dict[str, Any], expected: str) -> None:
    errors = errors_of(data)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of(with_(meters=[{"address": "1", "bus": "x"}, {"address": "2", "tou": "y"}]))
    assert len(errors) == 2
    assert str(ScenarioError(errors, "f.toml")).splitlines()[0].startswith("f.toml: meters[0].bus")


def test_bad_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[simulation\nstart = 1\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    assert exc.value.errors[0].startswith("not valid TOML")
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


def test_group_error_is_reported_once() -> None:
    errors = errors_of(
        with_(meters=[], meter_groups=[{"first_address": "100", "count": 50, "profile": "x"}])
    )
    assert errors == [
        "meter_groups[0].profile: unknown load profile 'x' (known: commercial, flat, residential)"
    ]


def test_relative_times_follow_the_start() -> None:
    s = parse_scenario(with_(timeline=[{"kind": "stopped", "meter": "1", "start": "+1d6h"}]))
    later = s.with_start(dt.datetime(2030, 1, 1))
    assert later.timeline[0].window(later.start).start == dt.datetime(2030, 1, 2, 6, tzinfo=TZ)


# --- the district ---------------------------------------------------------------------------------


def test_master_meter_is_sum_of_users_plus_line_loss() -> None:
    start = dt.datetime(2024, 3, 1, 0, 0, tzinfo=TZ)
    clock = ManualClock(start)
    zone = Zone()
    users = [
        VirtualMeter(
            MeterConfig(Address.parse(str(n))),
            clock,
            MeterLoad(LoadProfile(noise=Decimal("0.2")), zone, Decimal(n) / 2, seed=n),
            start=start,
        )
        for n in range(1, 6)
    ]
    master = VirtualMeter(
        MeterConfig(Address.parse("9001"), phases=3),
        clock,
        DistrictLoad(users, Decimal("0.05"), zone),
        start=start,
    )
    district = District(clock, [(m, "b") for m in [*users, master]], master=master)
    # The master's power is kept to 0.1 W per 15-minute slot: at most 96 x 0.05 W x 0.25 h a day.
    tolerance = Decimal("0.0012")
    clock.advance(86400)
    users_kwh = sum((u.exact_forward_kwh() for u in users), Decimal(0))
    assert abs(master.exact_forward_kwh() - users_kwh * Decimal("1.05")) <= tolerance
    # A trip at one customer shows at the transformer too.
    tripped = users[4]
    tripped.handle(
        RelayControl(tripped.address, RelayCommand.TRIP, dt.datetime(2099, 1, 1)).to_frame()
    )
    before_master, before_users = master.exact_forward_kwh(), users_kwh
    clock.advance(86400)
    users_kwh = sum((u.exact_forward_kwh() for u in users), Decimal(0))
    master_day = master.exact_forward_kwh() - before_master
    assert abs(master_day - (users_kwh - before_users) * Decimal("1.05")) <= tolerance
    assert users_kwh - before_users < before_users  # one customer fewer
    assert district.users == users


def test_stopped_user_meter_shows_as_extra_line_loss() -> None:
    start = dt.datetime(2024, 3, 1, 0, 0, tzinfo=TZ)
    clock = ManualClock(start)
    zone = Zone()
    thief = VirtualMeter(
        MeterConfig(Address.parse("1")),
        clock,
        MeterLoad(LoadProfile.constant("1"), zone),
        (f.StoppedMeter(f.Window(start)),),
        start=start,
    )
    master = VirtualMeter(
        MeterConfig(Address.parse("9")), clock, DistrictLoad([thief], Decimal(0), zone), start=start
    )
    clock.advance(3600 * 10)
    assert thief.exact_forward_kwh() == 0
    assert master.exact_forward_kwh() == 10


# --- running it -----------------------------------------------------------------------------------


async def test_run_simulation_prints_endpoints_and_serves() -> None:
    s = load_scenario(SCENARIOS / "rs485-12.toml")
    clock = ScaledClock(s.start, 60.0)
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(run_simulation(s, clock, out=out, stop=stop))
    for _ in range(200):
        if "ready" in out.getvalue():
            break
        await asyncio.sleep(0.05)
    lines = out.getvalue().splitlines()
    assert (
        lines[1]
        == f"clock origin {clock.origin.isoformat()} real_origin {clock.real_origin:.6f} speed 60"
    )
    pty_line = next(line for line in lines if line.startswith("bus rs485-1 pty "))
    assert pty_line.endswith("baud 2400 meters 10")
    assert await asyncio.to_thread(os.path.exists, pty_line.split()[3])
    tcp_line = next(line for line in lines if line.startswith("bus dtu-1 tcp 127.0.0.1:"))
    port = int(tcp_line.split()[3].split(":")[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await writer.wait_closed()
    stop.set()
    endpoints = await asyncio.wait_for(task, 5)
    assert {e.bus for e in endpoints} == {"rs485-1", "rs485-2", "dtu-1"}


async def test_start_simulation_for_plc_lists_the_plc_meters() -> None:
    s = load_scenario(SCENARIOS / "plc-256.toml")
    async with start_simulation(s, ManualClock(s.start)) as sim:
        plc = sim.endpoint("plc")
        assert plc.kind == "plc"
        assert plc.meters == 256
        reply = sim.memory_bus("plc").exchange_nowait(
            encode_frame(_read(Address.parse("000000100001")))
        )
        assert reply is not None


def test_cli_bad_scenario_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[simulation]\nstart = 2025-06-01T00:00:00+08:00\n[[meters]]\naddress = "1"\nphases = 2\n'
    )
    args = argparse.Namespace(scenario=str(path), speed=1.0, start=None)
    assert simulate_cli.run(args) == 78
    err = capsys.readouterr().err
    assert "meters[0].phases: Input should be 1 or 3" in err
    assert simulate_cli.run(argparse.Namespace(scenario=str(path), speed=0.0, start=None)) == 64


def test_cli_registers_its_subcommand() -> None:
    parser = argparse.ArgumentParser()
    simulate_cli.register(parser.add_subparsers())
    args = parser.parse_args(
        ["simulate", "x.toml", "--speed", "1440", "--start", "2025-06-30T23:50:00"]
    )
    assert (args.scenario, args.speed, args.start) == ("x.toml", 1440.0, "2025-06-30T23:50:00")
    assert args.handler is simulate_cli.run
