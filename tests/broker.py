"""A real mosquitto for tests: started on a free loopback port with a generated config in a
temporary directory, stopped, restarted on the same port, optionally with TLS and client
certificates (made with the ``openssl`` CLI), plus a subscriber that records what arrives.

Never touches a system broker: every broker here is its own process with its own persistence
file. Tests that need one are marked ``broker`` and skipped, with the reason, when no
mosquitto binary is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
)
OPENSSL = shutil.which("openssl")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")

requires_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None,
    reason="mosquitto is not installed (make broker / apt-get install mosquitto)",
)
requires_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, client_cn: str = "gw-tls") -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    assert OPENSSL is not None
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=directory, check=True, capture_output=True)

    # EC keys: generated in milliseconds where RSA takes a second each.
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-days", "2", "-subj", "/CN=amigw-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", client_cn)):
        run("req", *ec, "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt")  # fmt: skip
    return TlsFiles(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )


@dataclass
class Broker:
    """One mosquitto process; ``start``/``stop``/``restart`` keep the port and persistence."""

    directory: Path
    tls: TlsFiles | None = None
    passwords: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def _config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            # Run as root, mosquitto would drop to the "mosquitto" user, which cannot write
            # the test's directory; naming the current user keeps it as it is.
            f"user {getpass.getuser()}",
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.directory}/",
            "autosave_interval 0",
            # Unlimited queues: a test subscriber that falls behind must not lose messages.
            "max_queued_messages 0",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.passwords:
            assert MOSQUITTO_PASSWD is not None
            pw = self.directory / "passwd"
            pw.write_text("")
            for user, password in self.passwords.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                "tls_version tlsv1.2",
            ]
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 10.0) -> None:
        assert MOSQUITTO is not None
        assert self.process is None, "already running"
        config = self._config()
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.log_path.read_text() if self.log_path.exists() else ""
                self.process = None
                raise RuntimeError(f"mosquitto exited at start: {err} {log}")
            with contextlib.suppress(OSError):
                socket.create_connection((self.host, self.port), 0.2).close()
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence file) and wait."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    @classmethod
    @contextlib.contextmanager
    def running(cls, directory: Path, **kwargs: object) -> Iterator[Broker]:
        broker = cls(directory, **kwargs)  # type: ignore[arg-type]
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float


class Subscriber:
    """Subscribes to ``topic`` with QoS 1 on a persistent session (so nothing queued for it is
    lost while the broker restarts) and records every message, reconnecting as needed."""

    def __init__(
        self,
        broker: Broker,
        topic: str,
        *,
        client_id: str = "test-subscriber",
        tls_context: object = None,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.client_id = client_id
        self.tls_context = tls_context
        self.messages: list[Received] = []
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._new = asyncio.Event()

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self.client_id,
                    clean_session=False,
                    tls_context=self.tls_context,  # type: ignore[arg-type]
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        self.messages.append(
                            Received(message.topic.value, payload, message.retain, time.monotonic())
                        )
                        self._new.set()
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.05)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    async def wait_for(self, done: Callable[[], bool], within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met in {within} s ({len(self.messages)} msgs)")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), min(remaining, 0.2))

    async def quiet(self, for_s: float = 0.2, within: float = 10.0) -> None:
        """Until no message arrived for ``for_s`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            count = len(self.messages)
            await asyncio.sleep(for_s)
            if len(self.messages) == count:
                return
        raise TimeoutError("the subscriber never went quiet")


@dataclass
class Delivery:
    """What a subscriber saw of one gateway's batches, checked for the uplink's promises."""

    first_order: dict[str, list[tuple[object, ...]]]  # stream -> keys in first-arrival order
    seqs: dict[int, bytes]  # seq -> payload
    copies: dict[int, int]  # seq -> how many times it arrived

    @classmethod
    def of(cls, messages: list[Received]) -> Delivery:
        from gateway.uplink.payloads import parse_batch  # noqa: PLC0415

        first_order: dict[str, list[tuple[object, ...]]] = {}
        seqs: dict[int, bytes] = {}
        copies: dict[int, int] = {}
        key_seq: dict[tuple[object, ...], int] = {}
        for m in messages:
            if m.topic.endswith("/status"):
                continue
            batch = parse_batch(m.payload)
            copies[batch.seq] = copies.get(batch.seq, 0) + 1
            if batch.seq in seqs:
                # A duplicate is the same batch again, byte for byte.
                assert seqs[batch.seq] == m.payload, f"batch {batch.seq} changed on resend"
                continue
            seqs[batch.seq] = m.payload
            for record in batch.records:
                key = tuple(record["key"])
                assert key not in key_seq, f"record {key} in batches {key_seq[key]} and {batch.seq}"
                key_seq[key] = batch.seq
                first_order.setdefault(batch.stream.value, []).append(key)
        return cls(first_order, seqs, copies)

    @property
    def duplicated(self) -> set[int]:
        return {seq for seq, n in self.copies.items() if n > 1}


async def spool_keys(spool_path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every record's key per stream, in the order the spool stored them."""
    import aiosqlite  # noqa: PLC0415

    async with aiosqlite.connect(spool_path) as conn:
        readings = await conn.execute_fetchall(
            "SELECT meter, di, data_epoch FROM readings ORDER BY id"
        )
        events = await conn.execute_fetchall(
            "SELECT source, type, event_us, subject FROM events ORDER BY id"
        )
    out: dict[str, list[tuple[object, ...]]] = {}
    if readings:
        out["readings"] = [tuple(r) for r in readings]
    if events:
        out["events"] = [tuple(r) for r in events]
    return out
