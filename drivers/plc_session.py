"""The 1376.2 conversation with a PLC/HPLC module over a :class:`~drivers.link.Link`: the wire
layer under :class:`~drivers.plc.PlcDriver`.

* One receive loop cuts frames out of the byte stream with the :class:`Q13762Framer` (boot
  banners, half frames from a module that reset, bad checksums: skipped and counted), flushing
  a half frame after the line has been idle for 30 character times.
* Commands are numbered (R6, wrapping at 255). A reply (PRM=0) completes the command with its
  seq when it is an AFN00 confirm/deny or carries the command's AFN; a late reply to a command
  that timed out, or any other reply, is counted as unmatched and dropped.
* Frames the module initiates (PRM=1: reports, router requests, the power-up run mode) go to the
  ``on_request`` handler, which answers them through :meth:`Session.answer` (PRM=0, same seq).
* A failed link fails every waiting command with :class:`~drivers.errors.LinkError`; the loop
  keeps reading (the link reopens itself). Any other exception is a bug: it fails the waiting
  commands, ends the loop, and is re-raised by :meth:`Session.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeVar

from protocols.bcd import Address
from protocols.q13762 import (
    AddressField,
    Afn,
    CommMode,
    Control,
    DataUnit,
    Deny,
    DenyCode,
    Direction,
    DownlinkInfo,
    Empty,
    Frame,
    Prm,
    Q13762Framer,
    encode_frame,
)

from .errors import DriverError, LinkError, ReplyCorruptedError
from .link import Link

U = TypeVar("U", bound=DataUnit)

_RELINK_S: Final = 0.5  # pause before reading again from a link that failed


class ModuleError(DriverError):
    """The module denied a command (AFN00 F2); ``code`` says why."""

    reason = "module-deny"

    def __init__(self, message: str, code: DenyCode) -> None:
        super().__init__(message)
        self.code = code


class NotInNetworkError(ModuleError):
    """Deny 12: the meter is not in the module's archive or network (an archive mismatch)."""

    reason = "not-in-network"


class ModuleTimeoutError(LinkError):
    """The module did not answer a command in time: dead, resetting, or not a module. For
    the collector that is the link failing (a point read's own timeout is a
    :class:`~drivers.errors.MeterTimeoutError`)."""

    reason = "module-timeout"


@dataclass(slots=True)
class SessionCounters:
    frames_in: int = 0
    frames_out: int = 0
    unmatched: int = 0
    denies: int = 0
    link_errors: int = 0


@dataclass(slots=True)
class _Pending:
    afn: Afn
    future: asyncio.Future[Frame]
    on_reply: Callable[[Frame], None] | None


RequestHandler = Callable[[Frame], Awaitable[None]]


class Session:
    """Numbered commands and their replies, and the frames the module initiates."""

    def __init__(
        self,
        name: str,
        link: Link,
        *,
        main_node: Address,
        comm_mode: CommMode,
        on_request: RequestHandler,
    ) -> None:
        self.name = name
        self.link = link
        self.main_node = main_node
        self.comm_mode = comm_mode  # follows the module's own frames
        self.counters = SessionCounters()
        self.last_received = 0.0  # loop time of the last frame from the module
        self._on_request = on_request
        self._framer = Q13762Framer()
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._receiver: asyncio.Task[None] | None = None

    def framing(self) -> MappingProxyType[str, int]:
        return self._framer.statistics().rejected

    def start(self) -> None:
        """Run the receive loop (again, after :meth:`close`); a loop that crashed re-raises."""
        task = self._receiver
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error
        if task is None or task.done():
            self._receiver = asyncio.create_task(self._receive(), name=f"plc-rx-{self.name}")

    async def close(self) -> None:
        task, self._receiver = self._receiver, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending(LinkError(f"{self.name}: closed"))
        await self.link.close()

    # -- commands ---------------------------------------------------------------------------
    async def exchange(
        self,
        afn: Afn,
        fn: int,
        unit: DataUnit,
        *,
        wait_s: float,
        slave: Address | None = None,
        on_reply: Callable[[Frame], None] | None = None,
    ) -> tuple[Frame, int]:
        """Send one command and wait for its reply; the reply and the bytes sent.

        ``slave`` adds the address field (A1 main node, A3 the slave). ``on_reply`` runs inside
        the receive loop the moment the reply is matched, before any later frame is handled.
        """
        self.start()
        seq = self._seq = (self._seq + 1) & 0xFF
        control = Control(Direction.DOWNLINK, Prm.INITIATOR, self.comm_mode)
        info = DownlinkInfo(seq=seq, module_flag=slave is not None)
        address = None if slave is None else AddressField(self.main_node, slave)
        raw = encode_frame(Frame(control, info, afn, fn, unit, address))
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[seq] = _Pending(afn, future, on_reply)
        try:
            await self._write(raw)
            try:
                reply = await asyncio.wait_for(future, wait_s)
            except TimeoutError:
                raise ModuleTimeoutError(
                    f"{self.name}: no answer to AFN{afn:02X} F{fn} within {wait_s:g} s"
                ) from None
        finally:
            pending = self._pending.get(seq)
            if pending is not None and pending.future is future:
                del self._pending[seq]
        return reply, len(raw)

    async def command(
        self,
        afn: Afn,
        fn: int,
        unit: DataUnit | None = None,
        *,
        wait_s: float,
        on_reply: Callable[[Frame], None] | None = None,
    ) -> DataUnit:
        """A local command: its reply's data unit; a deny raises :class:`ModuleError`."""
        body = Empty() if unit is None else unit
        reply, _ = await self.exchange(afn, fn, body, wait_s=wait_s, on_reply=on_reply)
        if isinstance(reply.unit, Deny):
            self.counters.denies += 1
            code = reply.unit.code
            raise ModuleError(f"{self.name}: AFN{afn:02X} F{fn} denied: {code.name}", code)
        return reply.unit

    async def query(
        self, afn: Afn, fn: int, unit: DataUnit | None, expect: type[U], *, wait_s: float
    ) -> U:
        got = await self.command(afn, fn, unit, wait_s=wait_s)
        if not isinstance(got, expect):
            raise ReplyCorruptedError(
                f"{self.name}: AFN{afn:02X} F{fn} answered {type(got).__name__}, "
                f"not {expect.__name__}"
            )
        return got

    async def answer(
        self, request: Frame, unit: DataUnit, *, afn: Afn | None = None, fn: int | None = None
    ) -> None:
        """Answer a frame the module initiated (PRM=0, its seq; its AFN and Fn unless given)."""
        control = Control(Direction.DOWNLINK, Prm.RESPONDER, self.comm_mode)
        afn = request.afn if afn is None else afn
        fn = request.fn if fn is None else fn
        frame = Frame(control, DownlinkInfo(seq=request.seq), afn, fn, unit)
        await self._write(encode_frame(frame))

    # -- the wire ---------------------------------------------------------------------------
    async def _write(self, raw: bytes) -> None:
        try:
            await self.link.write(raw)
        except LinkError:
            self.counters.link_errors += 1
            raise
        self.counters.frames_out += 1

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        idle = max(0.1, 30 * self.link.char_time)
        try:
            while True:
                partial = self._framer.statistics().buffered > 0
                try:
                    chunk = await self.link.read_some(idle if partial else 1.0)
                    if chunk:
                        self._framer.feed(chunk)
                    elif partial:
                        self._framer.feed_eof()
                    for frame in self._framer.frames():
                        self.last_received = loop.time()
                        await self._dispatch(frame)
                except LinkError as exc:
                    self.counters.link_errors += 1
                    self._fail_pending(exc)
                    await asyncio.sleep(_RELINK_S)
        except Exception as exc:
            self._fail_pending(exc)
            raise

    async def _dispatch(self, frame: Frame) -> None:
        self.counters.frames_in += 1
        if frame.control.direction is Direction.DOWNLINK:
            self.counters.unmatched += 1  # our own frame echoed back
            return
        self.comm_mode = frame.control.comm_mode
        if frame.control.prm is Prm.INITIATOR:
            await self._on_request(frame)
            return
        pending = self._pending.get(frame.seq)
        if pending is None or pending.future.done() or frame.afn not in (Afn.CONFIRM, pending.afn):
            self.counters.unmatched += 1
            return
        if pending.on_reply is not None:
            pending.on_reply(frame)
        pending.future.set_result(frame)

    def _fail_pending(self, exc: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
