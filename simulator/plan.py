"""What a scenario resolves to: plain, validated plans for meters and timeline entries.

These are what :func:`simulator.scenario.build_district` builds a district from; they hold no
pydantic models and no references between tables, only resolved values.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from protocols.bcd import Address

from . import faults as f
from .config import MeterConfig
from .district import BusConfig, PlcConfig
from .profile import LoadProfile
from .timebase import Zone

PLC_BUS: Final = "plc"

_LINK_KINDS: Final = {
    "silent": f.Silent, "slow": f.SlowReply, "garbled": f.Garbled, "bad_checksum": f.BadChecksum,
    "truncated": f.Truncated, "wrong_address": f.WrongAddress,
}  # fmt: skip
_ANOMALY_KINDS: Final = {
    "register_backwards": f.RegisterBackwards, "stopped": f.StoppedMeter, "fast": f.FastMeter,
    "reverse": f.ReverseEnergy, "clock_drift": f.ClockDrift, "cover_open": f.CoverOpened,
    "loss_of_voltage": f.LossOfVoltage, "power_down": f.PowerDown, "balance_out": f.BalanceOut,
    "battery_low": f.BatteryLow,
}  # fmt: skip
KIND_NAMES: Final = frozenset(_LINK_KINDS) | frozenset(_ANOMALY_KINDS)


class ScenarioError(Exception):
    """A scenario that cannot be used; ``errors`` holds one ``key.path: message`` line each."""

    def __init__(self, errors: Sequence[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + e for e in self.errors))


@dataclass(frozen=True, slots=True)
class MeterPlan:
    """One meter as the scenario describes it; ``key`` is where it was declared."""

    key: str
    bus: str
    config: MeterConfig
    profile: LoadProfile | None
    scale: Decimal

    @property
    def address(self) -> Address:
        return self.config.address


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    key: str
    kind: str
    addresses: tuple[Address, ...]
    start: dt.datetime | dt.timedelta
    end: dt.datetime | dt.timedelta | None
    params: Mapping[str, Any]

    @property
    def is_link_fault(self) -> bool:
        return self.kind in _LINK_KINDS

    def window(self, origin: dt.datetime) -> f.Window:
        return f.Window(
            _instant(self.start, origin), None if self.end is None else _instant(self.end, origin)
        )

    def build(self, origin: dt.datetime) -> f.LinkFault | f.Anomaly:
        cls: Any = _LINK_KINDS.get(self.kind) or _ANOMALY_KINDS[self.kind]
        result: f.LinkFault | f.Anomaly = cls(self.window(origin), **self.params)
        return result


def _instant(ref: dt.datetime | dt.timedelta, origin: dt.datetime) -> dt.datetime:
    return origin + ref if isinstance(ref, dt.timedelta) else ref


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    start: dt.datetime
    zone: Zone
    seed: int
    history_days: int
    slot_minutes: int
    buses: tuple[BusConfig, ...]
    plc: PlcConfig | None
    meters: tuple[MeterPlan, ...]
    master: MeterPlan | None
    line_loss: Decimal
    timeline: tuple[TimelineEntry, ...]
    source: str = ""

    def with_start(self, start: dt.datetime) -> Scenario:
        """The same district from another start (relative timeline offsets move with it)."""
        if start.tzinfo is None:
            start = start.replace(tzinfo=self.zone.tz)
        return dataclasses.replace(self, start=start)

    def all_meters(self) -> list[MeterPlan]:
        return [*self.meters, *([self.master] if self.master else [])]
