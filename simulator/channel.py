"""An in-memory bus channel: the collector's view of a bus, served by a simulated district
without a wire — for fast, deterministic tests and benchmarks of everything above the wire.

It behaves like :class:`drivers.channel.Dlt645Channel` where the collector can tell (a matching
reply or a timeout, a reply for another meter ignored, repeated failures putting a meter to
rest) but takes no wall-clock time: what a meter would answer after its turnaround is answered
at once, and a silent meter fails at once.
"""

from __future__ import annotations

import datetime as dt

from drivers.channel import Exchange
from drivers.clock import Clock
from drivers.errors import MeterRestingError, MeterTimeoutError, ReplyCorruptedError
from protocols.bcd import Address
from protocols.dlt645 import (
    BroadcastTime,
    Dlt645Framer,
    Message,
    ReadRequest,
    ReadResponse,
    decode_message,
    encode_frame,
)
from protocols.dlt645.frame import Direction
from protocols.errors import RemoteProtocolError

from .district import District


class MemoryChannel:
    """``request``/``broadcast``/``resting_until`` against a :class:`District`, instantly."""

    def __init__(
        self,
        district: District,
        bus: str,
        clock: Clock,
        *,
        retries: int = 2,
        backoff_after: int = 3,
    ) -> None:
        self.name = bus
        self.district = district
        self.clock = clock
        self.retries = retries
        self.backoff_after = backoff_after
        self.requests = 0
        self.broadcasts = 0
        self.wrong_address = 0
        self._failures: dict[Address, int] = {}
        self._foreign: dict[Address, int] = {}
        self._resting: dict[Address, dt.datetime] = {}

    def take_foreign(self) -> dict[Address, int]:
        foreign, self._foreign = self._foreign, {}
        return foreign

    def resting_until(self, address: Address) -> dt.datetime | None:
        until = self._resting.get(address)
        return until if until is not None and until > self.clock.now() else None

    async def broadcast(self, message: BroadcastTime) -> None:
        self.broadcasts += 1
        self.district.respond(self.name, message.to_frame())

    async def request(self, message: Message) -> Exchange:
        frame = message.to_frame()
        if self.resting_until(frame.address) is not None:
            raise MeterRestingError(f"{self.name}: meter {frame.address} is resting")
        raw = encode_frame(frame)
        garbled = False
        for attempt in range(1, self.retries + 2):
            self.requests += 1
            reply = self.district.respond(self.name, frame)
            if reply is None:
                continue
            framer = Dlt645Framer()
            framer.feed(reply.data)
            framer.feed_eof()
            for got in framer.frames():
                if got.control.direction is Direction.REQUEST:
                    continue
                if got.address != frame.address and not frame.address.is_wildcard:
                    self.wrong_address += 1
                    self._foreign[got.address] = self._foreign.get(got.address, 0) + 1
                    continue
                try:
                    decoded = decode_message(got)
                except RemoteProtocolError:
                    garbled = True
                    continue
                if (
                    isinstance(message, ReadRequest)
                    and isinstance(decoded, ReadResponse)
                    and decoded.di != message.di
                ):
                    continue
                self._failures.pop(frame.address, None)
                return Exchange(message, decoded, len(raw), len(reply.data), 0.0, attempt)
            if framer.statistics().rejected_total:
                garbled = True
        failures = self._failures[frame.address] = self._failures.get(frame.address, 0) + 1
        if failures >= self.backoff_after:
            rest = min(60 * 2 ** (failures - self.backoff_after), 3600)
            self._resting[frame.address] = self.clock.now() + dt.timedelta(seconds=rest)
        if garbled:
            raise ReplyCorruptedError(f"{self.name}: garbled replies from {frame.address}")
        raise MeterTimeoutError(f"{self.name}: no reply from {frame.address}")
