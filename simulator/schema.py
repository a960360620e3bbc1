"""The scenario TOML schema (pydantic v2): what each table and key may hold.

Only shapes and ranges are checked here; references between tables (a meter's bus, a timeline
entry's meter) are checked by :mod:`simulator.scenario`, which turns the validated file into a
:class:`~simulator.scenario.Scenario`. Every model forbids unknown keys, so a typo is an error
naming its key path rather than a silently ignored setting.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    model_validator,
)

from protocols.bcd import Address

_RELATIVE = re.compile(r"^\+(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _time_ref(value: Any) -> dt.datetime | dt.timedelta:
    """An instant: a TOML datetime / ISO string, or ``"+1d6h30m"`` after the simulation start."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        match = _RELATIVE.match(value.strip())
        if match and any(match.groups()):
            d, h, m, s = (int(g or 0) for g in match.groups())
            return dt.timedelta(days=d, hours=h, minutes=m, seconds=s)
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is neither a date-time nor an offset like '+1d6h30m'")


def _address(value: Any) -> str:
    text = str(value).replace(" ", "")
    if not text.isdigit() or len(text) > 12:
        raise ValueError(f"{value!r} is not a meter address of up to 12 digits")
    return Address.parse(text).digits


def _edition(value: Any) -> str:
    return str(value)


def _range(value: Any) -> Any:
    """A number, or ``[low, high]`` to draw each meter's value from."""
    return value if isinstance(value, list | tuple) else (value, value)


TimeRef = Annotated[dt.datetime | dt.timedelta, PlainValidator(_time_ref)]
AddressText = Annotated[str, PlainValidator(_address)]
EditionText = Annotated[Literal["2007", "1997"], BeforeValidator(_edition)]
DecimalRange = Annotated[tuple[Decimal, Decimal], BeforeValidator(_range)]
Password = Annotated[str, StringConstraints(pattern=r"^\d{6}$")]
HHMM = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
Baud = Literal[600, 1200, 2400, 4800, 9600, 19200]
Probability = Annotated[float, Field(gt=0, le=1)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulationSpec(Model):
    start: TimeRef
    timezone: str = "Asia/Shanghai"
    seed: int = 0
    history_days: Annotated[int, Field(ge=0, le=62)] = 0
    slot_minutes: Literal[1, 5, 10, 15, 30, 60] = 15

    @model_validator(mode="after")
    def _absolute_start(self) -> SimulationSpec:
        if not isinstance(self.start, dt.datetime):
            raise ValueError("start must be a date-time, not an offset")
        return self


class ProfileSpec(Model):
    hourly_kw: Annotated[list[Annotated[Decimal, Field(ge=0)]], Field(min_length=24, max_length=24)]
    base_kw: Annotated[Decimal, Field(ge=0)] = Decimal("0.05")
    noise: Annotated[Decimal, Field(ge=0, lt=1)] = Decimal("0.10")


class TouSpec(Model):
    periods: Annotated[list[tuple[HHMM, Annotated[int, Field(ge=1, le=4)]]], Field(min_length=1)]


class PrepaidSpec(Model):
    kind: Literal["money", "energy"] = "money"
    price: Annotated[Decimal, Field(gt=0)] = Decimal("0.5283")
    balance: Decimal = Decimal("100.00")


class CommonFields(Model):
    """Keys every meter (and the master meter) may set."""

    edition: EditionText | None = None
    phases: Literal[1, 3] | None = None
    bus: str | None = None
    tou: str | None = None
    initial_kwh: DecimalRange | None = None
    initial_reverse_kwh: Annotated[Decimal, Field(ge=0)] | None = None
    power_factor: Annotated[Decimal, Field(ge=Decimal("0.2"), le=1)] | None = None
    voltage: Annotated[Decimal, Field(gt=0, lt=1000)] | None = None
    clock_offset_s: Decimal | None = None
    clock_drift_s_per_day: Decimal | None = None
    password: Password | None = None
    settlement_day: Annotated[int, Field(ge=1, le=28)] | None = None
    battery_low: bool | None = None
    constant: Annotated[int, Field(ge=1, le=999999)] | None = None
    reply_preamble: Annotated[int, Field(ge=0, le=4)] | None = None


class MeterFields(CommonFields):
    """Keys of a customer meter, a meter group, or ``[defaults]``."""

    profile: str | None = None
    scale: DecimalRange | None = None
    prepaid: PrepaidSpec | None = None


class MeterSpec(MeterFields):
    address: AddressText


class MeterGroupSpec(MeterFields):
    first_address: AddressText
    count: Annotated[int, Field(ge=1, le=100_000)]
    step: Annotated[int, Field(ge=1)] = 1


class MasterSpec(CommonFields):
    address: AddressText
    line_loss: Annotated[Decimal, Field(ge=0, lt=1)] = Decimal("0.04")
    ct_ratio: Annotated[int, Field(ge=1, le=10_000)] = 1


class BusSpec(Model):
    name: Annotated[str, StringConstraints(min_length=1)]
    kind: Literal["rs485", "tcp"] = "rs485"
    baud: Baud = 2400
    turnaround_ms: Annotated[int, Field(ge=0, le=5000)] = 40


class PlcSpec(Model):
    port: Literal["pty", "tcp"] = "pty"
    baud: Baud = 9600
    module_address: AddressText = "000000000000"
    turnaround_ms: Annotated[int, Field(ge=0, le=5000)] = 50
    relay_delay_ms: Annotated[int, Field(ge=0, le=60_000)] = 400
    options: dict[str, Any] = Field(default_factory=dict)


class EntrySpec(Model):
    """A timeline entry: which meters, from when, until when."""

    meter: AddressText | None = None
    meters: list[AddressText] | None = None
    start: TimeRef
    end: TimeRef | None = None

    @model_validator(mode="after")
    def _one_target(self) -> EntrySpec:
        if (self.meter is None) == (self.meters is None):
            raise ValueError("give exactly one of 'meter' or 'meters'")
        return self

    @property
    def addresses(self) -> list[str]:
        return [self.meter] if self.meter is not None else list(self.meters or ())


class SilentSpec(EntrySpec):
    kind: Literal["silent"]
    probability: Probability = 1.0


class SlowSpec(EntrySpec):
    kind: Literal["slow"]
    delay_ms: Annotated[int, Field(ge=1, le=60_000)] = 800
    probability: Probability = 1.0


class GarbledSpec(EntrySpec):
    kind: Literal["garbled"]
    flips: Annotated[int, Field(ge=1, le=64)] = 3
    probability: Probability = 1.0


class BadChecksumSpec(EntrySpec):
    kind: Literal["bad_checksum"]
    probability: Probability = 1.0


class TruncatedSpec(EntrySpec):
    kind: Literal["truncated"]
    drop: Annotated[int, Field(ge=1)] | None = None
    probability: Probability = 1.0


class WrongAddressSpec(EntrySpec):
    kind: Literal["wrong_address"]
    address: AddressText | None = None
    probability: Probability = 1.0


class RegisterBackwardsSpec(EntrySpec):
    kind: Literal["register_backwards"]
    kwh: Annotated[Decimal, Field(gt=0)] = Decimal(50)


class StoppedSpec(EntrySpec):
    kind: Literal["stopped"]


class FastSpec(EntrySpec):
    kind: Literal["fast"]
    factor: Annotated[Decimal, Field(gt=1, le=100)] = Decimal(2)


class ReverseSpec(EntrySpec):
    kind: Literal["reverse"]


class ClockDriftSpec(EntrySpec):
    kind: Literal["clock_drift"]
    offset_s: Decimal = Decimal(400)
    drift_s_per_day: Decimal | None = None


class CoverOpenSpec(EntrySpec):
    kind: Literal["cover_open"]
    cover: Literal["meter", "terminal"] = "meter"


class LossOfVoltageSpec(EntrySpec):
    kind: Literal["loss_of_voltage"]
    phase: Literal["a", "b", "c"] = "a"
    voltage_ratio: Annotated[Decimal, Field(ge=0, lt=Decimal("0.78"))] = Decimal("0.60")


class PowerDownSpec(EntrySpec):
    kind: Literal["power_down"]


class BalanceOutSpec(EntrySpec):
    kind: Literal["balance_out"]
    remaining: Annotated[Decimal, Field(ge=0)] = Decimal(0)


class BatteryLowSpec(EntrySpec):
    kind: Literal["battery_low"]


TimelineSpec = Annotated[
    SilentSpec
    | SlowSpec
    | GarbledSpec
    | BadChecksumSpec
    | TruncatedSpec
    | WrongAddressSpec
    | RegisterBackwardsSpec
    | StoppedSpec
    | FastSpec
    | ReverseSpec
    | ClockDriftSpec
    | CoverOpenSpec
    | LossOfVoltageSpec
    | PowerDownSpec
    | BalanceOutSpec
    | BatteryLowSpec,
    Field(discriminator="kind"),
]


class ScenarioSpec(Model):
    name: str = "scenario"
    description: str = ""
    simulation: SimulationSpec
    defaults: MeterFields = MeterFields()
    profiles: dict[str, ProfileSpec] = Field(default_factory=dict)
    tou: dict[str, TouSpec] = Field(default_factory=dict)
    buses: list[BusSpec] = Field(default_factory=list)
    plc: PlcSpec | None = None
    master: MasterSpec | None = None
    meters: list[MeterSpec] = Field(default_factory=list)
    meter_groups: list[MeterGroupSpec] = Field(default_factory=list)
    timeline: list[TimelineSpec] = Field(default_factory=list)
