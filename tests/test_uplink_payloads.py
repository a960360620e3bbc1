"""Payloads against their JSON Schemas (real ones, rendered from a real spool), the examples in
docs/uplink.md, head-end acks, the [uplink] configuration, and the small parts of the uplink
that need no broker: back-off, pacing, DI names, the exception seam, TLS files."""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from jsonschema import Draft202012Validator
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import ConfigError, parse_config
from gateway.uplink import (
    BrokerRefusedError,
    BrokerUnavailableError,
    PayloadError,
    TlsSetupError,
    di_name,
)
from gateway.uplink import status as status_module
from gateway.uplink.pacing import Pacer
from gateway.uplink.payloads import (
    BatchEncoder,
    Topics,
    ack_payload,
    parse_ack,
    status_payload,
)
from gateway.uplink.reconnect import Backoff
from gateway.uplink.session import TlsSettings, tls_context, translate
from gateway.uplink.status import UplinkStatistics
from spool import (
    Alarm,
    Event,
    LedgerEntry,
    LedgerState,
    Outbox,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Severity,
    Spool,
    Stream,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "etc" / "schema"
CST = timezone(timedelta(hours=8))
NOW = datetime(2024, 5, 2, 0, 7, 12, 512000, tzinfo=UTC)


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid(name: str, payload: bytes | str | Any) -> None:
    doc = json.loads(payload) if isinstance(payload, bytes | str) else payload
    errors = sorted(validator(name).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


class FakeTimer:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


# -- batches rendered from a real spool ---------------------------------------------------------


async def test_every_batch_payload_validates_against_its_schema(spool: Spool) -> None:
    data_time = datetime(2024, 5, 2, tzinfo=CST)
    await spool.write_readings(
        [
            Reading("000000130495", "05060101", data_time, NOW,
                    {"total": ReadingValue(Decimal("3911.88"), "kWh"),
                     "sharp": ReadingValue(Decimal("0.00"), "kWh")},
                    Quality.OK, ReadingKind.DAILY_FROZEN, "rs485-1"),
            Reading("000000000414", "901F", data_time, NOW,
                    {"total": ReadingValue(Decimal("12.5"), "kWh"), "status": ReadingValue("0041"),
                     "count": ReadingValue(3), "relay_open": ReadingValue(False),
                     "missing": ReadingValue(None)},
                    Quality.UNVERIFIED, ReadingKind.DAILY_FROZEN, "dtu-1"),
        ]
    )  # fmt: skip
    await spool.write_events(
        [Event("rs485-1", "time_sync", "", NOW, {"meters": ["000000130495"], "max_drift_s": 75})]
    )
    await spool.write_alarms(
        [Alarm("000000130495", "reverse_energy", NOW - timedelta(days=1), NOW, NOW,
               Severity.MAJOR, {"delta": Decimal("-0.42")})]
    )  # fmt: skip
    entry = LedgerEntry.pending("000000130495", date(2024, 5, 2), "daily_frozen", now=NOW)
    await spool.ensure_ledger([entry])
    await spool.update_ledger(
        [entry.with_state(LedgerState.FAILED, now=NOW, reason="timeout", next_attempt=NOW)]
    )
    encoder = BatchEncoder("gw-0001")
    async with Outbox(spool, names=di_name) as outbox:
        take = await outbox.take(max_batches=10, max_records=50, flush=set(Stream), now=NOW)
        batches = await outbox.render(take.cut)
    assert {b.stream for b in batches} == set(Stream)
    for batch in batches:
        payload = encoder.encode(batch)
        assert_valid(batch.stream.value, payload)
        doc = json.loads(payload)
        assert (doc["gateway"], doc["stream"], doc["seq"]) == ("gw-0001", batch.stream, batch.seq)
    readings = json.loads(encoder.encode(next(b for b in batches if b.stream is Stream.READINGS)))
    first = readings["records"][0]
    assert first["name"] == "daily frozen forward active energy, 1 day ago"
    assert first["values"]["sharp"] == {"v": {"$dec": "0.00"}, "u": "kWh"}
    assert first["data_time"] == "2024-05-02T00:00:00+08:00"
    assert readings["records"][1]["name"] == "forward active energy, block"  # a 1997 DI


def test_a_binary_float_is_refused_by_the_readings_schema() -> None:
    record = {
        "key": ["000000130495", "05060101", 1714579200],
        "meter": "000000130495",
        "di": "05060101",
        "name": None,
        "kind": "daily_frozen",
        "data_time": "2024-05-02T00:00:00+08:00",
        "read_time": "2024-05-02T00:07:12.512000+00:00",
        "quality": "ok",
        "source": "rs485-1",
        "values": {"total": {"v": 3911.88, "u": "kWh"}},
    }
    doc = {"schema": "amigw.batch/1", "gateway": "g", "stream": "readings", "seq": 1,
           "count": 1, "records": [record]}  # fmt: skip
    assert list(validator("readings").iter_errors(doc))
    record["values"] = {"total": {"v": {"$dec": "3911.88"}, "u": "kWh"}}
    assert_valid("readings", doc)


# -- status, acks, commands ---------------------------------------------------------------------


async def test_status_payloads_validate(spool: Spool) -> None:
    stats = UplinkStatistics(True, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, None)
    async with Outbox(spool) as outbox:
        figures = await status_module.spool_figures(spool, outbox, NOW)
    online = status_module.online(
        gateway="gw-0001", version="0.1.0", now=NOW, since=NOW, spool=figures,
        uplink=stats, ack="broker", window=100,
    )  # fmt: skip
    assert_valid("status", online)
    doc = json.loads(online)
    assert doc["state"] == "online"
    assert doc["spool"]["depth"] == 0
    assert doc["spool"]["oldest_unsent_age_s"] is None
    will = status_module.offline(gateway="gw-0001", version="0.1.0", reason="connection lost")
    assert_valid("status", will)
    assert "time" not in json.loads(will)
    assert_valid(
        "status", status_module.offline(gateway="g", version="1", reason="shutdown", now=NOW)
    )
    # An online status must carry its figures.
    bare = status_payload(gateway="g", state="online", version="1", time=None)
    assert list(validator("status").iter_errors(json.loads(bare)))


ACKS = [
    (b"17", [17]),
    (b'{"schema": "amigw.ack/1", "seq": 17}', [17]),
    (b'{"schema": "amigw.ack/1", "gateway": "gw-0001", "seq": [17, 18]}', [17, 18]),
]
BAD_ACKS = [
    (b"", "not JSON"),
    (b"\xff", "not JSON"),
    (b"0", "positive integer"),
    (b"true", "positive integer"),
    (b'"17"', "positive integer"),
    (b'{"seq": 17}', "schema must be 'amigw.ack/1'"),
    (b'{"schema": "amigw.ack/1", "seq": []}', "positive integer"),
    (b'{"schema": "amigw.ack/1", "seq": [1, -2]}', "positive integer"),
]


@pytest.mark.parametrize(("payload", "seqs"), ACKS)
def test_ack_forms(payload: bytes, seqs: list[int]) -> None:
    assert parse_ack(payload) == seqs
    assert_valid("ack", payload)


@pytest.mark.parametrize(("payload", "error"), BAD_ACKS)
def test_bad_acks_are_refused_with_a_reason(payload: bytes, error: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(error)):
        parse_ack(payload)


def test_ack_payload_round_trip() -> None:
    assert parse_ack(ack_payload([3, 4])) == [3, 4]
    assert_valid("ack", ack_payload([3]))


def test_documented_examples_validate() -> None:
    """Every ```json block in docs/uplink.md whose first line names a schema validates."""
    text = (ROOT / "docs" / "uplink.md").read_text()
    blocks = re.findall(r"```json\n// schema: ([a-z-]+)\n(.*?)```", text, re.S)
    assert {name for name, _ in blocks} >= {
        "readings", "alarms", "events", "ledger", "status", "ack", "cmd", "cmd-result",
    }  # fmt: skip
    for name, body in blocks:
        assert_valid(name, json.loads(body))


def test_topics() -> None:
    t = Topics("amigw/tq-0001", "gw-0001")
    assert t.stream(Stream.READINGS) == "amigw/tq-0001/gw-0001/readings"
    assert (t.status, t.ack, t.cmd, t.cmd_result) == (
        "amigw/tq-0001/gw-0001/status",
        "amigw/tq-0001/gw-0001/ack",
        "amigw/tq-0001/gw-0001/cmd",
        "amigw/tq-0001/gw-0001/cmd/result",
    )


# -- configuration ------------------------------------------------------------------------------

UPLINK = '[gateway]\nid = "gw-0001"\n[uplink]\nhost = "broker.local"\n'


def test_uplink_defaults_and_secret_password() -> None:
    config = parse_config(UPLINK + 'password = "s3cret-pw"\n[uplink.tls]\nca = "/etc/ca.pem"\n')
    up = config.uplink
    assert up is not None
    assert (up.prefix, up.window, up.ack, up.mqtt_version, up.effective_port) == (
        "amigw", 100, "broker", "3.1.1", 8883,
    )  # fmt: skip
    assert "s3cret-pw" not in repr(config)
    assert "s3cret-pw" not in str(up.model_dump())
    assert up.password is not None
    assert up.password.get_secret_value() == "s3cret-pw"
    assert parse_config(UPLINK).uplink is not None
    assert parse_config(UPLINK).uplink.effective_port == 1883  # type: ignore[union-attr]
    assert parse_config('[gateway]\nid = "g"\n').uplink is None


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ('prefix = "amigw/#"', "uplink.prefix: topic prefix 'amigw/#' must be"),
        ('prefix = "/amigw"', "uplink.prefix: topic prefix '/amigw' must be"),
        ('ack = "never"', "uplink.ack: Input should be 'broker' or 'headend'"),
        ("window = 0", "uplink.window: Input should be greater than or equal to 1"),
        ("reconnect_min_s = 10\nreconnect_max_s = 5", "uplink: reconnect_max_s is below"),
        ('mqtt_version = "4"', "uplink.mqtt_version: Input should be '3.1.1' or '5'"),
        ("qos = 2", "uplink.qos: unknown key"),
        ('[uplink.tls]\ncert = "/c.pem"', "uplink.tls: a client certificate needs both"),
    ],
)
def test_bad_uplink_settings(extra: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(UPLINK + extra + "\n", "amigw.toml")
    assert any(error in line for line in info.value.lines()), info.value.lines()


# -- back-off, pacing, names, the exception seam ------------------------------------------------


async def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    timer = FakeTimer()
    backoff = Backoff(1.0, 30.0, timer=timer, rng=random.Random(7))
    delays = [await backoff.wait() for _ in range(8)]
    assert delays == timer.slept
    for n, delay in enumerate(delays):
        top = min(30.0, 2.0**n)
        assert top / 2 <= delay <= top
    assert max(delays[5:]) <= 30.0
    assert min(delays[5:]) >= 15.0  # capped, and never collapsing towards zero
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0
    with pytest.raises(ValueError, match="minimum"):
        Backoff(5.0, 1.0)


async def test_pacer_holds_a_backlog_to_its_rate() -> None:
    timer = FakeTimer()
    pacer = Pacer(1000.0, burst=200, timer=timer)
    assert await pacer.take(1000) == 0.0  # a full bucket (one second) goes at once
    waited = [await pacer.take(200) for _ in range(5)]
    assert waited == pytest.approx([0.2] * 5)
    assert timer.now == pytest.approx(
        1.0
    )  # 2000 records in 1 s of sleeping: 1000/s after the burst
    unpaced = Pacer(0.0, burst=200, timer=timer)
    assert await unpaced.take(10**6) == 0.0


def test_di_names() -> None:
    assert di_name("00010000") == "forward active energy, total"
    assert di_name("901F") == "forward active energy, block"
    assert di_name("EEEEEEEE") is None
    assert di_name("nothex!!") is None


def test_exception_seam() -> None:
    refused = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=134))
    assert isinstance(translate(refused, "connect"), BrokerRefusedError)
    busy = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=137))
    assert isinstance(translate(busy, "connect"), BrokerUnavailableError)
    assert isinstance(translate(MqttConnectError(5), "connect"), BrokerRefusedError)
    lost = translate(aiomqtt.MqttCodeError(7, "Unexpected disconnection"), "publish to t")
    assert isinstance(lost, BrokerUnavailableError)
    assert str(lost).startswith("publish to t: ")
    timeout = translate(aiomqtt.MqttError("Operation timed out"), "publish to t")
    assert str(timeout) == "publish to t: Operation timed out"
    assert isinstance(
        translate(ConnectionRefusedError(111, "refused"), "c"), BrokerUnavailableError
    )


def test_tls_files_that_cannot_be_loaded_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsSetupError, match=r"nope\.pem"):
        tls_context(TlsSettings(ca=missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsSetupError, match=r"garbage\.pem"):
        tls_context(TlsSettings(cert=garbage, key=garbage))
