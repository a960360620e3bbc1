"""The configuration model (pydantic v2): what each TOML table means, with defaults.

Every table forbids unknown keys so a typo is an error, not a silently ignored setting.
Cross-references (a meter's bus, duplicate addresses, one master meter per district) are
checked on the whole document so each error can name the key that is wrong.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ADDRESS = re.compile(r"^[0-9]{12}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} may hold only letters, digits, '_', '.' and '-' (1 to 64)")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Edition(enum.StrEnum):
    V2007 = "2007"
    V1997 = "1997"


class MeterRole(enum.StrEnum):
    USER = "user"
    MASTER = "master"  # the district's master (transformer) meter, used for line loss


class GatewayConfig(Strict):
    id: str
    timezone: str = "Asia/Shanghai"
    district: str = "district-1"

    _id = field_validator("id")(lambda cls, v: _name(v))

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class ClockConfig(Strict):
    """``system`` in the field; ``scaled`` runs simulated calendar time (demo, simulator)."""

    mode: Literal["system", "scaled"] = "system"
    origin: dt.datetime | None = None
    speed: Annotated[float, Field(gt=0)] = 1.0
    real_origin: float | None = None

    @model_validator(mode="after")
    def _origin_for_scaled(self) -> ClockConfig:
        if self.mode == "scaled" and (self.origin is None or self.origin.tzinfo is None):
            raise ValueError("a scaled clock needs an origin with a UTC offset")
        return self


class SpoolConfig(Strict):
    path: Path = Path("/var/lib/amigw/spool.sqlite")
    max_bytes: Annotated[int, Field(ge=1_048_576)] = 256 * 1024 * 1024
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0


class _BusCommon(Strict):
    name: str
    timeout_ms: Annotated[int, Field(ge=50, le=60_000)] = 1500
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    inter_frame_gap_ms: Annotated[int, Field(ge=0, le=5_000)] = 20
    preamble: Annotated[int, Field(ge=0, le=4)] = 4
    backoff_after: Annotated[int, Field(ge=1, le=100)] = 3
    backoff_max_s: Annotated[float, Field(gt=0)] = 3600.0

    _name = field_validator("name")(lambda cls, v: _name(v))


class SerialBusConfig(_BusCommon):
    kind: Literal["serial"] = "serial"
    device: str
    baud: Literal[600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 2400
    parity: Literal["E", "N", "O"] = "E"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1


class TcpBusConfig(_BusCommon):
    """A serial server / DTU: the RS-485 bus behind a TCP socket."""

    kind: Literal["tcp"] = "tcp"
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    baud: Literal[600, 1200, 2400, 4800, 9600, 19200] = 2400
    connect_timeout_ms: Annotated[int, Field(ge=100, le=60_000)] = 3000


BusConfig = Annotated[SerialBusConfig | TcpBusConfig, Field(discriminator="kind")]


class PlcConfig(Strict):
    """The PLC / HPLC module on a local serial port, speaking Q/GDW 1376.2."""

    device: str
    baud: Literal[2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["E", "N", "O"] = "E"
    mode: Literal["router", "concentrator"] = "router"
    main_node: str = "000000000001"
    point_read_timeout_s: Annotated[float, Field(gt=0, le=300)] = 90.0
    frame_timeout_ms: Annotated[int, Field(ge=100, le=60_000)] = 3000

    @field_validator("main_node")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"main node address must be 12 digits, got {value!r}")
        return value


class MeterConfig(Strict):
    address: str
    edition: Edition = Edition.V2007
    bus: str
    district: str | None = None
    role: MeterRole = MeterRole.USER
    phases: Literal[1, 3] = 1
    wiring: Literal["single", "three_wire", "four_wire"] | None = None
    rated_voltage: Annotated[Decimal, Field(gt=0)] = Decimal("220")
    basic_current: Annotated[Decimal, Field(gt=0)] = Decimal("5")
    max_current: Annotated[Decimal, Field(gt=0)] = Decimal("60")
    tariff: str | None = None
    account: str | None = None
    prepaid: Literal["none", "remote", "local"] = "none"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"meter address must be 12 digits, got {value!r}")
        return value

    @model_validator(mode="after")
    def _currents(self) -> MeterConfig:
        if self.max_current < self.basic_current:
            raise ValueError("max_current is below basic_current")
        return self


class CollectionConfig(Strict):
    """When and how hard the collector works."""

    daily_start: str = "00:05"
    daily_jitter_s: Annotated[int, Field(ge=0, le=3600)] = 120
    retry_initial_s: Annotated[int, Field(ge=10)] = 300
    retry_max_s: Annotated[int, Field(ge=10)] = 3600
    catch_up_days: Annotated[int, Field(ge=0, le=62)] = 7
    realtime_interval_s: Annotated[int, Field(ge=0)] = 0
    settlement_day: Annotated[int, Field(ge=1, le=28)] = 1
    read_status: bool = True
    read_events: bool = True
    read_prepaid: bool = True

    @field_validator("daily_start")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"time of day must be HH:MM, got {value!r}")
        return value

    @property
    def daily_start_time(self) -> dt.time:
        return dt.time.fromisoformat(self.daily_start)


class TimeSyncConfig(Strict):
    enabled: bool = True
    threshold_s: Annotated[int, Field(ge=1, le=3600)] = 60
    max_correction_s: Annotated[int, Field(ge=1, le=300)] = 300
    quiet_minutes_around_midnight: Annotated[int, Field(ge=0, le=60)] = 5


class Config(Strict):
    gateway: GatewayConfig
    clock: ClockConfig = ClockConfig()
    spool: SpoolConfig = SpoolConfig()
    collection: CollectionConfig = CollectionConfig()
    time_sync: TimeSyncConfig = TimeSyncConfig()
    bus: list[BusConfig] = []
    plc: PlcConfig | None = None
    meter: list[MeterConfig] = []

    def buses_by_name(self) -> dict[str, SerialBusConfig | TcpBusConfig]:
        return {b.name: b for b in self.bus}

    def meters_on(self, bus: str) -> list[MeterConfig]:
        return [m for m in self.meter if m.bus == bus]
