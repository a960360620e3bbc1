"""What a virtual meter is configured with, and the snapshots of its state it reports.

:class:`MeterConfig` is everything a scenario can say about one meter; the other dataclasses
are read-only views the meter hands to tests and to the gateway's tests as ground truth.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from protocols.bcd import Address
from protocols.dlt645.messages import RelayCommand
from protocols.dlt645.registry import Edition

from .tariff import STANDARD_TOU, TouTable
from .timebase import Zone


@dataclass(frozen=True, slots=True)
class PrepaidConfig:
    """``money``: ``balance`` in CNY; ``energy``: ``balance`` in kWh. ``price`` is CNY/kWh, flat."""

    kind: Literal["money", "energy"] = "money"
    price: Decimal = Decimal("0.5283")
    balance: Decimal = Decimal("100.00")


@dataclass(frozen=True, slots=True)
class MeterConfig:
    address: Address
    edition: Edition = Edition.V2007
    phases: Literal[1, 3] = 1
    tou: TouTable = STANDARD_TOU
    zone: Zone = field(default_factory=Zone)
    nominal_voltage: Decimal = Decimal("220.0")
    power_factor: Decimal = Decimal("0.95")
    initial_kwh: Decimal = Decimal(0)
    initial_reverse_kwh: Decimal = Decimal(0)
    prepaid: PrepaidConfig | None = None
    clock_offset_s: Decimal = Decimal(0)
    clock_drift_s_per_day: Decimal = Decimal(0)
    password: str = "000000"  # noqa: S105 - the DL/T 645 factory default, not a secret
    password_level: int = 0x02
    settlement_day: int = 1
    battery_low: bool = False
    active_constant: int = 1200
    baud: int = 2400
    ct_ratio: int = 1
    seed: int = 0
    meter_number: str | None = None
    reply_preamble: int = 4  # FE bytes before a reply; meters in the field send 0, 2, 3 or 4

    def __post_init__(self) -> None:
        if self.phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if not Decimal("0.2") <= self.power_factor <= 1:
            raise ValueError("power factor must be within 0.2..1")
        if not 1 <= self.settlement_day <= 28:
            raise ValueError("settlement day must be within 1..28")
        if self.ct_ratio < 1:
            raise ValueError("ct_ratio must be at least 1")
        if not 0 <= self.reply_preamble <= 4:
            raise ValueError("reply_preamble must be within 0..4")


@dataclass(frozen=True, slots=True)
class PrepaidState:
    remaining_amount: Decimal
    overdraft_amount: Decimal
    remaining_energy: Decimal
    overdraft_energy: Decimal


@dataclass(frozen=True, slots=True)
class EventCounters:
    meter_cover_open: int
    terminal_cover_open: int
    power_down: int
    loss_of_voltage_count: tuple[int, int, int]
    loss_of_voltage_minutes: tuple[int, int, int]
    power_down_records: tuple[tuple[dt.datetime, dt.datetime], ...]  # most recent first


@dataclass(frozen=True, slots=True)
class RelayEvent:
    command: RelayCommand
    at: dt.datetime  # meter-local time it was executed
