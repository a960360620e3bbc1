"""Virtual buses that put a :class:`~simulator.district.District` on a wire the gateway can open.

* :class:`PtyBus` — an RS-485 segment over a real pty pair. The gateway opens :attr:`PtyBus.path`
  (the slave end, raw mode) like a USB-RS485 adapter; the simulator serves the master end from
  the event loop. A pty has no parity and no baud rate of its own (it rejects even parity), so
  nothing here sets either: the wire rate is imposed by pacing.
* :class:`TcpBus` — the same segment behind a serial server / DTU: a TCP listener on
  127.0.0.1 with a free port, the same pacing.
* :class:`MemoryBus` — no pty, no pacing: ``await bus.exchange(request) -> reply | None`` for
  benchmarks and fast tests.

Requests are cut from the byte stream with the 645 :class:`Dlt645Framer` (noise and FE preambles
are skipped; a half frame is flushed after an idle gap). One request is served at a time, as on
a half-duplex line. A reply starts after the bus turnaround (plus any slow-reply fault) and is
written at the real wire rate, 11 bits per byte (8E1): its last byte is never available before
``turnaround + bytes x 11 / baud`` after the request's last byte arrived. Wire timing uses
``time.monotonic`` and is never scaled by a simulated clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Self

from protocols.dlt645.frame import Frame
from protocols.dlt645.framer import Dlt645Framer

from .district import BusConfig, District

BITS_PER_BYTE: Final = 11  # start + 8 data + parity + stop
log = logging.getLogger(__name__)
_CHUNK_S: Final = 0.008  # write granularity while pacing


def wire_seconds(n_bytes: int, baud: int) -> float:
    return n_bytes * BITS_PER_BYTE / baud


def idle_gap(baud: int) -> float:
    """How long a silent line means "whatever is buffered will not be completed"."""
    return max(0.1, wire_seconds(30, baud))


async def paced_write(
    write: Callable[[bytes], Awaitable[None]], data: bytes, baud: int, start_at: float
) -> None:
    """Write ``data`` so that byte ``i`` is handed over no earlier than
    ``start_at + (i + 1) x 11 / baud`` (``time.monotonic`` seconds)."""
    byte_s = BITS_PER_BYTE / baud
    chunk = max(1, int(_CHUNK_S / byte_s))
    i = 0
    while i < len(data):
        j = min(len(data), i + chunk)
        delay = start_at + j * byte_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await write(data[i:j])
        i = j


class _Segment:
    """What the pty and TCP buses share: answer one frame, paced, one at a time."""

    def __init__(self, district: District, config: BusConfig) -> None:
        self.district = district
        self.config = config
        self.lock = asyncio.Lock()
        self.requests = 0
        self.replies = 0

    async def serve(
        self,
        frame: Frame,
        received_at: float,
        write: Callable[[bytes], Awaitable[None]],
        request_bytes: int = 0,
    ) -> None:
        """Answer ``frame``. The gateway's request reaches us through the pty or socket at once,
        but on a real line its ``request_bytes`` (preamble included) take their wire time
        before the meter has heard the last one: the reply is held back by that too."""
        async with self.lock:
            self.requests += 1
            reply = self.district.respond(self.config.name, frame)
            if reply is None:
                return
            self.replies += 1
            heard = received_at + wire_seconds(request_bytes, self.config.baud)
            start = heard + self.config.turnaround_ms / 1000 + reply.delay_s
            await paced_write(write, reply.data, self.config.baud, start)


class PtyBus:
    """An RS-485 segment over a pty pair; open :attr:`path` from the gateway."""

    def __init__(self, district: District, config: BusConfig) -> None:
        self.config = config
        self._segment = _Segment(district, config)
        self._framer = Dlt645Framer()
        self._queue: asyncio.Queue[tuple[Frame, float, int]] = asyncio.Queue()
        self._preamble_seen = 0
        self._master = -1
        self._slave = -1
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self.path = ""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._master, self._slave = os.openpty()
        # Raw on the slave side: no echo, no CR/LF translation, all 8 bits through. The slave fd
        # stays open here so the master never sees EIO while the gateway reopens the port.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        loop.add_reader(self._master, self._readable)
        self._task = asyncio.create_task(self._serve(), name=f"pty-bus-{self.config.name}")

    async def close(self) -> None:
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
        if self._idle is not None:
            self._idle.cancel()
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task  # re-raises what stopped the bus, if anything did
        finally:
            for fd in (self._master, self._slave):
                if fd >= 0:
                    os.close(fd)
            self._master = self._slave = -1

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO: nobody has the slave open; nothing to read
        now = time.monotonic()
        self._framer.feed(data)
        self._take_frames(now)
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(idle_gap(self.config.baud), self._flush)

    def _flush(self) -> None:
        self._idle = None
        self._framer.feed_eof()
        self._take_frames(time.monotonic())

    def _take_frames(self, now: float) -> None:
        for frame in self._framer.frames():
            self._queue.put_nowait((frame, now, self._request_bytes(frame)))

    def _request_bytes(self, frame: Frame) -> int:
        preamble = self._framer.statistics().preamble_bytes
        n = len(frame.raw) + preamble - self._preamble_seen
        self._preamble_seen = preamble
        return n

    async def _serve(self) -> None:
        while True:
            frame, received_at, request_bytes = await self._queue.get()
            try:
                await self._segment.serve(frame, received_at, self._write, request_bytes)
            except Exception:
                # A bug in the model, not bad input: say which request, then stop the bus
                # (close() re-raises it) rather than serve a district in an unknown state.
                log.exception("bus %s: answering %s failed", self.config.name, frame)
                raise

    async def _write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                await asyncio.sleep(0.002)  # the pty buffer is full: the gateway is not reading
                continue
            view = view[n:]

    @property
    def requests(self) -> int:
        return self._segment.requests


class TcpBus:
    """An RS-485 segment behind a serial server: connect to :attr:`host`:\\ :attr:`port`."""

    def __init__(self, district: District, config: BusConfig, host: str = "127.0.0.1") -> None:
        self.config = config
        self.host = host
        self.port = 0
        self._segment = _Segment(district, config)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Hang up on the gateways rather than cancel their handlers: asyncio logs a cancelled
        # connection handler as an error.
        for writer in list(self._writers):
            writer.close()
        tasks = list(self._clients)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=1.0)
            for task in stuck:
                task.cancel()
            for task in stuck:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self._writers.add(writer)
        framer = Dlt645Framer()
        gap = idle_gap(self.config.baud)
        preamble_seen = 0

        async def write(chunk: bytes) -> None:
            writer.write(chunk)
            await writer.drain()

        try:
            while True:
                waiting = framer.statistics().buffered > 0
                try:
                    data = await (
                        asyncio.wait_for(reader.read(4096), gap) if waiting else reader.read(4096)
                    )
                except TimeoutError:
                    framer.feed_eof()
                    data = b""
                else:
                    if not data:
                        return
                now = time.monotonic()
                framer.feed(data)
                for frame in framer.frames():
                    preamble = framer.statistics().preamble_bytes
                    sent = len(frame.raw) + preamble - preamble_seen
                    preamble_seen = preamble
                    await self._segment.serve(frame, now, write, sent)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._clients.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    @property
    def requests(self) -> int:
        return self._segment.requests


class MemoryBus:
    """A bus without a wire: requests in, replies out, no timing (faults still apply)."""

    def __init__(self, district: District, bus: str) -> None:
        self.district = district
        self.bus = bus

    def exchange_nowait(self, request: bytes) -> bytes | None:
        reply = self.district.respond_bytes(self.bus, request)
        return None if reply is None else reply.data

    async def exchange(self, request: bytes) -> bytes | None:
        return self.exchange_nowait(request)
