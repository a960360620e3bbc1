"""The per-bus DL/T 645 request/response channel: one request in flight per RS-485 bus.

* Requests are serialised by a lock; a dead meter costs its timeout, never the bus.
* Before each request the channel keeps the inter-frame gap and drops stale input.
* A reply is accepted only when its address, function and DI match the request; our own
  echo (adapters that hear themselves) is ignored; a reply from another meter is counted as a
  *wrong reading* and never returned.
* Retries happen only on timeout and on a garbled reply (checksum, framing).
* A meter that fails ``backoff_after`` times in a row rests for an exponentially growing time
  (injected clock) and costs the bus nothing while it rests.

Wire timing (timeouts, gaps) uses the event loop's monotonic time and is never scaled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType

from protocols.bcd import Address
from protocols.dlt645 import (
    BroadcastTime,
    Dlt645Framer,
    ErrorResponse,
    Frame,
    Message,
    ReadAddressResponse,
    ReadRequest,
    ReadResponse,
    Rejection,
    decode_message,
    encode_frame,
)
from protocols.dlt645.frame import Direction
from protocols.errors import RemoteProtocolError
from protocols.framing import NEED_DATA

from .backoff import MeterBackoff
from .clock import Clock
from .errors import LinkError, MeterRestingError, MeterTimeoutError, ReplyCorruptedError
from .link import Link

#: distinct foreign addresses remembered between two collector passes
_FOREIGN_MAX = 64


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    timeout_s: float = 1.5
    retries: int = 2
    inter_frame_gap_s: float = 0.02
    preamble: int = 4
    backoff_after: int = 3
    backoff_initial_s: float = 60.0
    backoff_max_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    requests: int
    replies: int
    timeouts: int
    corrupted: int
    wrong_address: int
    unmatched: int
    retries: int
    backed_off: int
    broadcasts: int
    link_errors: int
    framing: MappingProxyType[str, int]


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    corrupted: int = 0
    wrong_address: int = 0
    unmatched: int = 0
    retries: int = 0
    backed_off: int = 0
    broadcasts: int = 0
    link_errors: int = 0
    framing: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One successful request/reply, with its wire figures (benchmarks and metrics read them)."""

    request: Message
    reply: Message
    request_bytes: int
    reply_bytes: int  # bytes heard on the line for this attempt, preamble included
    elapsed_s: float
    attempts: int


def _matches(request: Message, reply: Message) -> bool:
    if isinstance(request, ReadRequest):
        if isinstance(reply, ReadResponse):
            return reply.di == request.di and reply.edition is request.edition
        return isinstance(reply, ErrorResponse)
    return True


class Dlt645Channel:
    """Requests to the meters of one bus, one at a time."""

    def __init__(self, name: str, link: Link, settings: ChannelSettings, clock: Clock) -> None:
        self.name = name
        self.link = link
        self.settings = settings
        self.clock = clock
        self._lock = asyncio.Lock()
        self._framer = Dlt645Framer()
        self._counters = _Counters()
        self._backoff = MeterBackoff(
            clock,
            after=settings.backoff_after,
            initial_s=settings.backoff_initial_s,
            max_s=settings.backoff_max_s,
        )
        self._last_end = 0.0
        self._foreign: dict[Address, int] = {}

    # -- state ------------------------------------------------------------------------------
    def statistics(self) -> ChannelStatistics:
        c = self._counters
        framing = Counter(c.framing)
        framing.update(self._framer.statistics().rejected)
        return ChannelStatistics(
            c.requests, c.replies, c.timeouts, c.corrupted, c.wrong_address, c.unmatched,
            c.retries, c.backed_off, c.broadcasts, c.link_errors, MappingProxyType(dict(framing)),
        )  # fmt: skip

    def take_foreign(self) -> dict[Address, int]:
        """Addresses that answered a request for another meter since the last call (an
        archive mismatch on the bus: a replaced meter, a wrong address label), and how often."""
        foreign, self._foreign = self._foreign, {}
        return foreign

    def resting_until(self, address: Address) -> dt.datetime | None:
        return self._backoff.resting_until(address)

    def _succeeded(self, address: Address) -> None:
        self._backoff.succeeded(address)

    def _failed(self, address: Address) -> None:
        self._backoff.failed(address)

    # -- requests ---------------------------------------------------------------------------
    async def request(self, message: Message) -> Exchange:
        """Send ``message`` and return the matching reply (an :class:`ErrorResponse` too)."""
        frame = message.to_frame()
        address = frame.address
        if self.resting_until(address) is not None:
            self._counters.backed_off += 1
            raise MeterRestingError(
                f"{self.name}: meter {address} is resting after repeated failures"
            )
        raw = encode_frame(frame, self.settings.preamble)
        async with self._lock:
            loop = asyncio.get_running_loop()
            corrupted = False
            for attempt in range(1, self.settings.retries + 2):
                if attempt > 1:
                    self._counters.retries += 1
                await self._keep_gap()
                self._counters.requests += 1
                started = loop.time()
                try:
                    self._flush_input()
                    await self.link.write(raw)
                    reply, reply_bytes = await self._await_reply(
                        message, frame, started + self.settings.timeout_s
                    )
                except LinkError:
                    # The port hiccuped (a USB adapter re-enumerating, a pty that reported data
                    # it did not have, a DTU that dropped the socket): the link reopens on the
                    # next attempt; only when the attempts run out does the request fail.
                    self._counters.link_errors += 1
                    self._last_end = loop.time()
                    if attempt <= self.settings.retries:
                        continue
                    self._failed(address)
                    raise
                except ReplyCorruptedError:
                    corrupted = True
                    self._counters.corrupted += 1
                    self._last_end = loop.time()
                    continue
                except MeterTimeoutError:
                    self._counters.timeouts += 1
                    self._last_end = loop.time()
                    continue
                self._last_end = loop.time()
                self._counters.replies += 1
                self._succeeded(address)
                return Exchange(
                    message, reply, len(raw), reply_bytes, self._last_end - started, attempt
                )
            self._failed(address)
            what = "garbled replies" if corrupted else "no reply"
            error = ReplyCorruptedError if corrupted else MeterTimeoutError
            raise error(
                f"{self.name}: {what} from {address} after {self.settings.retries + 1} attempts"
            )

    async def broadcast(self, message: BroadcastTime) -> None:
        """Send a frame nobody answers (time sync), then leave the bus quiet for a moment."""
        raw = encode_frame(message.to_frame(), self.settings.preamble)
        async with self._lock:
            await self._keep_gap()
            try:
                await self.link.write(raw)
            except LinkError:
                self._counters.link_errors += 1
                raise
            self._counters.broadcasts += 1
            # Meters act on a broadcast after it has fully left the wire.
            loop = asyncio.get_running_loop()
            self._last_end = loop.time() + len(raw) * self.link.char_time

    async def close(self) -> None:
        await self.link.close()

    # -- internals --------------------------------------------------------------------------
    async def _keep_gap(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last_end + self.settings.inter_frame_gap_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _flush_input(self) -> None:
        dropped = self.link.discard_input()
        stats = self._framer.statistics()
        if stats.buffered:
            self._framer.reset()
        if dropped:
            self._counters.framing["stale-input"] += 1

    async def _await_reply(
        self, request: Message, frame: Frame, deadline: float
    ) -> tuple[Message, int]:
        loop = asyncio.get_running_loop()
        garbled = False
        received = 0  # every byte heard during this attempt: preamble and noise take wire time too
        # A frame in progress that stops for longer than this is noise, not a slow meter.
        idle_gap = max(0.1, 20 * self.link.char_time)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if garbled:
                    raise ReplyCorruptedError("garbled reply")
                raise MeterTimeoutError("no reply")
            partial = self._framer.statistics().buffered > 0
            chunk = await self.link.read_some(min(remaining, idle_gap) if partial else remaining)
            if chunk:
                received += len(chunk)
                self._framer.feed(chunk)
            elif partial:
                self._framer.feed_eof()
            while True:
                event = self._framer.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, Rejection):
                    garbled = True
                    continue
                assert isinstance(event, Frame)
                found = self._accept(request, frame, event)
                if found is not None:
                    return found, received
            if garbled and self._framer.statistics().buffered == 0 and not chunk:
                raise ReplyCorruptedError("garbled reply")

    def _accept(self, request: Message, sent: Frame, got: Frame) -> Message | None:
        if got.control.direction is Direction.REQUEST:
            return None  # our own echo on a half-duplex adapter
        wildcard = sent.address.is_wildcard
        if not wildcard and got.address != sent.address:
            self._counters.wrong_address += 1
            if len(self._foreign) < _FOREIGN_MAX or got.address in self._foreign:
                self._foreign[got.address] = self._foreign.get(got.address, 0) + 1
            return None
        if got.control.function != sent.control.function:
            self._counters.unmatched += 1
            return None
        try:
            reply = decode_message(got)
        except RemoteProtocolError:
            self._counters.framing["bad-content"] += 1
            raise ReplyCorruptedError("reply content does not decode") from None
        if wildcard and not isinstance(reply, ReadAddressResponse | ReadResponse | ErrorResponse):
            return None
        if not _matches(request, reply):
            self._counters.unmatched += 1
            return None
        return reply
