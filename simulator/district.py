"""A simulated transformer district (台区): its meters by address, the buses they hang on, the
master meter at the transformer, and the link faults between them.

The master meter is an ordinary :class:`~simulator.meter.VirtualMeter` whose load is
:class:`DistrictLoad`: the power every customer actually draws (nothing while tripped or
without supply) times ``1 + line_loss``. It sees the true load, not what user meters register,
so a stopped or slowed user meter shows up as extra line loss, as it does in the field.

:meth:`District.respond` is what a bus calls for each request frame: it delivers the frame to
the meters on that bus that it is addressed to (one by address; all for a broadcast or a
wildcard), applies each meter's link faults, and returns the reply. Two meters answering at
once (a wildcard read on a shared bus) collide into one corrupted reply.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from drivers.clock import Clock
from protocols.bcd import Address
from protocols.dlt645.frame import Frame, encode_frame
from protocols.dlt645.framer import Dlt645Framer

from .faults import LinkFaults
from .meter import VirtualMeter
from .timebase import MINUTE_US, Zone, to_us


@dataclass(frozen=True, slots=True)
class BusConfig:
    """An RS-485 segment served over a pty, or a serial server / DTU reached over TCP."""

    name: str
    kind: Literal["rs485", "tcp"] = "rs485"
    baud: int = 2400
    turnaround_ms: int = 40


@dataclass(frozen=True, slots=True)
class PlcConfig:
    """The ``[plc]`` table, for the virtual PLC module (Q/GDW 1376.2) that serves ``bus = "plc"``.

    ``options`` keeps any further keys of the table for that module to interpret.
    """

    port: Literal["pty", "tcp"] = "pty"
    baud: int = 9600
    module_address: str = "000000000000"
    turnaround_ms: int = 50
    relay_delay_ms: int = 400
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """What goes back on the wire, and how much later than the normal turnaround."""

    data: bytes
    delay_s: float = 0.0


class DistrictLoad:
    """The master meter's load: what the customers draw, plus line loss."""

    def __init__(
        self, users: Sequence[VirtualMeter], line_loss: Decimal, zone: Zone, slot_minutes: int = 15
    ) -> None:
        if not 0 <= line_loss < 1:
            raise ValueError("line loss is a fraction between 0 and 1")
        self._users = tuple(users)
        self._num, self._den = (1 + line_loss).as_integer_ratio()
        self._zone = zone
        self._slot_us = slot_minutes * MINUTE_US
        self._changes: list[int] = sorted({t for u in self._users for t in u.load_changes()})
        for user in self._users:
            user.add_listener(self._changed)

    def _changed(self, t_us: int) -> None:
        i = bisect_right(self._changes, t_us)
        if not i or self._changes[i - 1] != t_us:
            insort(self._changes, t_us)

    def power(self, t_us: int) -> int:
        total = sum(u.delivered_power(t_us) for u in self._users)
        # Nearest 0.1 W, so the quantisation does not bias the line loss over a day.
        return (total * self._num + self._den // 2) // self._den

    def next_change(self, t_us: int) -> int:
        local = self._zone.local_us(t_us)
        boundary = t_us + self._slot_us - local % self._slot_us
        i = bisect_right(self._changes, t_us)
        return min(boundary, self._changes[i]) if i < len(self._changes) else boundary


class District:
    """Meters by address and bus, the master meter, buses, and link faults."""

    def __init__(
        self,
        clock: Clock,
        meters: Iterable[tuple[VirtualMeter, str]],
        *,
        buses: Iterable[BusConfig] = (),
        master: VirtualMeter | None = None,
        link_faults: Mapping[Address, LinkFaults] | None = None,
        plc: PlcConfig | None = None,
    ) -> None:
        self.clock = clock
        self.buses: dict[str, BusConfig] = {b.name: b for b in buses}
        self.plc = plc
        self.master = master
        self.meters: dict[Address, VirtualMeter] = {}
        self._bus_of: dict[Address, str] = {}
        self._on_bus: dict[str, list[VirtualMeter]] = {}
        for meter, bus in meters:
            if meter.address in self.meters:
                raise ValueError(f"meter {meter.address} appears twice")
            self.meters[meter.address] = meter
            self._bus_of[meter.address] = bus
            self._on_bus.setdefault(bus, []).append(meter)
        if master is not None and master.address not in self.meters:
            raise ValueError("the master meter must also be listed with its bus")
        self._faults: dict[Address, LinkFaults] = dict(link_faults or {})

    @property
    def users(self) -> list[VirtualMeter]:
        """Every meter but the master."""
        return [m for m in self.meters.values() if m is not self.master]

    def bus_of(self, address: Address) -> str:
        return self._bus_of[address]

    def on_bus(self, bus: str) -> Sequence[VirtualMeter]:
        return self._on_bus.get(bus, [])

    def bus_names(self) -> list[str]:
        return list(self._on_bus)

    def link_faults(self, address: Address) -> LinkFaults | None:
        return self._faults.get(address)

    def advance_to(self, instant: dt.datetime) -> None:
        for meter in self.meters.values():
            meter.advance_to(instant)

    def respond(self, bus: str, frame: Frame) -> Reply | None:
        """Deliver one request frame on ``bus``; the reply the master of the bus hears, if any."""
        address = frame.address
        if address.is_broadcast or address.is_wildcard:
            targets = [m for m in self.on_bus(bus) if m.hears(address)]
        else:
            meter = self.meters.get(address)
            targets = [meter] if meter is not None and self._bus_of[address] == bus else []
        if not targets:
            return None
        now_us = to_us(self.clock.now())
        replies: list[Reply] = []
        for meter in targets:
            faults = self._faults.get(meter.address)
            if faults and faults.deaf(now_us):
                continue
            out = meter.handle(frame)
            if out is None:
                continue
            data = encode_frame(out, preamble=meter.config.reply_preamble)
            delay = 0.0
            if faults:
                data, delay = faults.mangle(data, now_us)
            replies.append(Reply(data, delay))
        if not replies:
            return None
        if len(replies) == 1:
            return replies[0]
        return _collide(replies)

    def respond_bytes(self, bus: str, raw: bytes) -> Reply | None:
        """Every request frame found in ``raw``, answered in turn; the replies joined."""
        framer = Dlt645Framer()
        framer.feed(raw)
        framer.feed_eof()
        replies = [r for frame in framer.frames() if (r := self.respond(bus, frame)) is not None]
        if not replies:
            return None
        if len(replies) == 1:
            return replies[0]
        return Reply(b"".join(r.data for r in replies), max(r.delay_s for r in replies))


def _collide(replies: Sequence[Reply]) -> Reply:
    """Simultaneous drivers on RS-485: the line shows neither reply (modelled as a bitwise AND)."""
    length = max(len(r.data) for r in replies)
    out = bytearray(b"\xff" * length)
    for r in replies:
        for i, b in enumerate(r.data):
            out[i] &= b
    return Reply(bytes(out), max(r.delay_s for r in replies))
