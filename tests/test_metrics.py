"""The Prometheus endpoint against a simulated district on real ptys and TCP, a real mosquitto
and a real spool: what a scrape says equals what the components counted, promtool finds no
problem in it, per-meter series appear only when asked for, a taken port does not stop
collection, and the Grafana dashboard asks only for metrics the exporter serves."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.channel import ChannelStatistics
from drivers.clock import ScaledClock
from gateway.collector.collector import CollectorSnapshot
from gateway.config import ConfigError, parse_config
from gateway.daemon import Daemon, build
from gateway.metrics import Metrics, Stored
from gateway.uplink import UplinkStatistics
from protocols.bcd import Address
from simulator.plc import VirtualPlcModule, module_settings
from simulator.run import Simulation, start_simulation
from simulator.scenario import build_district
from spool import LedgerState

from .broker import Broker, free_port, requires_mosquitto
from .districts import gateway_config, scenario_from

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "etc" / "grafana" / "amigw.json"
PROMTOOL = shutil.which("promtool")
CST = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 6, 3, 9, 0, tzinfo=CST)
# Enough attempts that a garbled reply is nearly always read again within the request; an item
# that still fails is retried soon.
QUICK_RETRY = {"retry_initial_s": 10}
DEAD = "000000004999"  # configured, but no such meter answers on the bus

SCENARIO = f"""
name = "metrics"
[simulation]
start = {START.isoformat()}
timezone = "Asia/Shanghai"
seed = 5
history_days = 2
[defaults]
bus = "rs485-1"
[[buses]]
name = "rs485-1"
baud = 9600
turnaround_ms = 10
[[buses]]
name = "dtu-1"
kind = "tcp"
baud = 9600
turnaround_ms = 10
[[meter_groups]]
first_address = "000000004001"
count = 4
[[meter_groups]]
first_address = "000000004101"
count = 2
bus = "dtu-1"
[[timeline]]
kind = "bad_checksum"
meter = "000000004002"
start = "+0h"
probability = 0.3
"""


class CountedCommands:
    """Stands in for the commands service (``[commands]`` is off here: it needs signing keys and
    a head-end): counts as its ``statistics().by_result`` reports them."""

    by_result: Mapping[tuple[str, str], int] = {
        ("time_sync", "done"): 2,
        ("relay_trip", "rejected_expired"): 1,
    }

    def statistics(self) -> CountedCommands:
        return self


def buses_of(sim: Simulation) -> dict[str, dict[str, object]]:
    pty, tcp = sim.endpoint("rs485-1"), sim.endpoint("dtu-1")
    return {
        "rs485-1": {"kind": "serial", "device": pty.path, "baud": 9600, "parity": "N",
                    "timeout_ms": 300, "retries": 4},
        "dtu-1": {"kind": "tcp", "host": tcp.host, "port": tcp.port, "baud": 9600,
                  "timeout_ms": 300},
    }  # fmt: skip


def clock_table(clock: ScaledClock) -> str:
    return (
        f'[clock]\nmode = "scaled"\norigin = "{clock.origin.isoformat()}"\n'
        f"speed = 1.0\nreal_origin = {clock.real_origin!r}\n"
    )


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)
        await daemon.spool.close()


async def wait_for(
    what: str, predicate: Callable[[], Awaitable[bool]], daemon: Daemon, within_s: float = 60.0
) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            owed = [e for e in await daemon.spool.ledger() if e.state is not LedgerState.DONE]
            pytest.fail(f"timed out waiting for {what}; ledger entries not done: {owed}")
        await asyncio.sleep(0.1)


async def scrape(metrics: Metrics) -> str:
    """GET /metrics over HTTP from another thread, as Prometheus would."""
    assert metrics.address is not None
    host, port = metrics.address
    url = f"http://{host}:{port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
            return str(reply.read().decode())

    return await asyncio.to_thread(get)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[name, frozenset(labels.items())]


def exported_names(text: str) -> set[str]:
    """Every metric name the exposition declares (TYPE lines) or carries samples for."""
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    return declared | {name for name, _ in samples(text)}


@dataclass(frozen=True)
class Scraped:
    text: str
    channels: dict[str, ChannelStatistics]
    collector: CollectorSnapshot
    uplink: UplinkStatistics
    stored: Stored
    readings_by_kind: dict[str, int]


async def _collect_and_scrape(tmp: Path) -> Scraped:
    scenario = scenario_from(SCENARIO)
    clock = ScaledClock(START, speed=1.0)
    with Broker.running(tmp / "broker") as broker:
        async with start_simulation(scenario, clock) as sim:
            uplink = (
                f'[uplink]\nhost = "127.0.0.1"\nport = {broker.port}\nprefix = "metrics-test"\n'
                "batch_max_age_s = 0.2\n"
            )
            metrics = f"[metrics]\nport = {free_port()}\n"
            config = gateway_config(
                scenario, tmp / "spool.sqlite", buses=buses_of(sim), collection=QUICK_RETRY,
                catch_up_days=1, extra=clock_table(clock) + uplink + metrics,
            )  # fmt: skip
            daemon = await build(config, clock)
            assert daemon.metrics is not None
            assert daemon.uplink is not None
            daemon.metrics.commands = CountedCommands()
            async with running(daemon):

                async def day_done() -> bool:
                    ledger = await daemon.spool.ledger()
                    return bool(ledger) and all(e.state is LedgerState.DONE for e in ledger)

                await wait_for("the day and the back-fill collected", day_done, daemon)

                async def drained() -> bool:
                    assert daemon.metrics is not None
                    assert daemon.uplink is not None
                    await daemon.metrics.refresh()
                    stored = daemon.metrics.snapshots()[1]
                    assert stored is not None
                    return stored.outbox.depth == 0 and daemon.uplink.statistics().inflight == 0

                await wait_for("the outbox drained to the broker", drained, daemon)
                await daemon.metrics.refresh()
                text = await scrape(daemon.metrics)
                stored = daemon.metrics.snapshots()[1]
                assert stored is not None
                spool_stats = await daemon.spool.statistics()
                return Scraped(
                    text=text,
                    channels={n: c.statistics() for n, c in daemon.channels.items()},
                    collector=daemon.collector.statistics(),
                    uplink=daemon.uplink.statistics(),
                    stored=stored,
                    readings_by_kind={k.value: n for k, n in spool_stats.readings_by_kind.items()},
                )


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Scraped:
    # Its tests are marked requires_mosquitto, so without a broker it never runs.
    return asyncio.run(_collect_and_scrape(tmp_path_factory.mktemp("metrics")))


@requires_mosquitto
@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/ensure-promtool.sh)"
)
def test_promtool_finds_no_problems(scraped: Scraped) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=scraped.text, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "", done.stdout


@requires_mosquitto
def test_bus_counters_equal_the_channels(scraped: Scraped) -> None:
    text = scraped.text
    for bus, stats in scraped.channels.items():
        assert stats.requests > 0
        assert value(text, "amigw_bus_requests_total", bus=bus) == stats.requests
        assert value(text, "amigw_bus_replies_total", bus=bus) == stats.replies
        assert value(text, "amigw_bus_timeouts_total", bus=bus) == stats.timeouts
        assert value(text, "amigw_bus_corrupted_replies_total", bus=bus) == stats.corrupted
        for reason, n in stats.framing.items():
            assert value(text, "amigw_bus_frame_errors_total", bus=bus, reason=reason) == n
    # The meter that garbles its checksums shows up as checksum errors on its bus.
    assert value(text, "amigw_bus_frame_errors_total", bus="rs485-1", reason="bad-checksum") > 0
    assert value(text, "amigw_bus_retries_total", bus="rs485-1") > 0


@requires_mosquitto
def test_collection_figures(scraped: Scraped) -> None:
    text, c, stored = scraped.text, scraped.collector, scraped.stored
    frozen = c.readings_by_item["daily_frozen"]
    assert frozen > 0
    assert value(text, "amigw_collector_readings_total", item="daily_frozen") == frozen
    assert (
        value(text, "amigw_collector_sessions_total", item="clock", result="ok")
        == (c.sessions_by_item["clock", "ok"])
    )
    assert value(text, "amigw_collector_stored_readings_total") == c.stats.readings_new > 0
    assert (
        value(text, "amigw_spool_readings", kind="daily_frozen")
        == (scraped.readings_by_kind["daily_frozen"])
    )
    # Everything was collected: the day's success is 1 and nothing is owed.
    assert value(text, "amigw_collection_success_ratio", district="district-1") == 1.0
    assert value(text, "amigw_collection_meters", district="district-1", state="done") == 6
    assert value(text, "amigw_collector_catch_up_backlog_entries") == 0
    assert dict(stored.open_entries) == {}
    assert value(text, "amigw_spool_rows", table="readings") == sum(
        scraped.readings_by_kind.values()
    )


@requires_mosquitto
def test_uplink_figures(scraped: Scraped) -> None:
    text, u = scraped.text, scraped.uplink
    assert value(text, "amigw_uplink_connected") == 1.0
    assert u.batches_published > 0
    assert value(text, "amigw_uplink_batches_published_total") == u.batches_published
    assert value(text, "amigw_uplink_batches_acked_total") == u.batches_acked
    # Every PUBACK was timed once.
    assert value(text, "amigw_uplink_publish_latency_seconds_count") == u.batches_published
    assert value(text, "amigw_uplink_publish_latency_seconds_sum") > 0
    assert value(text, "amigw_spool_oldest_unsent_age_seconds") == 0.0
    assert sum(scraped.stored.outbox.unsent.values()) == 0


@requires_mosquitto
def test_alarms_commands_and_build(scraped: Scraped) -> None:
    text = scraped.text
    assert value(text, "amigw_commands_total", type="time_sync", result="done") == 2
    assert value(text, "amigw_commands_total", type="relay_trip", result="rejected_expired") == 1
    assert value(text, "amigw_build_info", version="0.1.0", gateway="gw-test") == 1
    # Every enabled rule's alarm type has a series, zero or not.
    for alarm in ("missed_reading", "meter_stopped"):
        assert ("amigw_alarms_active", frozenset({("type", alarm)})) in samples(text)


@requires_mosquitto
def test_no_per_meter_series_by_default(scraped: Scraped) -> None:
    assert not [n for n in exported_names(scraped.text) if n.startswith("amigw_meter_")]
    assert "000000004001" not in scraped.text


@requires_mosquitto
def test_dashboard_asks_only_for_exported_metrics(scraped: Scraped) -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["schemaVersion"] >= 36
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    exprs: list[str] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        exprs += [t["expr"] for t in panel["targets"]]
    used = {n for e in exprs for n in re.findall(r"amigw_[a-z_]+", e)}
    assert len(used) >= 20
    missing = used - exported_names(scraped.text)
    assert not missing, f"the dashboard asks for metrics nobody exports: {sorted(missing)}"
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for subject in ("success", "bus", "spool", "oldest", "uplink", "alarm", "command"):
        assert subject in titles, subject


# -- per-meter series and a taken port --------------------------------------------------------


async def test_per_meter_series_when_asked_for(tmp_path: Path) -> None:
    scenario = scenario_from(SCENARIO)
    clock = ScaledClock(START, speed=1.0)
    async with start_simulation(scenario, clock) as sim:
        dead = f'[[meter]]\naddress = "{DEAD}"\nbus = "rs485-1"\n'
        extra = clock_table(clock) + f"[metrics]\nport = {free_port()}\nper_meter = true\n" + dead
        config = gateway_config(
            scenario,
            tmp_path / "spool.sqlite",
            buses=buses_of(sim),
            collection=QUICK_RETRY,
            catch_up_days=0,
            extra=extra,
        )
        daemon = await build(config, clock)
        metrics = daemon.metrics
        assert metrics is not None
        async with running(daemon):

            async def settled() -> bool:
                ledger = await daemon.spool.ledger()
                return (
                    all(e.state is LedgerState.DONE for e in ledger if e.meter != DEAD)
                    and any(e.state is LedgerState.FAILED for e in ledger if e.meter == DEAD)
                    # resting after its failures, so nothing changes while the test reads
                    and daemon.channels["rs485-1"].resting_until(Address(DEAD)) is not None
                )

            await wait_for("every live meter read and the dead one failed", settled, daemon)
            await metrics.refresh()
            owed = [e for e in await daemon.spool.ledger() if e.state is not LedgerState.DONE]
            text = await scrape(metrics)
            snapshot = daemon.collector.statistics()

    live = [f"00000000{n}" for n in (4001, 4002, 4003, 4004, 4101, 4102)]
    for meter in live:
        assert value(text, "amigw_meter_failed_sessions_total", meter=meter) == (
            snapshot.meter_failures.get(meter, 0)
        )
        assert value(text, "amigw_meter_open_entries", meter=meter) == 0
        age = value(text, "amigw_meter_last_success_age_seconds", meter=meter)
        assert 0 <= age < 120
    assert value(text, "amigw_meter_failed_sessions_total", meter=DEAD) >= 1
    assert {e.meter for e in owed} == {DEAD}
    assert value(text, "amigw_meter_open_entries", meter=DEAD) == len(owed)
    # Never read since start: no age rather than a made-up one.
    assert ("amigw_meter_last_success_age_seconds", frozenset({("meter", DEAD)})) not in samples(
        text
    )
    assert value(text, "amigw_collection_success_ratio", district="district-1") == pytest.approx(
        6 / 7
    )


async def test_a_taken_port_is_logged_and_collection_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = scenario_from(SCENARIO)
    clock = ScaledClock(START, speed=1.0)
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    caplog.set_level(logging.INFO, logger="amigw.metrics")
    async with start_simulation(scenario, clock) as sim:
        config = gateway_config(
            scenario, tmp_path / "spool.sqlite", buses=buses_of(sim), collection=QUICK_RETRY,
            catch_up_days=0,
            extra=clock_table(clock) + f"[metrics]\nport = {port}\nrefresh_interval_s = 1\n",
        )  # fmt: skip
        daemon = await build(config, clock)
        metrics = daemon.metrics
        assert metrics is not None
        try:
            async with running(daemon):

                async def collected() -> bool:
                    return daemon.collector.statistics().stats.readings_new > 0

                await wait_for("collection despite the taken port", collected, daemon)
                assert metrics.address is None
                errors = [r for r in caplog.records if r.levelno == logging.ERROR]
                assert len(errors) == 1
                assert f"127.0.0.1:{port}" in errors[0].getMessage()
                assert "in use" in errors[0].getMessage()

                taken.close()

                async def bound() -> bool:
                    return metrics.address is not None

                await wait_for("the endpoint bound once the port was free", bound, daemon, 10)
                body = await scrape(metrics)
                assert value(body, "amigw_collector_stored_readings_total") > 0
                # Retries while the port stayed taken were not logged again as errors.
                assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        finally:
            taken.close()
    assert metrics.address is None  # closed with the daemon


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/ensure-promtool.sh)"
)
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """Each expression, with Grafana's variables filled in, loads as a recording rule."""
    assert PROMTOOL is not None
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    rules = [
        {"record": f"amigw:panel{panel['id']}:{target['refId']}", "expr": expr}
        for panel in board["panels"]
        for target in panel.get("targets", [])
        for expr in [target["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")]
    ]
    # JSON is YAML: promtool reads the rule file as it is.
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(amigw_[a-z_]+)`", text, re.MULTILINE))


@requires_mosquitto
def test_every_exported_metric_is_documented(scraped: Scraped) -> None:
    exported = set(re.findall(r"^# TYPE (\S+) ", scraped.text, re.MULTILINE))
    exported.discard("amigw_uplink_publish_latency_seconds_created")  # prometheus-client's own
    documented = documented_metrics()
    assert exported - documented == set()
    # What this district does not export: the PLC module's and the per-meter series.
    assert {
        n for n in documented - exported if not n.startswith(("amigw_plc_", "amigw_meter_"))
    } == set()


PLC_SCENARIO = f"""
name = "metrics-plc"
[simulation]
start = {START.isoformat()}
timezone = "Asia/Shanghai"
seed = 5
history_days = 2
[defaults]
bus = "plc"
[plc]
module_address = "000000000000"
[[meter_groups]]
first_address = "000000005001"
count = 4
"""


async def test_plc_module_counters(tmp_path: Path) -> None:
    scenario = scenario_from(PLC_SCENARIO)
    clock = ScaledClock(START, speed=1.0)
    district = build_district(scenario, clock)
    assert district.plc is not None
    settings = module_settings(
        district.plc, baud=115200, carrier_latency_s=0.002, turnaround_s=0.001
    )
    async with VirtualPlcModule(district, settings, archive=[]) as module:
        plc = {
            "device": module.path, "baud": 115200, "parity": "N", "mode": "concentrator",
            "frame_timeout_ms": 1000, "point_read_timeout_s": 2,
        }  # fmt: skip
        config = gateway_config(
            scenario, tmp_path / "spool.sqlite", catch_up_days=0, plc=plc,
            extra=clock_table(clock) + f"[metrics]\nport = {free_port()}\n",
        )  # fmt: skip
        daemon = await build(config, clock)
        metrics = daemon.metrics
        assert metrics is not None
        assert daemon.plc is not None
        async with running(daemon):

            async def day_done() -> bool:
                ledger = await daemon.spool.ledger()
                return bool(ledger) and all(e.state is LedgerState.DONE for e in ledger)

            await wait_for("the PLC district collected", day_done, daemon)
            await metrics.refresh()
            text = await scrape(metrics)
            stats = daemon.plc.statistics()
    assert stats.requests > 0
    assert value(text, "amigw_bus_requests_total", bus="plc") == stats.requests
    assert value(text, "amigw_bus_replies_total", bus="plc") == stats.replies
    assert value(text, "amigw_plc_frames_received_total") == stats.frames_in > 0
    assert value(text, "amigw_plc_frames_sent_total") == stats.frames_out > 0
    assert value(text, "amigw_plc_rounds_total") == 0  # concentrator-led: no router rounds
    assert value(text, "amigw_collection_success_ratio", district="district-1") == 1.0


# -- configuration ---------------------------------------------------------------------------

MINIMAL = """
[gateway]
id = "gw1"
[[bus]]
name = "rs485-1"
device = "/dev/ttyS1"
[[meter]]
address = "000000000001"
bus = "rs485-1"
"""


def test_metrics_defaults() -> None:
    m = parse_config(MINIMAL).metrics
    assert (m.enabled, m.listen, m.port, m.per_meter) == (True, "127.0.0.1", 9108, False)
    assert m.refresh_interval_s == 10.0
    assert parse_config(MINIMAL + "[metrics]\nlisten = '::'\n").metrics.listen == "::"


def test_bad_metrics_settings_name_their_keys() -> None:
    text = (
        MINIMAL + "[metrics]\nlisten = 'my host'\nport = 0\nrefresh_interval_s = 0.1\ncolour = 1\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "amigw.toml")
    assert info.value.lines() == [
        "amigw.toml: metrics.listen: listen must be an IP address (127.0.0.1, 0.0.0.0, ::1) or"
        " localhost, got 'my host'",
        "amigw.toml: metrics.port: Input should be greater than or equal to 1 (got 0)",
        "amigw.toml: metrics.refresh_interval_s: Input should be greater than or equal to 1"
        " (got 0.1)",
        "amigw.toml: metrics.colour: unknown key",
    ]


async def test_disabled_metrics_serve_nothing(tmp_path: Path) -> None:
    text = MINIMAL + f"[spool]\npath = '{tmp_path / 'spool.sqlite'}'\n[metrics]\nenabled = false\n"
    daemon = await build(parse_config(text))
    try:
        assert daemon.metrics is None
    finally:
        await daemon.spool.close()
