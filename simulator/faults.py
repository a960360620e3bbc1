"""Faults and anomalies on demand: what a scenario timeline can do to one meter, and when.

Two families, both active over a :class:`Window` of the injected clock:

* **link faults** damage the conversation, not the meter: :class:`Silent` (the meter hears
  nothing, so a relay command sent then is not executed either), :class:`SlowReply`,
  :class:`Garbled`, :class:`BadChecksum`, :class:`Truncated`, :class:`WrongAddress`.
  :class:`LinkFaults` applies them to the reply bytes; each may fire on only a fraction of
  requests (``probability``), drawn from a seeded generator.
* **anomalies** change what the meter measures and registers, which the gateway's edge checks
  must catch later: :class:`RegisterBackwards`, :class:`StoppedMeter`, :class:`FastMeter`,
  :class:`ReverseEnergy`, :class:`ClockDrift`, :class:`CoverOpened`, :class:`LossOfVoltage`,
  :class:`PowerDown`, :class:`BalanceOut`, :class:`BatteryLow`, :class:`RelayStuck`. The meter
  model (:mod:`simulator.meter`) interprets them while it integrates, so an anomaly that started
  while nobody asked is still applied at its exact start instant.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from protocols.bcd import Address
from protocols.dlt645.frame import Frame, decode_frame, encode_frame
from protocols.errors import ProtocolError

from .timebase import to_us


@dataclass(frozen=True, slots=True)
class Window:
    """``start`` inclusive, ``end`` exclusive (``None``: until the end of the simulation)."""

    start: dt.datetime
    end: dt.datetime | None = None
    start_us: int = field(init=False, repr=False, compare=False)
    end_us: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_us", to_us(self.start))
        object.__setattr__(self, "end_us", None if self.end is None else to_us(self.end))
        if self.end_us is not None and self.end_us <= self.start_us:
            raise ValueError(f"window ends ({self.end}) before it starts ({self.start})")

    def active(self, t_us: int) -> bool:
        return self.start_us <= t_us and (self.end_us is None or t_us < self.end_us)


# --- link faults --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Silent:
    window: Window
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class SlowReply:
    window: Window
    delay_ms: int = 800
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class Garbled:
    """``flips`` random bytes of the reply are XORed with a random non-zero mask."""

    window: Window
    flips: int = 3
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class BadChecksum:
    window: Window
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class Truncated:
    """The reply loses its last ``drop`` bytes (``None``: the second half)."""

    window: Window
    drop: int | None = None
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class WrongAddress:
    """A well-formed reply that carries another address (``None``: the own one, last digit + 1)."""

    window: Window
    address: Address | None = None
    probability: float = 1.0


LinkFault = Silent | SlowReply | Garbled | BadChecksum | Truncated | WrongAddress


class LinkFaults:
    """The link faults of one meter, applied to each reply at the instant it is sent."""

    __slots__ = ("_address", "_faults", "_rng")

    def __init__(self, address: Address, faults: Sequence[LinkFault] = (), seed: int = 0) -> None:
        self._address = address
        self._faults = tuple(faults)
        self._rng = random.Random(seed)

    def __bool__(self) -> bool:
        return bool(self._faults)

    def _firing(self, t_us: int) -> list[LinkFault]:
        return [
            f
            for f in self._faults
            if f.window.active(t_us) and (f.probability >= 1 or self._rng.random() < f.probability)
        ]

    def deaf(self, t_us: int) -> bool:
        """The meter hears nothing now (a :class:`Silent` window fires)."""
        return any(isinstance(f, Silent) for f in self._firing(t_us))

    def mangle(self, reply: bytes, t_us: int) -> tuple[bytes, float]:
        """The reply as it leaves the meter now, and the extra delay in seconds before it does."""
        delay = 0.0
        out = reply
        for fault in self._firing(t_us):
            match fault:
                case SlowReply(delay_ms=ms):
                    delay += ms / 1000
                case WrongAddress(address=other):
                    out = _readdress(out, other or _neighbour(self._address))
                case BadChecksum():
                    out = _bad_checksum(out)
                case Garbled(flips=flips):
                    out = self._garble(out, flips)
                case Truncated(drop=drop):
                    cut = len(out) // 2 if drop is None else min(drop, len(out))
                    out = out[: len(out) - cut]
                case Silent():
                    pass
        return out, delay

    def _garble(self, data: bytes, flips: int) -> bytes:
        buf = bytearray(data)
        for i in self._rng.sample(range(len(buf)), min(flips, len(buf))):
            buf[i] ^= self._rng.randrange(1, 256)
        return bytes(buf)


def _neighbour(address: Address) -> Address:
    digits = address.digits
    return Address(digits[:-1] + str((int(digits[-1]) + 1) % 10))


def _readdress(reply: bytes, address: Address) -> bytes:
    try:
        frame = decode_frame(reply)
    except ProtocolError:
        return reply
    preamble = len(reply) - len(frame.raw)
    return encode_frame(Frame(address, frame.control, frame.data), preamble=preamble)


def _bad_checksum(reply: bytes) -> bytes:
    if len(reply) < 2:
        return reply
    buf = bytearray(reply)
    buf[-2] = (buf[-2] + 1) & 0xFF
    return bytes(buf)


# --- anomalies ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterBackwards:
    """At the start, the forward registers step down by ``kwh`` (total and the running tariff)."""

    window: Window
    kwh: Decimal = Decimal(50)


@dataclass(frozen=True, slots=True)
class StoppedMeter:
    """Registers stop while voltage, current and power still read normally."""

    window: Window


@dataclass(frozen=True, slots=True)
class FastMeter:
    """Registers advance ``factor`` times faster than the power the meter shows."""

    window: Window
    factor: Decimal = Decimal(2)


@dataclass(frozen=True, slots=True)
class ReverseEnergy:
    """Energy goes into the reverse register; power reads negative; status word 1 bit 4 set."""

    window: Window


@dataclass(frozen=True, slots=True)
class ClockDrift:
    """At the start, the meter's clock jumps by ``offset_s`` and/or starts drifting."""

    window: Window
    offset_s: Decimal = Decimal(400)
    drift_s_per_day: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CoverOpened:
    """At the start, the meter (or terminal) cover counter goes up by one."""

    window: Window
    cover: Literal["meter", "terminal"] = "meter"


@dataclass(frozen=True, slots=True)
class LossOfVoltage:
    """A phase reads ``voltage_ratio`` x nominal (< 78 %) while its current keeps flowing."""

    window: Window
    phase: Literal["a", "b", "c"] = "a"
    voltage_ratio: Decimal = Decimal("0.60")


@dataclass(frozen=True, slots=True)
class PowerDown:
    """The meter loses supply: counter + 1, no consumption, no answers; a record at the end."""

    window: Window


@dataclass(frozen=True, slots=True)
class BalanceOut:
    """At the start, a prepaid balance drops to ``remaining``; it then runs into overdraft."""

    window: Window
    remaining: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class BatteryLow:
    """The clock battery reads low (status word 1 bit 2) during the window."""

    window: Window


@dataclass(frozen=True, slots=True)
class RelayStuck:
    """The relay does not follow 0x1C commands: the meter acknowledges them, but the relay
    (and status word 3) stay as they were — a welded contact or a failed latch."""

    window: Window


Anomaly = (
    RegisterBackwards
    | StoppedMeter
    | FastMeter
    | ReverseEnergy
    | ClockDrift
    | CoverOpened
    | LossOfVoltage
    | PowerDown
    | BalanceOut
    | BatteryLow
    | RelayStuck
)
