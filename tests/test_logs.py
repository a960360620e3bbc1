"""Structured logs: journald JSON lines or a console, bound context, levels, and no secrets.

The format follows the output (a real pty is a terminal, a pipe is not); the collector's
``bus`` and ``meter`` reach every line logged inside its work; per-logger levels apply and
reload; and a daemon run at DEBUG with a broker password set never writes the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import os
import pty
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog

from drivers.clock import ManualClock, ScaledClock
from gateway import logs
from gateway.collector.collector import Collector
from gateway.config import ConfigError, LoggingConfig, parse_config
from gateway.daemon import build
from simulator.channel import MemoryChannel
from simulator.run import start_simulation
from simulator.scenario import build_district
from spool import Spool

from .broker import MOSQUITTO_PASSWD, Broker, requires_mosquitto
from .districts import config_text, gateway_config, scenario_from

PASSWORD = "pw-Zq7-Kettle-41"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test configures the process's logging; put the root logger back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs.apply_levels(LoggingConfig())
    logs.REDACTOR.set_secrets(())
    structlog.reset_defaults()


def json_lines(text: str) -> list[tuple[int, dict[str, Any]]]:
    """``<N>{...}`` lines as (priority, object); anything else fails the test."""
    out = []
    for line in text.splitlines():
        assert line.startswith("<"), line
        prio, _, body = line[1:].partition(">")
        out.append((int(prio), json.loads(body)))
    return out


def configure_json(buffer: io.StringIO, **settings: Any) -> None:
    logs.configure(LoggingConfig(format="json", **settings), stream=buffer)


# -- format ------------------------------------------------------------------------------------


def test_json_lines_carry_the_journald_priority() -> None:
    buffer = io.StringIO()
    configure_json(buffer, level="debug")
    log = logging.getLogger("amigw.test")
    log.debug("d %s", 1)
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    structlog.get_logger("amigw.native").info("native", answer=42)
    lines = json_lines(buffer.getvalue())
    assert [p for p, _ in lines] == [7, 6, 4, 3, 2, 6]
    assert [o["event"] for _, o in lines] == ["d 1", "i", "w", "e", "c", "native"]
    first = lines[0][1]
    assert first["logger"] == "amigw.test"
    assert first["level"] == "debug"
    assert dt.datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    assert lines[-1][1]["answer"] == 42
    assert lines[-1][1]["logger"] == "amigw.native"


def test_exception_is_one_json_line_with_its_traceback() -> None:
    buffer = io.StringIO()
    configure_json(buffer)
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        logging.getLogger("amigw.test").exception("failed")
    [(prio, obj)] = json_lines(buffer.getvalue())
    assert prio == 3
    assert "ZeroDivisionError" in obj["exception"]


def test_console_on_a_terminal_and_json_on_a_pipe() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal:
            logs.configure(LoggingConfig(format="auto"), stream=terminal)
            logging.getLogger("amigw.test").warning("on the terminal")
            terminal.flush()
        time.sleep(0.05)
        shown = os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "on the terminal" in shown
    assert "[amigw.test]" in shown
    assert not shown.startswith("<")
    assert "{" not in shown

    read, write = os.pipe()
    with os.fdopen(read) as reader, os.fdopen(write, "w") as pipe:
        logs.configure(LoggingConfig(format="auto"), stream=pipe)
        logging.getLogger("amigw.test").warning("into a pipe")
        pipe.close()
        [(prio, obj)] = json_lines(reader.read())
    assert (prio, obj["event"]) == (4, "into a pipe")


# -- context ---------------------------------------------------------------------------------


async def test_bound_context_reaches_stdlib_lines_and_tasks() -> None:
    buffer = io.StringIO()
    configure_json(buffer)
    log = logging.getLogger("amigw.test")

    async def child() -> None:
        log.info("in a task")

    with structlog.contextvars.bound_contextvars(bus="rs485-1", meter="000000001001"):
        await asyncio.create_task(child())
    log.info("outside")
    inside, outside = (obj for _, obj in json_lines(buffer.getvalue()))
    assert (inside["bus"], inside["meter"]) == ("rs485-1", "000000001001")
    assert "bus" not in outside
    assert "meter" not in outside


SCENARIO = """
name = "logs"
[simulation]
start = 2025-06-01T08:00:00+08:00
timezone = "Asia/Shanghai"
seed = 11
history_days = 2
[defaults]
bus = "rs485-1"
[[buses]]
name = "rs485-1"
baud = 2400
[[buses]]
name = "rs485-2"
baud = 2400
[[meter_groups]]
first_address = "000000007001"
count = 3
[[meter_groups]]
first_address = "000000007101"
count = 2
bus = "rs485-2"
[[timeline]]
kind = "silent"
meters = ["000000007002", "000000007102"]
start = "+0h"
"""


async def test_collector_lines_name_their_bus_and_meter(tmp_path: Path) -> None:
    buffer = io.StringIO()
    configure_json(buffer)
    scenario = scenario_from(SCENARIO)
    clock = ManualClock(dt.datetime(2025, 6, 1, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai")))
    district = build_district(scenario, clock)
    gw = gateway_config(scenario, tmp_path / "spool.sqlite")
    spool = await Spool.open(gw.spool.path)
    channels: dict[str, Any] = {b.name: MemoryChannel(district, b.name, clock) for b in gw.bus}
    collector = Collector(gw, spool, channels, clock)
    task = asyncio.create_task(collector.run())
    try:
        deadline = time.monotonic() + 10
        while buffer.getvalue().count("no reply from") < 2:
            assert time.monotonic() < deadline, buffer.getvalue()
            await asyncio.sleep(0.02)
    finally:
        collector.stop()
        await asyncio.wait_for(task, 10)
        await spool.close()
    failures = [o for _, o in json_lines(buffer.getvalue()) if "no reply from" in o["event"]]
    assert {(o["bus"], o["meter"]) for o in failures} == {
        ("rs485-1", "000000007002"),
        ("rs485-2", "000000007102"),
    }
    # The planner works for no bus and no meter: its lines carry neither.
    planned = [o for _, o in json_lines(buffer.getvalue()) if o["event"].startswith("planned")]
    assert planned
    assert all("bus" not in o and "meter" not in o for o in planned)


# -- levels ------------------------------------------------------------------------------------


def test_levels_per_component_and_their_reload() -> None:
    buffer = io.StringIO()
    settings = LoggingConfig(level="warning", format="json", levels={"amigw.uplink": "debug"})
    logs.configure(settings, stream=buffer)
    logging.getLogger("amigw.uplink.session").debug("uplink detail")
    logging.getLogger("amigw.collector").info("collector chatter")
    logging.getLogger("amigw.collector").warning("collector warning")
    assert [o["event"] for _, o in json_lines(buffer.getvalue())] == [
        "uplink detail",
        "collector warning",
    ]
    # A reload with another table: the old override goes, the new one applies.
    logs.apply_levels(LoggingConfig(level="warning", levels={"amigw.collector": "info"}))
    buffer.seek(0)
    buffer.truncate()
    logging.getLogger("amigw.uplink.session").debug("uplink detail")
    logging.getLogger("amigw.collector").info("collector chatter")
    assert [o["event"] for _, o in json_lines(buffer.getvalue())] == ["collector chatter"]
    # The command line's --log-level overrides the file's level.
    logs.apply_levels(LoggingConfig(level="warning"), "DEBUG")
    assert logging.getLogger().level == logging.DEBUG


def test_configured_for_a_while_then_as_before() -> None:
    """``amigw demo`` runs the daemon inside a longer process: inside, the daemon's settings
    and secrets; after, the process logs exactly as before and the daemon's stream hears
    nothing more."""
    outer = io.StringIO()
    logs.configure(
        LoggingConfig(level="warning", format="json", levels={"amigw.uplink": "debug"}),
        stream=outer,
        secrets=["outer-Secret-77"],
    )
    inner = io.StringIO()
    settings = LoggingConfig(level="info", format="json", levels={"amigw.spool": "error"})
    with logs.configured(settings, stream=inner, secrets=["inner-Secret-88"]):
        logging.getLogger("amigw.collector").info("inside with inner-Secret-88")
        logging.getLogger("amigw.spool").warning("spool below its error level")
        logging.getLogger("amigw.uplink").debug("uplink no longer at debug")
    log = logging.getLogger("amigw.collector")
    log.warning("after: outer-Secret-77 and inner-Secret-88")
    log.info("after, below the outer level")
    logging.getLogger("amigw.uplink").debug("uplink at debug again")
    logging.getLogger("amigw.spool").warning("spool inherits again")
    assert [o["event"] for _, o in json_lines(inner.getvalue())] == [f"inside with {logs.MASK}"]
    assert [o["event"] for _, o in json_lines(outer.getvalue())] == [
        f"after: {logs.MASK} and inner-Secret-88",
        "uplink at debug again",
        "spool inherits again",
    ]
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("amigw.spool").level == logging.NOTSET


def test_logging_table_is_validated_with_key_paths() -> None:
    ok = parse_config(
        '[gateway]\nid = "gw"\n[logging]\nlevel = "DEBUG"\nformat = "json"\n'
        '[logging.levels]\n"amigw.uplink" = "Warning"\naiosqlite = "error"\n',
        "<test>",
    )
    assert ok.logging.level == "debug"
    assert ok.logging.levels == {"amigw.uplink": "warning", "aiosqlite": "error"}
    assert parse_config('[gateway]\nid = "gw"\n', "<test>").logging == LoggingConfig()
    with pytest.raises(ConfigError) as bad:
        parse_config(
            '[gateway]\nid = "gw"\n[logging]\nlevel = "loud"\nformat = "xml"\n'
            '[logging.levels]\n"amigw uplink" = "debug"\n',
            "<test>",
        )
    text = "\n".join(bad.value.lines())
    assert "logging.level" in text
    assert "logging.format" in text
    assert "logging.levels" in text
    assert "'amigw uplink' is not a logger name" in text


# -- secrets -----------------------------------------------------------------------------------

SECRET_CONFIG = f"""
[gateway]
id = "gw"
[uplink]
host = "broker.example"
username = "gw-user"
password = "{PASSWORD}"
[uplink.tls]
cert = "/etc/amigw/client.crt"
key = "/etc/amigw/client-private.key"
"""


def test_config_secrets_are_the_password_and_the_key_paths() -> None:
    config = parse_config(SECRET_CONFIG, "<test>")
    found = logs.config_secrets(config)
    assert PASSWORD in found
    assert "/etc/amigw/client-private.key" in found
    # The certificate is public and the user name is not a secret.
    assert "/etc/amigw/client.crt" not in found
    assert "gw-user" not in found
    assert "broker.example" not in found


def test_secrets_are_masked_wherever_they_appear() -> None:
    buffer = io.StringIO()
    config = parse_config(SECRET_CONFIG, "<test>")
    logs.configure(LoggingConfig(format="json"), stream=buffer, secrets=logs.config_secrets(config))
    log = logging.getLogger("amigw.test")
    log.info("connecting with %s", PASSWORD)
    log.warning("cannot read /etc/amigw/client-private.key: permission denied")
    structlog.get_logger("amigw.native").info(
        "login", password="anything", details={"token": "t0k3n-value", "user": "gw-user"}
    )
    try:
        raise RuntimeError(f"broker refused {PASSWORD!r}")
    except RuntimeError:
        log.exception("uplink failed")
    out = buffer.getvalue()
    assert PASSWORD not in out
    assert "client-private.key" not in out
    assert "anything" not in out
    assert "t0k3n-value" not in out
    events = [o for _, o in json_lines(out)]
    assert events[0]["event"] == f"connecting with {logs.MASK}"
    assert events[2]["password"] == logs.MASK
    assert events[2]["details"] == {"token": logs.MASK, "user": "gw-user"}
    assert logs.MASK in events[3]["exception"]


def test_escaped_and_short_secrets() -> None:
    buffer = io.StringIO()
    logs.configure(LoggingConfig(format="json"), stream=buffer, secrets=['q"uo\\te-pass', "000000"])
    log = logging.getLogger("amigw.test")
    log.info('got q"uo\\te-pass back')
    # A six-digit meter password is masked as a word, never inside a meter address.
    log.info("relay password 000000 for meter 000000100001")
    out = buffer.getvalue()
    assert "uo\\\\te-pass" not in out
    assert 'q"uo' not in out
    second = json_lines(out)[1][1]["event"]
    assert second == f"relay password {logs.MASK} for meter 000000100001"


def test_secret_names() -> None:
    for name in ("password", "key", "tls_key", "key_file", "hmac_keys", "api_token", "Secret"):
        assert logs.secret_name(name), name
    for name in ("keepalive_s", "monkey", "keyboard", "host", "user"):
        assert not logs.secret_name(name), name


@requires_mosquitto
@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed")
async def test_daemon_at_debug_never_writes_the_password(tmp_path: Path) -> None:
    """The broker checks the password, so it is really used; the spool's directory is named
    after it, so the daemon really logs it (the start-up line names the spool) and must
    mask it."""
    scenario = scenario_from(SCENARIO)
    clock = ScaledClock(dt.datetime(2025, 6, 1, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai")))
    with Broker.running(tmp_path / "broker", passwords={"gw": PASSWORD}) as broker:
        async with start_simulation(scenario, clock) as sim:
            buses = {
                name: {
                    "kind": "serial",
                    "device": sim.endpoint(name).path,
                    "baud": 2400,
                    "parity": "N",
                    "timeout_ms": 300,
                }
                for name in ("rs485-1", "rs485-2")
            }
            tables = (
                f'[clock]\nmode = "scaled"\norigin = "{clock.origin.isoformat()}"\n'
                f"speed = 1.0\nreal_origin = {clock.real_origin!r}\n"
                f'[uplink]\nhost = "{broker.host}"\nport = {broker.port}\n'
                f'username = "gw"\npassword = "{PASSWORD}"\nbatch_max_age_s = 0.2\n'
                '[logging]\nlevel = "debug"\n'
            )
            spool = tmp_path / PASSWORD / "spool.sqlite"
            config = tmp_path / "amigw.toml"
            config.write_text(config_text(scenario, spool, buses=buses, extra=tables))
            out = tmp_path / "out.log"
            with out.open("wb") as sink:
                daemon = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway", "run", "-c", str(config),
                    stdout=sink, stderr=sink,
                )  # fmt: skip
            try:
                # Connected with the password, and readings went out over MQTT.
                deadline = time.monotonic() + 30
                while not _published(out):
                    assert daemon.returncode is None, out.read_text()
                    assert time.monotonic() < deadline, out.read_text()[-3000:]
                    await asyncio.sleep(0.1)
                daemon.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(daemon.wait(), 20) == 0, out.read_text()[-3000:]
            finally:
                with contextlib.suppress(ProcessLookupError):
                    daemon.kill()
                await daemon.wait()
    text = out.read_text()
    assert PASSWORD not in text
    lines = json_lines(text)
    assert any(p == 7 for p, _ in lines), "nothing was logged at DEBUG"
    started = [o["event"] for _, o in lines if o["event"].startswith("amigw gw-test started")]
    assert started
    assert f"{logs.MASK}/spool.sqlite" in started[0]


def _published(out: Path) -> bool:
    return out.exists() and any("Received PUBACK" in line for line in out.read_text().splitlines())


async def test_command_key_secrets_are_masked_once_the_daemon_loaded_them(tmp_path: Path) -> None:
    hex_secret = "9f" * 16 + "0a1b2c3d" * 4
    text_secret = "a-text-secret-of-32-characters!!"
    keys = tmp_path / "command-keys.toml"
    keys.write_text(f'[keys.hex]\nsecret = "{hex_secret}"\n[keys.text]\nsecret = "{text_secret}"\n')
    keys.chmod(0o600)
    scenario = scenario_from(SCENARIO)
    text = config_text(scenario, tmp_path / "spool.sqlite")
    text += f'[commands]\nenabled = true\nkey_file = "{keys}"\n'
    config = parse_config(text, "<test>")
    buffer = io.StringIO()
    logs.configure(config.logging, stream=buffer, secrets=logs.config_secrets(config))
    log = logging.getLogger("amigw.test")
    log.info("before %s", text_secret)
    daemon = await build(config)
    try:
        log.info("after %s %s %s", text_secret, hex_secret, hex_secret.upper())
    finally:
        await daemon.spool.close()
    before, after = (
        o["event"] for _, o in json_lines(buffer.getvalue()) if o["logger"] == "amigw.test"
    )
    # Only the daemon, loading the key file, learns these secrets.
    assert before == f"before {text_secret}"
    assert after == f"after {logs.MASK} {logs.MASK} {logs.MASK}"
    # The key file's path is masked from the configuration alone.
    log.info("reading %s", keys)
    assert str(keys) not in buffer.getvalue()
