"""The configuration model (pydantic v2): what each TOML table means, with defaults.

Every table forbids unknown keys so a typo is an error, not a silently ignored setting.
Cross-references (a meter's bus, duplicate addresses, one master meter per district) are
checked on the whole document so each error can name the key that is wrong.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import itertools
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_ADDRESS = re.compile(r"^[0-9]{12}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


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
    # How a head-end time_sync naming this meter sets its clock: the bus broadcast (0x08), or a
    # DL/T 645-2007 write (0x14) of date and time with [commands] password, read back after.
    time_set: Literal["broadcast", "write"] = "broadcast"

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


LogLevel = Literal["debug", "info", "warning", "error", "critical"]
_LOGGER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class LoggingConfig(Strict):
    """Log level for everything, and per logger name (``"amigw.uplink" = "debug"``).

    ``format``: ``auto`` writes JSON lines for journald unless the output is a terminal.
    """

    level: LogLevel = "info"
    format: Literal["auto", "json", "console"] = "auto"
    levels: dict[str, LogLevel] = {}

    _level = field_validator("level", "format", mode="before")(lambda cls, v: _lower(v))

    @field_validator("levels", mode="before")
    @classmethod
    def _levels(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        for name in value:
            if not isinstance(name, str) or not _LOGGER_NAME.match(name):
                raise ValueError(f"{name!r} is not a logger name (like 'amigw.uplink')")
        return {name: _lower(level) for name, level in value.items()}


class UplinkTlsConfig(Strict):
    """TLS to the broker. Without ``ca`` the system trust store is used."""

    ca: Path | None = None
    cert: Path | None = None  # client certificate (PEM), with ``key``
    key: Path | None = None
    # Skips the broker host name check (a test bench whose certificate names another host);
    # the chain is still verified.
    insecure: bool = False

    @model_validator(mode="after")
    def _pair(self) -> UplinkTlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self


class UplinkConfig(Strict):
    """Store-and-forward to the head-end over MQTT (see docs/uplink.md)."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # 1883, or 8883 with TLS
    prefix: str = "amigw"
    client_id: str | None = None  # default "amigw-{gateway.id}"
    username: str | None = None
    password: SecretStr | None = None
    tls: UplinkTlsConfig | None = None
    mqtt_version: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60
    # Keep the broker-side session (subscriptions, queued head-end acks) across reconnects.
    persistent_session: bool = False
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 86400  # MQTT 5 only
    window: Annotated[int, Field(ge=1, le=1000)] = 100
    batch_max_records: Annotated[int, Field(ge=1, le=10_000)] = 200
    batch_max_age_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    ack: Literal["broker", "headend"] = "broker"
    headend_ack_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    reconnect_min_s: Annotated[float, Field(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 300.0
    drain_records_per_s: Annotated[float, Field(ge=0)] = 5000.0  # 0: unpaced
    # While the broker is away (this long, so a blip costs nothing), write the JSON of full
    # batches ahead into the spool's prepared segments, so the backlog drains at publish speed.
    prepare_offline: bool = True
    prepare_after_s: Annotated[float, Field(ge=0)] = 30.0
    publish_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    status_interval_s: Annotated[float, Field(gt=0)] = 60.0

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"broker host must be a name or address, got {value!r}")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _TOPIC_PREFIX.match(value):
            raise ValueError(
                f"topic prefix {value!r} must be '/'-separated levels of letters, digits,"
                " '_', '.', '-' (no wildcards, no leading or trailing '/')"
            )
        return value

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        return None if value is None else _name(value)

    @model_validator(mode="after")
    def _ranges(self) -> UplinkConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is below reconnect_min_s")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883


class MetricsConfig(Strict):
    """The Prometheus endpoint (docs/metrics.md), on its own HTTP thread."""

    enabled: bool = True
    listen: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9108
    # One series per meter multiplies the series count by the district size: opt in.
    per_meter: bool = False
    # Spool-derived figures are counted from the database at this cadence, not per scrape.
    refresh_interval_s: Annotated[float, Field(ge=1, le=300)] = 10.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value == "localhost":
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"listen must be an IP address (127.0.0.1, 0.0.0.0, ::1) or localhost, "
                f"got {value!r}"
            ) from None
        return value


# --- edge checks, tariffs and prepaid accounts (docs/checks.md) ---------------------------------

_MONTH_DAY = re.compile(r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")

Share = Annotated[Decimal, Field(gt=0, le=1)]
Ratio = Annotated[Decimal, Field(gt=0)]
Energy = Annotated[Decimal, Field(ge=0)]
Money = Annotated[Decimal, Field(ge=0)]


def _hhmm(value: str) -> str:
    if not _HHMM.match(value):
        raise ValueError(f"time of day must be HH:MM, got {value!r}")
    return value


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("needs a UTC offset (meters keep local time; say which)")
    return value


class _Check(Strict):
    enabled: bool = True


class MissedReadingCheck(_Check):
    """A meter without a verified daily frozen value by ``deadline`` (local) that day."""

    deadline: str = "06:00"

    _deadline = field_validator("deadline")(lambda cls, v: _hhmm(v))

    @property
    def deadline_time(self) -> dt.time:
        return dt.time.fromisoformat(self.deadline)


class CollectionRateCheck(_Check):
    """The district's share of meters with a verified daily value by the deadline."""

    min_rate: Share = Decimal("0.98")


class RegisterDecreasedCheck(_Check):
    """示度下降: a forward active total below the previous one (frozen or real-time)."""


class MeterStoppedCheck(_Check):
    """停走: register unchanged over a window while measured power says energy flowed."""

    frozen_window_days: Annotated[int, Field(ge=1, le=30)] = 1
    realtime_window_s: Annotated[int, Field(ge=60, le=86_400)] = 900
    min_expected_kwh: Energy = Decimal("0.04")


class DeviationCheck(_Check):
    """超差 / 飞走: register increase over the energy the measured power explains."""

    over_ratio: Ratio = Decimal("4.0")
    over_clear_ratio: Ratio = Decimal("2.0")
    fast_ratio: Ratio = Decimal("6.0")
    fast_clear_ratio: Ratio = Decimal("4.0")
    min_expected_kwh: Energy = Decimal("0.01")

    @model_validator(mode="after")
    def _bands(self) -> DeviationCheck:
        if self.over_clear_ratio > self.over_ratio or self.fast_clear_ratio > self.fast_ratio:
            raise ValueError("a clear ratio must not be above its raise ratio")
        if self.fast_ratio < self.over_ratio:
            raise ValueError("fast_ratio (飞走) must not be below over_ratio (超差)")
        return self


class PhysicalMaxCheck(_Check):
    """Daily consumption above Un x Imax x k x 24 h (k = 1, sqrt 3 or 3 by wiring)."""


class ConsumptionJumpCheck(_Check):
    """Daily consumption above ``factor`` x the rolling median of the previous days."""

    factor: Ratio = Decimal("5")
    window_days: Annotated[int, Field(ge=3, le=60)] = 30
    min_history_days: Annotated[int, Field(ge=1, le=60)] = 7
    min_kwh: Energy = Decimal("1.0")


class ReverseEnergyCheck(_Check):
    """Reverse active energy registered by a consumer meter, or the power direction bit."""

    min_increase_kwh: Energy = Decimal("0.01")


class ClockCheck(_Check):
    """|meter clock - gateway clock| at or over ``threshold_s``; ignored around midnight."""

    threshold_s: Annotated[int, Field(ge=1, le=86_400)] = 300
    clear_s: Annotated[int, Field(ge=1, le=86_400)] | None = None  # default: threshold_s
    quiet_start: str = "23:55"
    quiet_end: str = "00:05"

    _quiet = field_validator("quiet_start", "quiet_end")(lambda cls, v: _hhmm(v))

    @property
    def clear_below_s(self) -> int:
        return self.threshold_s if self.clear_s is None else min(self.clear_s, self.threshold_s)


class VoltageCheck(_Check):
    """失压 / 断相 / 过压 from real-time voltage and current, as shares of Un and Ib."""

    loss_ratio: Share = Decimal("0.78")
    loss_current_ratio: Share = Decimal("0.005")
    failure_ratio: Share = Decimal("0.60")
    over_ratio: Ratio = Decimal("1.20")
    recover_low_ratio: Share = Decimal("0.85")
    recover_high_ratio: Ratio = Decimal("1.15")

    @model_validator(mode="after")
    def _bands(self) -> VoltageCheck:
        if not self.failure_ratio <= self.loss_ratio <= self.recover_low_ratio:
            raise ValueError("need failure_ratio <= loss_ratio <= recover_low_ratio")
        if not 1 <= self.recover_high_ratio <= self.over_ratio:
            raise ValueError("need 1 <= recover_high_ratio <= over_ratio")
        return self


class CoverCheck(_Check):
    """Meter-cover or terminal-cover open counter increased."""


class PowerDownCheck(_Check):
    """Power-down counter up by ``jump`` or more between two reads."""

    jump: Annotated[int, Field(ge=1)] = 1


class RelayCheck(_Check):
    """Relay state (status word 3) differing from the commanded state."""


class BatteryCheck(_Check):
    """Clock battery low (status word 1)."""


class ArchiveCheck(_Check):
    """Readings or reports from an address not in the archive; a configured meter not seen."""

    grace_h: Annotated[int, Field(ge=1, le=24 * 62)] = 24


class LineLossCheck(_Check):
    """台区线损 per district and day from verified daily frozen values."""

    completeness: Share = Decimal("0.98")
    low: Decimal = Decimal("-0.01")
    high: Decimal = Decimal("0.10")

    @model_validator(mode="after")
    def _band(self) -> LineLossCheck:
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class PrepaidCheck(_Check):
    """费控: balance warnings, overdraft, and the local meter's own balance cross-check."""

    warning_1: Money = Decimal("50")
    warning_2: Money = Decimal("10")
    divergence: Money = Decimal("1.00")
    average_days: Annotated[int, Field(ge=1, le=60)] = 7

    @model_validator(mode="after")
    def _levels(self) -> PrepaidCheck:
        if self.warning_2 > self.warning_1:
            raise ValueError("warning_2 must not be above warning_1")
        return self


class CutoffConfig(Strict):
    """When an overdraft may turn into a cut-off recommendation (never in these windows)."""

    night_start: str = "18:00"
    night_end: str = "08:00"
    holidays: list[dt.date] = []
    headend_unreachable_s: Annotated[int, Field(ge=60)] = 86_400

    _night = field_validator("night_start", "night_end")(lambda cls, v: _hhmm(v))


class ChecksConfig(Strict):
    """The edge checks: when they run, how much history they see, and each rule's settings."""

    enabled: bool = True
    interval_s: Annotated[int, Field(ge=10, le=86_400)] = 900
    min_interval_s: Annotated[int, Field(ge=0, le=86_400)] = 60
    history_days: Annotated[int, Field(ge=2, le=62)] = 32
    realtime_history_h: Annotated[int, Field(ge=1, le=72)] = 6
    missed_reading: MissedReadingCheck = MissedReadingCheck()
    collection_rate: CollectionRateCheck = CollectionRateCheck()
    register_decreased: RegisterDecreasedCheck = RegisterDecreasedCheck()
    meter_stopped: MeterStoppedCheck = MeterStoppedCheck()
    deviation: DeviationCheck = DeviationCheck()
    physical_max: PhysicalMaxCheck = PhysicalMaxCheck()
    consumption_jump: ConsumptionJumpCheck = ConsumptionJumpCheck()
    reverse_energy: ReverseEnergyCheck = ReverseEnergyCheck()
    clock: ClockCheck = ClockCheck()
    voltage: VoltageCheck = VoltageCheck()
    cover: CoverCheck = CoverCheck()
    power_down: PowerDownCheck = PowerDownCheck()
    relay: RelayCheck = RelayCheck()
    battery: BatteryCheck = BatteryCheck()
    archive: ArchiveCheck = ArchiveCheck()
    line_loss: LineLossCheck = LineLossCheck()
    prepaid: PrepaidCheck = PrepaidCheck()
    cutoff: CutoffConfig = CutoffConfig()


class TariffConfig(Strict):
    """A price list: ``flat`` (one price), ``tou`` (by the meter's tariff registers: sharp 尖,
    peak 峰, flat 平, valley 谷) or ``tiered`` (阶梯: annual kWh blocks reset each ``reset``)."""

    name: str
    kind: Literal["flat", "tou", "tiered"] = "flat"
    price: Money | None = None
    sharp: Money | None = None
    peak: Money | None = None
    flat: Money | None = None
    valley: Money | None = None
    thresholds_kwh: list[Annotated[Decimal, Field(gt=0)]] = []
    prices: list[Money] = []
    reset: str = "01-01"

    _name = field_validator("name")(lambda cls, v: _name(v))

    @field_validator("reset")
    @classmethod
    def _month_day(cls, value: str) -> str:
        if not _MONTH_DAY.match(value) or value == "02-29":
            raise ValueError(f"reset must be MM-DD (not 02-29), got {value!r}")
        return value

    @model_validator(mode="after")
    def _shape(self) -> TariffConfig:
        if self.kind == "flat" and self.price is None:
            raise ValueError("a flat tariff needs price")
        if self.kind == "tou":
            missing = [k for k in ("sharp", "peak", "flat", "valley") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a tou tariff needs {', '.join(missing)}")
        if self.kind == "tiered":
            t = self.thresholds_kwh
            if not t or any(b <= a for a, b in itertools.pairwise(t)):
                raise ValueError("thresholds_kwh must be ascending and non-empty")
            if len(self.prices) != len(t) + 1:
                raise ValueError(
                    f"a tiered tariff with {len(t)} threshold(s) needs {len(t) + 1} prices"
                )
        return self

    @property
    def reset_month_day(self) -> tuple[int, int]:
        month, day = self.reset.split("-")
        return int(month), int(day)


class TopUpConfig(Strict):
    """A purchase credited to the account at ``at`` (its ``id`` is its natural key)."""

    id: str
    at: dt.datetime
    amount: Annotated[Decimal, Field(gt=0)]

    _id = field_validator("id")(lambda cls, v: _name(v))
    _at = field_validator("at")(lambda cls, v: _aware(v))


class AccountConfig(Strict):
    """A prepaid account: its tariff, opening balance, top-ups and protection (保电)."""

    id: str
    tariff: str
    initial_balance: Decimal = Decimal("0")
    opened: dt.datetime | None = None
    top_ups: list[TopUpConfig] = []
    protected: bool = False

    _id = field_validator("id")(lambda cls, v: _name(v))
    _opened = field_validator("opened")(lambda cls, v: _aware(v))

    @model_validator(mode="after")
    def _unique_top_ups(self) -> AccountConfig:
        ids = [t.id for t in self.top_ups]
        if len(set(ids)) != len(ids):
            raise ValueError("top-up ids must be unique within an account")
        return self


class CommandsConfig(Strict):
    """Signed head-end commands (docs/commands.md): keys, limits, relay settings, protection."""

    enabled: bool = False
    # TOML file of key id -> secret and options; must be readable by the service user only.
    key_file: Path = Path("/etc/amigw/command-keys.toml")
    clock_window_s: Annotated[int, Field(ge=5, le=3600)] = 300
    # expires - issued may not exceed this (the replay cache keeps ids window + lifetime)
    max_lifetime_s: Annotated[int, Field(ge=10, le=86_400)] = 3600
    max_payload_bytes: Annotated[int, Field(ge=512, le=262_144)] = 16_384
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 64
    # token bucket per command type: commands per minute, and how many may come at once
    rate_per_min: Annotated[float, Field(gt=0)] = 30.0
    rate_burst: Annotated[int, Field(ge=1, le=1000)] = 10
    rates: dict[str, Annotated[float, Field(gt=0)]] = {}
    results_held: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # relay control (0x1C)
    arm_timeout_s: Annotated[int, Field(ge=5, le=3600)] = 120
    password_level: Annotated[int, Field(ge=0, le=0xFF)] = 0x02
    password: SecretStr = SecretStr("000000")
    operator: str = "00000000"
    validity_min: Annotated[int, Field(ge=1, le=1440)] = 10
    confirm_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    confirm_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    confirm_retries: Annotated[int, Field(ge=0, le=5)] = 1
    # a trip is refused while the head-end has been unreachable longer than this
    # (default: checks.cutoff.headend_unreachable_s)
    auto_protect_s: Annotated[int, Field(ge=60)] | None = None
    # trips are refused in checks.cutoff's night window and holidays
    protect_night: bool = True
    protect_holidays: bool = True
    close_allowed_on_topup: bool = True
    audit_days: Annotated[int, Field(ge=1, le=3660)] = 400
    # a resend matching more records than this is refused whole (the head-end splits the range)
    resend_max_records: Annotated[int, Field(ge=1, le=1_000_000)] = 50_000

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[0-9]{6}", value.get_secret_value()):
            raise ValueError("the meter password must be 6 digits")
        return value

    @field_validator("operator")
    @classmethod
    def _operator(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9]{8}", value):
            raise ValueError(f"operator code must be 8 digits, got {value!r}")
        return value

    @model_validator(mode="after")
    def _key_file(self) -> CommandsConfig:
        # A missing, unsafe or invalid key file stops the start like any config error (78).
        if self.enabled:
            from gateway.commands.keys import KeyFileError, load_keys  # noqa: PLC0415 - cycle

            try:
                load_keys(self.key_file)
            except KeyFileError as exc:
                raise ValueError(str(exc)) from None
        return self


class Config(Strict):
    gateway: GatewayConfig
    clock: ClockConfig = ClockConfig()
    spool: SpoolConfig = SpoolConfig()
    collection: CollectionConfig = CollectionConfig()
    time_sync: TimeSyncConfig = TimeSyncConfig()
    logging: LoggingConfig = LoggingConfig()
    bus: list[BusConfig] = []
    plc: PlcConfig | None = None
    meter: list[MeterConfig] = []
    uplink: UplinkConfig | None = None
    metrics: MetricsConfig = MetricsConfig()
    checks: ChecksConfig = ChecksConfig()
    tariff: list[TariffConfig] = []
    account: list[AccountConfig] = []
    commands: CommandsConfig = CommandsConfig()

    @model_validator(mode="after")
    def _tariff_and_account_references(self) -> Config:
        errors: list[str] = []
        tariffs = [t.name for t in self.tariff]
        accounts = [a.id for a in self.account]
        for name in sorted({n for n in tariffs if tariffs.count(n) > 1}):
            errors.append(f"tariff: tariff name {name!r} is defined {tariffs.count(name)} times")
        for name in sorted({n for n in accounts if accounts.count(n) > 1}):
            errors.append(f"account: account id {name!r} is defined {accounts.count(name)} times")
        known = ", ".join(sorted(set(tariffs))) or "none"
        for i, a in enumerate(self.account):
            if a.tariff not in tariffs:
                errors.append(
                    f"account[{i}].tariff: unknown tariff {a.tariff!r} (defined: {known})"
                )
        for i, m in enumerate(self.meter):
            if m.tariff is not None and m.tariff not in tariffs:
                errors.append(f"meter[{i}].tariff: unknown tariff {m.tariff!r} (defined: {known})")
            if m.prepaid != "none" and m.account is not None and m.account not in accounts:
                errors.append(
                    f"meter[{i}].account: prepaid meter {m.address} names unknown account"
                    f" {m.account!r}"
                )
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def buses_by_name(self) -> dict[str, SerialBusConfig | TcpBusConfig]:
        return {b.name: b for b in self.bus}

    def meters_on(self, bus: str) -> list[MeterConfig]:
        return [m for m in self.meter if m.bus == bus]
