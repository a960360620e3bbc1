"""The uplink against a real mosquitto started here: delivery in order with valid payloads, a
broker outage mid-drain, TLS with a client certificate, username/password, head-end acks (with
a persistent session, MQTT 3.1.1 and 5), and the last will when ``amigw run`` is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.clock import SystemClock
from gateway.config import UplinkConfig, UplinkTlsConfig
from gateway.uplink import Uplink
from gateway.uplink.payloads import ack_payload, parse_batch
from gateway.uplink.publisher import ACK_DELAY_S
from gateway.uplink.reconnect import RealTimer
from gateway.uplink.session import TlsSettings, tls_context
from spool import Event, Outbox, Quality, Reading, ReadingKind, ReadingValue, Spool
from tests.broker import (
    Broker,
    Delivery,
    Subscriber,
    TlsFiles,
    make_tls_files,
    requires_mosquitto,
    requires_openssl,
    spool_keys,
)

pytestmark = [pytest.mark.broker, requires_mosquitto]

ROOT = Path(__file__).resolve().parents[1]
CST = timezone(timedelta(hours=8))
T0 = datetime(2024, 5, 1, tzinfo=CST)
GW = "gw-test"


def readings(start: int, n: int) -> list[Reading]:
    read = datetime(2024, 6, 1, tzinfo=UTC)
    return [
        Reading(
            f"{i % 250:012d}",
            "05060101",
            T0 + timedelta(days=i // 250),
            read,
            {"total": ReadingValue(Decimal(f"{i}.00"), "kWh")},
            Quality.OK,
            ReadingKind.DAILY_FROZEN,
            "rs485-1",
        )
        for i in range(start, start + n)
    ]


def config(broker: Broker, **overrides: Any) -> UplinkConfig:
    settings: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "batch_max_records": 50,
        "batch_max_age_s": 0.05,
        "window": 20,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "drain_records_per_s": 0,
        "connect_timeout_s": 3,
        "publish_timeout_s": 5,
    }
    settings.update(overrides)
    return UplinkConfig(**settings)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker.running(tmp_path / "broker") as b:
        yield b


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        uplink.stop()
        await asyncio.wait_for(task, 20)


def batches_on(sub: Subscriber, stream: str) -> list[Any]:
    return [parse_batch(m.payload) for m in sub.on(f"/{stream}")]


def records_on(sub: Subscriber, stream: str) -> int:
    return len({tuple(r["key"]) for b in batches_on(sub, stream) for r in b.records})


async def test_delivers_everything_in_order_with_valid_payloads_and_status(
    broker: Broker, spool: Spool, tmp_path: Path
) -> None:
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    await spool.write_readings(readings(0, 730))
    await spool.write_events(
        [Event("rs485-1", "time_sync", "", T0 + timedelta(minutes=i)) for i in range(7)]
    )
    uplink = Uplink(config(broker), GW, spool, SystemClock())
    async with Subscriber(broker, f"amigw/{GW}/#") as sub:
        async with running(uplink):
            await sub.wait_for(lambda: records_on(sub, "readings") == 730)
            await sub.wait_for(lambda: records_on(sub, "events") == 7)
            await asyncio.sleep(0.2)
            assert await uplink.outbox.empty()
        await sub.wait_for(lambda: any(b"offline" in m.payload for m in sub.on("/status")))
    delivery = Delivery.of(sub.messages)
    assert delivery.first_order == await spool_keys(tmp_path / "spool.sqlite")
    assert delivery.duplicated == set()
    # Full batches go at once; the short ones (7 events, 30 readings) once they are old enough.
    sizes = sorted(len(parse_batch(p).records) for p in delivery.seqs.values())
    assert sizes == [7, 30] + [50] * 14
    for m in sub.messages:
        name = m.topic.rsplit("/", 1)[1]
        schema = json.loads((ROOT / "etc" / "schema" / f"{name}.json").read_text())
        errors = list(Draft202012Validator(schema).iter_errors(json.loads(m.payload)))
        assert not errors, (m.topic, errors[0].message)
    status = [json.loads(m.payload) for m in sub.on("/status")]
    assert status[0]["state"] == "online"
    assert status[0]["spool"]["depth"] == 737
    assert (status[-1]["state"], status[-1]["reason"]) == ("offline", "shutdown")
    stats = uplink.statistics()
    assert (stats.batches_acked, stats.records_acked, stats.connects) == (16, 737, 1)


class _AckDelayNeverEnds(RealTimer):
    """Real time, except that the uplink's wait before committing acknowledgements on their own
    never ends: whatever gets committed is committed by a cut or at once when idle."""

    async def sleep(self, seconds: float) -> None:
        if seconds == ACK_DELAY_S:
            await asyncio.Event().wait()
        await super().sleep(seconds)


async def test_acknowledgements_commit_with_cuts_and_at_once_when_idle(
    broker: Broker, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.uplink.feed.IDLE_POLL_S", 600.0)  # no idle cut takes them
    await spool.write_readings(readings(0, 2000))  # forty batches, two windows of twenty
    committed: list[int] = []
    settings = config(broker, batch_max_age_s=0.2)
    uplink = Uplink(settings, GW, spool, SystemClock(), timer=_AckDelayNeverEnds(),
                    on_acknowledged=committed.extend)  # fmt: skip
    async with running(uplink):
        await wait_until(lambda: len(committed) == 40)
        assert await uplink.outbox.empty()
        # Later records, drained after an idle spell, are committed as soon as they are acked.
        await spool.write_readings(readings(2000, 100))
        await wait_until(lambda: len(committed) == 42)
        assert await uplink.outbox.empty()
    assert sorted(committed) == list(range(1, 43))


async def test_broker_outage_mid_drain_loses_nothing(
    broker: Broker, spool: Spool, tmp_path: Path
) -> None:
    await spool.write_readings(readings(0, 6000))
    uplink = Uplink(config(broker, drain_records_per_s=4000), GW, spool, SystemClock())
    async with Subscriber(broker, f"amigw/{GW}/#") as sub, running(uplink):
        await sub.wait_for(lambda: records_on(sub, "readings") >= 1000)
        broker.stop()  # mid-drain, with batches in flight
        assert records_on(sub, "readings") < 6000
        await spool.write_readings(readings(6000, 500))  # collection goes on meanwhile
        await asyncio.sleep(1.0)
        broker.start()
        await sub.wait_for(lambda: records_on(sub, "readings") == 6500, within=30)
        await asyncio.sleep(0.3)
        assert await uplink.outbox.empty()
    stats = uplink.statistics()
    assert stats.connects >= 2
    assert stats.connect_failures >= 1
    delivery = Delivery.of(sub.messages)
    # Every record, first seen in the order stored; any duplicate is a whole resent batch.
    assert delivery.first_order == await spool_keys(tmp_path / "spool.sqlite")


@requires_openssl
async def test_tls_with_client_certificate(tmp_path: Path, spool: Spool) -> None:
    files: TlsFiles = make_tls_files(tmp_path / "tls")
    await spool.write_readings(readings(0, 120))
    with Broker.running(tmp_path / "tls-broker", tls=files) as broker:
        client_tls = tls_context(TlsSettings(files.ca, files.client_cert, files.client_key))
        tls = UplinkTlsConfig(ca=files.ca, cert=files.client_cert, key=files.client_key)
        async with Subscriber(broker, f"amigw/{GW}/#", tls_context=client_tls) as sub:
            # Without a client certificate the broker refuses the handshake: retried, counted.
            # (With TLS 1.3 the refusal comes after the handshake: the connect attempt then
            # waits out connect_timeout_s for a CONNACK that never comes.)
            no_cert = UplinkTlsConfig(ca=files.ca)
            anonymous = Uplink(
                config(broker, tls=no_cert, connect_timeout_s=0.5), GW, spool, SystemClock()
            )
            async with running(anonymous):
                for _ in range(100):
                    if anonymous.statistics().connect_failures:
                        break
                    await asyncio.sleep(0.05)
            assert anonymous.statistics().connects == 0
            assert anonymous.statistics().last_error is not None
            uplink = Uplink(config(broker, tls=tls), GW, spool, SystemClock())
            async with running(uplink):
                await sub.wait_for(lambda: records_on(sub, "readings") == 120)
            assert uplink.statistics().connects == 1


async def test_username_and_password(
    tmp_path: Path, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    await spool.write_readings(readings(0, 60))
    caplog.set_level(logging.DEBUG)
    with Broker.running(tmp_path / "pw-broker", passwords={"gw": "right-pw"}) as broker:
        wrong = Uplink(config(broker, username="gw", password="wrong-pw"), GW, spool, SystemClock())
        async with running(wrong):
            for _ in range(100):
                if wrong.statistics().connect_failures:
                    break
                await asyncio.sleep(0.05)
        assert wrong.statistics().connects == 0
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert refused
        assert refused[0].levelno == logging.ERROR
        right = Uplink(config(broker, username="gw", password="right-pw"), GW, spool, SystemClock())
        async with running(right):
            for _ in range(100):
                if await right.outbox.empty():
                    break
                await asyncio.sleep(0.05)
        assert right.statistics().records_acked == 60
    assert "right-pw" not in caplog.text
    assert "wrong-pw" not in caplog.text


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_headend_acks_with_persistent_session(
    broker: Broker, tmp_path: Path, version: str
) -> None:
    path = tmp_path / "spool.sqlite"
    settings = config(
        broker,
        ack="headend",
        headend_ack_timeout_s=0.5,
        mqtt_version=version,
        persistent_session=True,
        client_id=f"amigw-{GW}-{version}",
    )
    async with Spool.connect(path) as spool:
        await spool.write_readings(readings(0, 100))  # two batches
        uplink = Uplink(settings, GW, spool, SystemClock())
        async with Subscriber(broker, f"amigw/{GW}/+", client_id=f"headend-{version}") as head:
            async with running(uplink):
                await head.wait_for(lambda: len(batches_on(head, "readings")) >= 2)
                first, second = (b.seq for b in batches_on(head, "readings")[:2])
                await asyncio.sleep(0.2)
                # PUBACKs arrived, yet nothing leaves the outbox before the head-end says so.
                assert [r.seq for r in await uplink.outbox.open_batches()] == [first, second]
                await publish(broker, f"amigw/{GW}/ack", b"not json at all")
                await publish(broker, f"amigw/{GW}/ack", ack_payload([first]))
                await wait_until(lambda: uplink.statistics().headend_acks == 1)
                await asyncio.sleep(0.1)
                assert [r.seq for r in await uplink.outbox.open_batches()] == [second]
                # Unanswered, the second batch is sent again (same number) after the timeout.
                await head.wait_for(
                    lambda: [b.seq for b in batches_on(head, "readings")].count(second) >= 2
                )
            assert uplink.statistics().bad_acks == 1
            # Gateway offline: the head-end's ack waits in the persistent session.
            await publish(broker, f"amigw/{GW}/ack", json.dumps(second).encode())
        again = Uplink(settings, GW, spool, SystemClock())
        async with running(again):
            await wait_until(lambda: again.statistics().headend_acks >= 1)
            for _ in range(50):
                if await again.outbox.empty():
                    break
                await asyncio.sleep(0.05)
            assert await again.outbox.empty()


async def test_last_will_when_amigw_run_is_killed(broker: Broker, tmp_path: Path) -> None:
    """The real daemon (``amigw run``, no buses): drains what the spool holds, then SIGKILL."""
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path) as spool:
        await spool.write_readings(readings(0, 75))
    toml = tmp_path / "amigw.toml"
    toml.write_text(
        f'[gateway]\nid = "{GW}"\n[spool]\npath = "{path}"\n'
        f'[uplink]\nhost = "{broker.host}"\nport = {broker.port}\nbatch_max_age_s = 0.1\n'
        "keepalive_s = 5\n"
    )
    async with Subscriber(broker, f"amigw/{GW}/#") as sub:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from gateway.cli import run; run()", "run", "-c", str(toml),
            cwd=ROOT, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            try:
                await sub.wait_for(lambda: records_on(sub, "readings") == 75, within=15)
            except TimeoutError:
                process.kill()
                _, err = await process.communicate()
                pytest.fail(f"amigw run did not deliver: {err.decode()[-2000:]}")
            online = json.loads(sub.on("/status")[0].payload)
            assert (online["state"], online["version"]) == ("online", "0.1.0")
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await sub.wait_for(lambda: len(sub.on("/status")) >= 2)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    will = json.loads(sub.on("/status")[-1].payload)
    assert (will["state"], will["reason"]) == ("offline", "connection lost")
    # Retained: a head-end that subscribes later still sees the gateway is offline.
    async with Subscriber(broker, f"amigw/{GW}/status", client_id="late") as late:
        await late.wait_for(lambda: bool(late.messages))
    assert late.messages[0].retain
    assert json.loads(late.messages[0].payload)["state"] == "offline"
    # Killed right after delivering: batches whose ack was not committed yet are still open and
    # will be sent again at the next start (a duplicate, never a loss).
    delivered = set(Delivery.of(sub.messages).seqs)
    async with Spool.connect(path) as spool, Outbox(spool) as outbox:
        assert {r.seq for r in await outbox.open_batches()} <= delivered
        assert await outbox.waiting(1) == {}


async def publish(broker: Broker, topic: str, payload: bytes) -> None:
    import aiomqtt  # noqa: PLC0415

    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1)


async def wait_until(condition: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        # Polls a statistics counter: the uplink offers no event for it, on purpose.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
