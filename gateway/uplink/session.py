"""One MQTT connection (aiomqtt), configured from ``[uplink]``, with every aiomqtt and paho
exception mapped to :mod:`gateway.uplink.errors` here and nowhere else.

What the connection is set up for:

* MQTT 3.1.1 or 5; clean or persistent session (3.1.1: ``clean_session=False``; 5: no clean
  start and a session expiry), so head-end acks sent while we were away are not lost;
* TLS from our own :class:`ssl.SSLContext` (CA, client certificate, TLS >= 1.2);
* username/password (the password lives in a ``repr=False`` field and is never logged);
* a last will: the retained ``offline`` status;
* a window: paho may have ``window`` QoS 1 messages on the wire (its default is 20, which would
  queue the rest silently), aiomqtt's "pending calls" warning threshold sits above the window
  (it would warn on every publish otherwise), and ``TCP_NODELAY`` is set so small acks and
  publishes do not wait out Nagle against a broker's delayed ACKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .errors import BrokerRefusedError, BrokerUnavailableError, TlsSetupError, UplinkError

log = logging.getLogger("amigw.uplink.session")

# CONNACK refusals that retrying will not fix (3.1.1 return codes; MQTT 5 reason codes).
_REFUSED_V311: Final = frozenset({1, 2, 4, 5})
_REFUSED_V5: Final = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})
_MAX_PENDING_WARNING_MARGIN: Final = 50


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class SessionSettings:
    host: str
    port: int
    client_id: str
    will_topic: str
    will_payload: bytes
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None
    mqtt_version: str = "3.1.1"
    keepalive_s: int = 60
    persistent: bool = False
    session_expiry_s: int = 7 * 86400
    window: int = 100
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 30.0


def translate(exc: BaseException, doing: str) -> UplinkError:
    """Map an aiomqtt/paho/socket/ssl exception to ours (the only place this happens)."""
    if isinstance(exc, UplinkError):
        return exc
    if isinstance(exc, aiomqtt.MqttCodeError):
        rc = exc.rc
        # paho 2 reports CONNACK refusals as MQTT 5 reason codes whatever the protocol.
        refused = isinstance(exc, MqttConnectError) and (
            (isinstance(rc, ReasonCode) and rc.value in _REFUSED_V5)
            or (isinstance(rc, int) and rc in _REFUSED_V311)
        )
        if refused:
            return BrokerRefusedError(f"{doing}: the broker refused the connection: {exc}")
        return BrokerUnavailableError(f"{doing}: {exc}")
    if isinstance(exc, aiomqtt.MqttError | OSError | TimeoutError):
        text = str(exc) or type(exc).__name__
        return BrokerUnavailableError(f"{doing}: {text}")
    return UplinkError(f"{doing}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _mapped(doing: str) -> Iterator[None]:
    try:
        yield
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise translate(exc, doing) from exc


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client context: verify the broker against ``ca`` (or the system store), present our
    certificate when given. Raises :class:`TlsSetupError` naming the file that failed."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if tls.ca is None else str(tls.ca)
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert is not None:
            context.load_cert_chain(str(tls.cert), None if tls.key is None else str(tls.key))
    except (OSError, ssl.SSLError, ValueError) as exc:
        files = ", ".join(str(p) for p in (tls.ca, tls.cert, tls.key) if p is not None)
        raise TlsSetupError(f"cannot load TLS files ({files}): {exc}") from exc
    if tls.insecure:
        context.check_hostname = False
    return context


class Session:
    """A connected client. Use :meth:`open`; leaving the context disconnects."""

    def __init__(self, client: aiomqtt.Client, settings: SessionSettings) -> None:
        self._client = client
        self.settings = settings

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: SessionSettings) -> AsyncIterator[Session]:
        """Connect (CONNACK received) and yield; on the way out disconnect, errors mapped.

        An :class:`UplinkError` raised inside the block is re-raised as it is, even when the
        disconnect fails too (the first failure is the one worth reporting).
        """
        context = None
        if settings.tls is not None:
            # Loading certificates reads files: keep it off the event loop.
            context = await asyncio.to_thread(tls_context, settings.tls)
        client = _client(settings, context)
        with _mapped(f"connect to {settings.host}:{settings.port}"):
            await client.__aenter__()
        try:
            yield cls(client, settings)
        except BaseException as exc:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                await client.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        with _mapped("disconnect"):
            await client.__aexit__(None, None, None)

    async def publish(
        self, topic: str, payload: bytes | bytearray, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish; with QoS 1 this returns once the broker's PUBACK arrived."""
        with _mapped(f"publish to {topic}"):
            await self._client.publish(
                topic, payload, qos=qos, retain=retain, timeout=self.settings.publish_timeout_s
            )

    async def subscribe(self, topic: str, *, qos: int = 1) -> None:
        with _mapped(f"subscribe to {topic}"):
            await self._client.subscribe(topic, qos=qos, timeout=self.settings.connect_timeout_s)

    async def messages(self) -> AsyncIterator[tuple[str, bytes]]:
        """Incoming messages as ``(topic, payload)`` until the connection ends (then raises)."""
        with _mapped("receive"):
            async for message in self._client.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray):
                    data = bytes(payload)
                else:
                    data = b"" if payload is None else str(payload).encode()
                yield message.topic.value, data


def _client(settings: SessionSettings, context: ssl.SSLContext | None) -> aiomqtt.Client:
    v5 = settings.mqtt_version == "5"
    properties = None
    if v5 and settings.persistent:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = settings.session_expiry_s
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        identifier=settings.client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        will=aiomqtt.Will(settings.will_topic, settings.will_payload, qos=1, retain=True),
        # paho refuses clean_session with MQTT 5, where clean_start says the same thing.
        clean_session=None if v5 else not settings.persistent,
        clean_start=(not settings.persistent) if v5 else MQTT_CLEAN_START_FIRST_ONLY,
        timeout=settings.connect_timeout_s,
        keepalive=settings.keepalive_s,
        max_inflight_messages=settings.window,
        properties=properties,
        tls_context=context,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        logger=logging.getLogger("amigw.uplink.mqtt"),
    )
    client.pending_calls_threshold = settings.window + _MAX_PENDING_WARNING_MARGIN
    return client
