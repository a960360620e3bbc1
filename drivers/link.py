"""Byte links to an RS-485 bus: a local serial port (pyserial-asyncio-fast) or a TCP serial
server / DTU. Both are an asyncio stream pair behind the same small :class:`Link` API.

The link opens lazily, reopens after a failure, and maps every library or OS exception to
:class:`~drivers.errors.LinkError` — the one seam where they enter the driver layer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import LinkError

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass(frozen=True, slots=True)
class SerialSettings:
    device: str
    baud: int = 2400
    parity: str = "E"  # a pty rejects even parity: tests over ptys pass "N"
    bytesize: int = 8
    stopbits: int = 1


def serial_opener(settings: SerialSettings) -> Opener:
    async def open_serial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        import serial_asyncio_fast  # noqa: PLC0415 - imported where a serial port is really opened

        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=settings.device,
            baudrate=settings.baud,
            parity=settings.parity,
            bytesize=settings.bytesize,
            stopbits=settings.stopbits,
        )
        return reader, writer

    return open_serial


def tcp_opener(host: str, port: int, connect_timeout: float = 3.0) -> Opener:
    async def open_tcp() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout)

    return open_tcp


class Link:
    """An opened-on-demand byte stream with timeout-bounded reads."""

    def __init__(self, name: str, opener: Opener, *, char_time: float) -> None:
        self.name = name
        self._opener = opener
        self.char_time = char_time  # seconds per character on the wire (11 bits / baud)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closed = False  # closed by its owner: never reopened (a pty path may be reused)
        self.opens = 0

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def open(self) -> None:
        if self.is_open:
            return
        if self._closed:
            raise LinkError(f"{self.name}: the link was closed")
        try:
            self._reader, self._writer = await self._opener()
        except (OSError, TimeoutError, ValueError) as exc:
            raise LinkError(f"{self.name}: cannot open: {exc}") from exc
        except Exception as exc:  # pyserial raises its own SerialException (an IOError subclass)
            raise LinkError(f"{self.name}: cannot open: {exc}") from exc
        self.opens += 1

    async def write(self, data: bytes) -> None:
        await self.open()
        assert self._writer is not None
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, ConnectionError) as exc:
            await self._drop()
            raise LinkError(f"{self.name}: write failed: {exc}") from exc

    async def read_some(self, wait_s: float) -> bytes:
        """Whatever arrives within ``wait_s`` seconds (``b""`` when nothing does)."""
        await self.open()
        assert self._reader is not None
        try:
            data = await asyncio.wait_for(self._reader.read(4096), max(wait_s, 0.0))
        except TimeoutError:
            return b""
        except (OSError, ConnectionError) as exc:
            await self._drop()
            raise LinkError(f"{self.name}: read failed: {exc}") from exc
        if not data:
            await self._drop()
            raise LinkError(f"{self.name}: the other end closed the connection")
        return data

    def discard_input(self) -> int:
        """Drop bytes already received but not read (late replies, noise before a request)."""
        if self._reader is None:
            return 0
        # StreamReader has no public way to drop what it buffered.
        buffered: bytearray = getattr(self._reader, "_buffer", bytearray())
        n = len(buffered)
        buffered.clear()
        return n

    async def close(self) -> None:
        """Close for good: the link will not reopen after this."""
        self._closed = True
        await self._drop()

    async def _drop(self) -> None:
        """Let go of the port after a failure; the next use reopens it."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
