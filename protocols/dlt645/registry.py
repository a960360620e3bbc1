"""The data-identifier (DI) registry: what each DI carries, declared as data.

An entry is a frozen :class:`DataItem`: DI, edition, title, and its fields in wire order, each
with a value format (:mod:`.formats`) and a unit. Families that the standard parametrises
(energy kinds x tariffs x settlement periods, frozen records x days) are generated from small
tables so that every DI of a family has exactly one declaration. Confidence tags follow
PROTOCOLS.md: ``sure`` (captured or read in the standard), ``likely`` (two or more independent
implementations), ``unsure`` (single source; decoded, but flagged).

Value names are quantity names shared across DIs: ``forward_active_total`` is the same quantity
in ``00010000`` (now), ``0001FF00`` (a block), ``00010001`` (last settlement) and ``05060101``
(frozen yesterday); the DI says which instant it belongs to.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import construct

from protocols.errors import ValueDecodeError

from .formats import (
    ABSENT,
    AsciiText,
    BaudFeature,
    BcdInteger,
    BcdNumber,
    BcdTimestamp,
    BitField,
    DigitString,
    Repeated,
    StatusBits,
    StatusWord,
    ValueFormat,
)


class Edition(enum.Enum):
    """Which DL/T 645 edition a meter speaks."""

    V2007 = "dlt645-2007"
    V1997 = "dlt645-1997"

    @property
    def di_size(self) -> int:
        return 4 if self is Edition.V2007 else 2

    def format_di(self, di: int) -> str:
        return f"{di:0{self.di_size * 2}X}"


class Confidence(enum.Enum):
    SURE = "sure"
    LIKELY = "likely"
    UNSURE = "unsure"


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a data item, in wire order.

    For a :class:`Repeated` format, ``names`` names the items in order; items past the end of
    ``names`` are called ``{name}_t{index}`` (tariffs beyond the four Chinese periods).
    """

    name: str
    format: ValueFormat
    unit: str | None = None
    names: tuple[str, ...] = ()

    def item_name(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else f"{self.name}_t{index}"


@dataclass(frozen=True, slots=True)
class Value:
    """One decoded quantity: name, value (``Decimal`` for energy and money) and unit."""

    name: str
    value: Any
    unit: str | None


@dataclass(frozen=True, slots=True)
class DecodedItem:
    """A data item's payload taken apart; ``extra`` holds bytes a meter sent beyond the layout."""

    item: DataItem
    values: tuple[Value, ...]
    extra: bytes = b""

    def as_dict(self) -> dict[str, Any]:
        return {v.name: v.value for v in self.values}


@dataclass(frozen=True, slots=True)
class DataItem:
    """A data identifier and its layout.

    The field list is the declaration. ``layout`` is it as a ``construct`` struct (building, and
    the compiled :meth:`parse`); :meth:`decode`, the hot path, walks the same fields directly,
    which spares construct's per-parse context objects (measured in ``bench/decode.py``).
    """

    di: int
    edition: Edition
    title: str
    fields: tuple[Field, ...]
    confidence: Confidence = Confidence.LIKELY
    #: payload size in bytes, or ``None`` for variable-length blocks
    fixed_size: int | None = field(init=False, compare=False, repr=False)
    _compiled: list[Any] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        repeated = [i for i, f in enumerate(self.fields) if isinstance(f.format, Repeated)]
        if repeated and repeated != [len(self.fields) - 1]:
            raise ValueError(f"{self.di_text}: only the last field may repeat")
        size = None if repeated else sum(f.format.size for f in self.fields)
        object.__setattr__(self, "fixed_size", size)

    @property
    def di_text(self) -> str:
        return self.edition.format_di(self.di)

    @property
    def layout(self) -> construct.Struct:
        return _layout(self.fields)

    def _check_size(self, payload: bytes) -> None:
        size = self.fixed_size
        if size is not None and len(payload) < size:
            raise ValueDecodeError(
                "short-value", f"{self.di_text} needs {size} bytes of value, got {len(payload)}"
            )

    def _context(self, exc: ValueDecodeError) -> ValueDecodeError:
        return ValueDecodeError(exc.reason, f"DI {self.di_text} ({self.title}): {exc.detail}")

    def parse(self, payload: bytes) -> dict[str, Any]:
        """Payload -> ``{field name: value}`` through the compiled ``construct`` layout."""
        if not self._compiled:
            self._compiled.append(_compiled_layout(self.fields).parsefunc)
        self._check_size(payload)
        size = self.fixed_size
        data = payload if size is None else payload[:size]
        try:
            container = self._compiled[0](io.BytesIO(data), _PARSE_CONTEXT)
        except ValueDecodeError as exc:
            raise self._context(exc) from None
        return {f.name: container[f.name] for f in self.fields}

    def build(self, values: Mapping[str, Any]) -> bytes:
        """``{field name: value}`` -> payload (what a meter sends after the DI)."""
        return bytes(self.layout.build(dict(values)))

    def decode(self, payload: bytes) -> DecodedItem:
        """Payload -> named values with units; extra trailing bytes are kept, not dropped."""
        self._check_size(payload)
        values: list[Value] = []
        offset = 0
        try:
            for f in self.fields:
                fmt = f.format
                if isinstance(fmt, Repeated):
                    block = fmt.decode(payload[offset:])
                    values.extend(Value(f.item_name(i), x, f.unit) for i, x in enumerate(block))
                    offset = len(payload)
                else:
                    end = offset + fmt.size
                    values.append(Value(f.name, fmt.decode(payload[offset:end]), f.unit))
                    offset = end
        except ValueDecodeError as exc:
            raise self._context(exc) from None
        return DecodedItem(self, tuple(values), payload[offset:])


#: What the compiled parsers need of a context (construct's parse() would build a Container).
_PARSE_CONTEXT: Final[dict[str, Any]] = {"_params": None}

_LAYOUTS: dict[tuple[tuple[str, int], ...], Any] = {}
_COMPILED: dict[tuple[tuple[str, int], ...], Any] = {}


def _key(fields: Sequence[Field]) -> tuple[tuple[str, int], ...]:
    return tuple((f.name, id(f.format)) for f in fields)


def _layout(fields: Sequence[Field]) -> construct.Struct:
    key = _key(fields)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = construct.Struct(*(f.name / f.format for f in fields))
    return _LAYOUTS[key]


def _compiled_layout(fields: Sequence[Field]) -> Any:
    key = _key(fields)
    if key not in _COMPILED:
        _COMPILED[key] = _layout(fields).compile()
    return _COMPILED[key]


# --- shared format instances (one per distinct layout keeps compiled code shared) ----------

ENERGY: Final = BcdNumber(4, 2)
ENERGY_SIGNED: Final = BcdNumber(4, 2, signed=True)
ENERGY_BLOCK: Final = Repeated(ENERGY)
ENERGY_SIGNED_BLOCK: Final = Repeated(ENERGY_SIGNED)
VOLTAGE: Final = BcdNumber(2, 1)
CURRENT: Final = BcdNumber(3, 3, signed=True)
POWER: Final = BcdNumber(3, 4, signed=True)
POWER_FACTOR: Final = BcdNumber(2, 3, signed=True)
ANGLE: Final = BcdNumber(2, 1)
FREQUENCY: Final = BcdNumber(2, 2)
TEMPERATURE: Final = BcdNumber(2, 1, signed=True)
BATTERY_VOLTAGE: Final = BcdNumber(2, 2)
COUNT3: Final = BcdInteger(3)
MINUTES3: Final = BcdInteger(3)
MINUTES4: Final = BcdInteger(4)
WEEKDAY: Final = BcdInteger(1)
DATE: Final = BcdTimestamp("YYMMDD")
TIME: Final = BcdTimestamp("hhmmss")
STAMP5: Final = BcdTimestamp("YYMMDDhhmm")
STAMP6: Final = BcdTimestamp("YYMMDDhhmmss")
DEMAND: Final = BcdNumber(3, 4)
DEMAND_SIGNED: Final = BcdNumber(3, 4, signed=True)
DIGITS6: Final = DigitString(6)
CONSTANT3: Final = BcdInteger(3)
BAUD: Final = BaudFeature()
BAUD_BLOCK: Final = Repeated(BAUD)
# 1997 formats
VOLTAGE_1997: Final = BcdNumber(2, 0)
CURRENT_1997: Final = BcdNumber(2, 2)
POWER_1997: Final = BcdNumber(3, 4)
POWER_FACTOR_1997: Final = BcdNumber(2, 3)


class DemandWithTime(ValueFormat):
    """Max demand ``XX.XXXX`` (3) followed by when it happened ``YYMMDDhhmm`` (5)."""

    def __init__(self, demand: BcdNumber) -> None:
        super().__init__()
        self.demand = demand
        self.size = 8

    def decode(self, raw: bytes) -> tuple[Any, Any]:
        if len(raw) != 8:
            raise ValueDecodeError("short-value", f"demand with time needs 8 bytes, got {len(raw)}")
        return (self.demand.decode(raw[:3]), STAMP5.decode(raw[3:]))

    def encode(self, value: tuple[Any, Any]) -> bytes:
        return self.demand.encode(value[0]) + STAMP5.encode(value[1])


DEMAND_TIME: Final = DemandWithTime(DEMAND)
DEMAND_TIME_SIGNED: Final = DemandWithTime(DEMAND_SIGNED)
DEMAND_TIME_BLOCK: Final = Repeated(DEMAND_TIME)
DEMAND_TIME_SIGNED_BLOCK: Final = Repeated(DEMAND_TIME_SIGNED)

# --- status words (04000501..07) -------------------------------------------------------------

STATUS_WORDS: Final[Mapping[int, tuple[str, StatusWord]]] = {
    1: (
        "meter run status word 1",
        StatusWord(
            2,
            (
                BitField("clock_battery_low", 2),
                BitField("reading_battery_low", 3),
                BitField("active_power_reverse", 4),
                BitField("reactive_power_reverse", 5),
            ),
        ),
    ),
    # Words 2 and 4..7: bit positions from vendor code, not checked in the standard [unsure].
    2: (
        "meter run status word 2 (power direction per phase)",
        StatusWord(
            2,
            (
                BitField("a_active_reverse", 0),
                BitField("b_active_reverse", 1),
                BitField("c_active_reverse", 2),
                BitField("a_reactive_reverse", 4),
                BitField("b_reactive_reverse", 5),
                BitField("c_reactive_reverse", 6),
            ),
        ),
    ),
    3: (
        "meter run status word 3 (operation, relay, account)",
        StatusWord(
            2,
            (
                BitField("time_period_set", 0, 1, ("first", "second")),
                BitField("supply", 1, 2, ("mains", "auxiliary", "battery", "reserved")),
                BitField("programming_allowed", 3),
                BitField("relay_open", 4),
                BitField("time_zone_set", 5, 1, ("first", "second")),
                BitField("relay_trip_commanded", 6),
                BitField("pre_trip_alarm", 7),
                BitField(
                    "meter_type",
                    8,
                    2,
                    ("not_prepaid", "energy_prepaid", "money_prepaid", "reserved"),
                ),
                BitField("keep_power", 12),
                BitField("identity_auth_valid", 13),
                BitField("local_account", 14),
                BitField("remote_account", 15),
            ),
        ),
    ),
    **{
        n: (
            f"meter run status word {n} (phase {phase} faults)",
            StatusWord(
                2,
                (
                    BitField("loss_of_voltage", 0),
                    BitField("undervoltage", 1),
                    BitField("overvoltage", 2),
                    BitField("loss_of_current", 3),
                    BitField("overcurrent", 4),
                    BitField("overload", 5),
                    BitField("power_reverse", 6),
                    BitField("phase_failure", 7),
                    BitField("current_break", 8),
                ),
            ),
        )
        for n, phase in ((4, "A"), (5, "B"), (6, "C"))
    },
    7: (
        "meter run status word 7 (combined-phase faults)",
        StatusWord(
            2,
            (
                BitField("voltage_reverse_sequence", 0),
                BitField("current_reverse_sequence", 1),
                BitField("voltage_unbalance", 2),
                BitField("current_unbalance", 3),
                BitField("auxiliary_power_loss", 4),
                BitField("power_down", 5),
                BitField("demand_over_limit", 6),
                BitField("power_factor_below_limit", 7),
                BitField("current_severe_unbalance", 8),
            ),
        ),
    ),
}

# --- families ----------------------------------------------------------------------------------

V7, V97 = Edition.V2007, Edition.V1997
SURE, LIKELY, UNSURE = Confidence.SURE, Confidence.LIKELY, Confidence.UNSURE

TARIFF_NAMES: Final = ("total", "sharp", "peak", "flat", "valley")


def tariff_name(n: int) -> str:
    return TARIFF_NAMES[n] if n < len(TARIFF_NAMES) else f"t{n}"


@dataclass(frozen=True, slots=True)
class _Kind:
    di2: int
    quantity: str
    title: str
    signed: bool
    unit: str
    tariffs: bool = True


#: DI2 of class 00 (energy) and class 01 (max demand).
ENERGY_KINDS: Final = (
    _Kind(0x00, "combined_active", "combined active energy", True, "kWh"),
    _Kind(0x01, "forward_active", "forward active energy", False, "kWh"),
    _Kind(0x02, "reverse_active", "reverse active energy", False, "kWh"),
    _Kind(0x03, "combined_reactive_1", "combined reactive 1 energy", True, "kvarh"),
    _Kind(0x04, "combined_reactive_2", "combined reactive 2 energy", True, "kvarh"),
    _Kind(0x05, "reactive_q1", "quadrant I reactive energy", False, "kvarh"),
    _Kind(0x06, "reactive_q2", "quadrant II reactive energy", False, "kvarh"),
    _Kind(0x07, "reactive_q3", "quadrant III reactive energy", False, "kvarh"),
    _Kind(0x08, "reactive_q4", "quadrant IV reactive energy", False, "kvarh"),
    _Kind(0x15, "a_forward_active", "phase A forward active energy", False, "kWh", False),
    _Kind(0x16, "a_reverse_active", "phase A reverse active energy", False, "kWh", False),
    _Kind(0x29, "b_forward_active", "phase B forward active energy", False, "kWh", False),
    _Kind(0x2A, "b_reverse_active", "phase B reverse active energy", False, "kWh", False),
    _Kind(0x3D, "c_forward_active", "phase C forward active energy", False, "kWh", False),
    _Kind(0x3E, "c_reverse_active", "phase C reverse active energy", False, "kWh", False),
)
DEMAND_KINDS: Final = tuple(k for k in ENERGY_KINDS if 0x01 <= k.di2 <= 0x08)
_DEMAND_UNIT: Final = {"kWh": "kW", "kvarh": "kvar"}

MAX_TARIFF: Final = 0x3F
MAX_SETTLEMENT: Final = 0x0C
DAILY_FROZEN_DAYS: Final = 0x3E  # 62 days
HOURLY_FROZEN_RECORDS: Final = 0xFE


def _period_title(period: int) -> str:
    return "" if period == 0 else f", settlement period {period} ago"


_KIND_BY_DI2: Final = {k.di2: k for k in ENERGY_KINDS}
_DEMAND_BY_DI2: Final = {k.di2: k for k in DEMAND_KINDS}
_ENERGY_CONFIDENCE: Final = {0x00: SURE, 0x01: SURE}


def _energy_item(k: _Kind, tariff: int, period: int) -> DataItem:
    """Class 00: DI2 = kind, DI1 = 00 total / 01..3F tariff / FF block, DI0 = settlement period."""
    fmt = ENERGY_SIGNED if k.signed else ENERGY
    conf = _ENERGY_CONFIDENCE.get(k.di2, LIKELY)
    di = k.di2 << 16 | tariff << 8 | period
    if tariff == 0xFF:
        names = tuple(f"{k.quantity}_{tariff_name(t)}" for t in range(5))
        block = ENERGY_SIGNED_BLOCK if k.signed else ENERGY_BLOCK
        return DataItem(
            di,
            V7,
            f"{k.title}, block total + tariffs{_period_title(period)}",
            (Field(k.quantity, block, k.unit, names),),
            conf,
        )
    what = "total" if tariff == 0 else f"tariff {tariff} ({tariff_name(tariff)})"
    return DataItem(
        di,
        V7,
        f"{k.title}, {what}{_period_title(period)}",
        (Field(f"{k.quantity}_{tariff_name(tariff)}", fmt, k.unit),),
        conf,
    )


def _demand_item(k: _Kind, tariff: int, period: int) -> DataItem:
    """Class 01: max demand and its time, DI laid out as for energy."""
    unit = _DEMAND_UNIT[k.unit]
    q = f"{k.quantity}_max_demand"
    di = 0x01000000 | k.di2 << 16 | tariff << 8 | period
    if tariff == 0xFF:
        block = DEMAND_TIME_SIGNED_BLOCK if k.signed else DEMAND_TIME_BLOCK
        return DataItem(
            di,
            V7,
            f"{k.title} max demand and time, block{_period_title(period)}",
            (Field(q, block, unit, tuple(f"{q}_{tariff_name(t)}" for t in range(5))),),
        )
    fmt = DEMAND_TIME_SIGNED if k.signed else DEMAND_TIME
    return DataItem(
        di,
        V7,
        f"{k.title} max demand and time, {tariff_name(tariff)}{_period_title(period)}",
        (Field(f"{q}_{tariff_name(tariff)}", fmt, unit),),
    )


_DAILY_ENERGY: Final = {
    0x01: ("forward_active", ENERGY_BLOCK, "kWh", SURE),
    0x02: ("reverse_active", ENERGY_BLOCK, "kWh", LIKELY),
    0x03: ("combined_reactive_1", ENERGY_SIGNED_BLOCK, "kvarh", LIKELY),
    0x04: ("combined_reactive_2", ENERGY_SIGNED_BLOCK, "kvarh", LIKELY),
    0x05: ("reactive_q1", ENERGY_BLOCK, "kvarh", LIKELY),
    0x06: ("reactive_q2", ENERGY_BLOCK, "kvarh", LIKELY),
    0x07: ("reactive_q3", ENERGY_BLOCK, "kvarh", LIKELY),
    0x08: ("reactive_q4", ENERGY_BLOCK, "kvarh", LIKELY),
}
_DAILY_DEMAND: Final = {0x09: "forward_active_max_demand", 0x0A: "reverse_active_max_demand"}


def _daily_item(di1: int, n: int) -> DataItem | None:
    """Class 05 06: daily frozen records, DI1 = what, DI0 = 1..62 days ago."""
    ago = f"{n} day{'s' if n > 1 else ''} ago"
    di = 0x05060000 | di1 << 8 | n
    if di1 == 0x00:
        return DataItem(di, V7, f"daily freeze time, {ago}", (Field("freeze_time", STAMP5),), SURE)
    if di1 in _DAILY_ENERGY:
        q, block, unit, conf = _DAILY_ENERGY[di1]
        return DataItem(
            di,
            V7,
            f"daily frozen {q.replace('_', ' ')} energy, {ago}",
            (Field(q, block, unit, tuple(f"{q}_{tariff_name(t)}" for t in range(5))),),
            conf,
        )
    if di1 in _DAILY_DEMAND:
        q = _DAILY_DEMAND[di1]
        return DataItem(
            di,
            V7,
            f"daily frozen {q.replace('_', ' ')}, {ago}",
            (Field(q, DEMAND_TIME_BLOCK, "kW", tuple(f"{q}_{tariff_name(t)}" for t in range(5))),),
        )
    return None


def _hourly_item(di1: int, n: int) -> DataItem | None:
    """Class 05 04: hourly frozen records, DI0 = 1..254 records ago."""
    ago = f"{n} record{'s' if n > 1 else ''} ago"
    di = 0x05040000 | di1 << 8 | n
    if di1 == 0x00:
        return DataItem(di, V7, f"hourly freeze time, {ago}", (Field("freeze_time", STAMP5),))
    if di1 == 0x01:
        return DataItem(
            di,
            V7,
            f"hourly frozen forward active total, {ago}",
            (Field("forward_active_total", ENERGY, "kWh"),),
        )
    if di1 == 0x02:
        return DataItem(
            di,
            V7,
            f"hourly frozen reverse active total, {ago}",
            (Field("reverse_active_total", ENERGY, "kWh"),),
        )
    return None


def _resolve_family(di: int) -> DataItem | None:
    """Build the declaration of a DI that belongs to a parametrised family, or ``None``."""
    di3, di2, di1, di0 = di >> 24, di >> 16 & 0xFF, di >> 8 & 0xFF, di & 0xFF
    if di3 in (0x00, 0x01) and di0 <= MAX_SETTLEMENT and (di1 <= MAX_TARIFF or di1 == 0xFF):
        kinds = _KIND_BY_DI2 if di3 == 0x00 else _DEMAND_BY_DI2
        k = kinds.get(di2)
        if k is None or (not k.tariffs and di1 != 0):
            return None
        return _energy_item(k, di1, di0) if di3 == 0x00 else _demand_item(k, di1, di0)
    if di3 == 0x05 and di2 == 0x06 and 1 <= di0 <= DAILY_FROZEN_DAYS:
        return _daily_item(di1, di0)
    if di3 == 0x05 and di2 == 0x04 and 1 <= di0 <= HOURLY_FROZEN_RECORDS:
        return _hourly_item(di1, di0)
    return None


def _family_dis() -> Iterator[int]:
    for k in ENERGY_KINDS:
        for period in range(MAX_SETTLEMENT + 1):
            for t in (*range(MAX_TARIFF + 1), 0xFF) if k.tariffs else (0,):
                yield k.di2 << 16 | t << 8 | period
    for k in DEMAND_KINDS:
        for period in range(MAX_SETTLEMENT + 1):
            for t in (*range(MAX_TARIFF + 1), 0xFF):
                yield 0x01000000 | k.di2 << 16 | t << 8 | period
    for n in range(1, DAILY_FROZEN_DAYS + 1):
        for di1 in (0x00, *_DAILY_ENERGY, *_DAILY_DEMAND):
            yield 0x05060000 | di1 << 8 | n
    for n in range(1, HOURLY_FROZEN_RECORDS + 1):
        for di1 in (0x00, 0x01, 0x02):
            yield 0x05040000 | di1 << 8 | n


def _phase_items(
    di_base: int,
    quantity: str,
    title: str,
    fmt: ValueFormat,
    *,
    unit: str,
    conf: Confidence,
    total: bool,
) -> Iterator[DataItem]:
    """A variable with per-phase DIs (DI1 01..03), an optional total (DI1 00) and a block (FF)."""
    names = (["total"] if total else []) + ["a", "b", "c"]
    first = 0 if total else 1
    for i, suffix in enumerate(names, start=first):
        yield DataItem(
            di_base | i << 8,
            V7,
            f"{title}, {suffix if suffix == 'total' else 'phase ' + suffix.upper()}",
            (Field(f"{quantity}_{suffix}", fmt, unit),),
            conf,
        )
    yield DataItem(
        di_base | 0xFF << 8,
        V7,
        f"{title}, block",
        tuple(Field(f"{quantity}_{s}", fmt, unit) for s in names),
        conf,
    )


def _variable_items() -> Iterator[DataItem]:
    yield from _phase_items(
        0x02010000, "voltage", "voltage", VOLTAGE, unit="V", conf=SURE, total=False
    )
    yield from _phase_items(
        0x02020000, "current", "current", CURRENT, unit="A", conf=SURE, total=False
    )
    yield from _phase_items(
        0x02030000, "active_power", "active power", POWER, unit="kW", conf=SURE, total=True
    )
    yield from _phase_items(
        0x02040000, "reactive_power", "reactive power", POWER, unit="kvar", conf=SURE, total=True
    )
    yield from _phase_items(
        0x02050000, "apparent_power", "apparent power", POWER, unit="kVA", conf=SURE, total=True
    )
    yield from _phase_items(
        0x02060000, "power_factor", "power factor", POWER_FACTOR, unit="", conf=SURE, total=True
    )
    yield from _phase_items(
        0x02070000, "phase_angle", "phase angle", ANGLE, unit="deg", conf=LIKELY, total=False
    )
    yield DataItem(0x02800001, V7, "neutral current", (Field("neutral_current", CURRENT, "A"),))
    yield DataItem(0x02800002, V7, "grid frequency", (Field("frequency", FREQUENCY, "Hz"),), SURE)
    yield DataItem(
        0x02800007, V7, "meter internal temperature", (Field("temperature", TEMPERATURE, "degC"),)
    )
    yield DataItem(
        0x02800008,
        V7,
        "clock battery voltage",
        (Field("clock_battery_voltage", BATTERY_VOLTAGE, "V"),),
    )
    yield DataItem(
        0x0280000A,
        V7,
        "clock battery working time",
        (Field("clock_battery_minutes", MINUTES4, "min"),),
    )


def _event_items() -> Iterator[DataItem]:
    for di, quantity, title, conf in (
        (0x03010000, "loss_of_voltage", "loss-of-voltage totals", LIKELY),
        (0x03040000, "phase_failure", "phase-failure totals", UNSURE),
    ):
        yield DataItem(
            di,
            V7,
            title,
            tuple(
                Field(f"{quantity}_{p}_{what}", fmt, unit)
                for p in "abc"
                for what, fmt, unit in (("count", COUNT3, None), ("minutes", MINUTES3, "min"))
            ),
            conf,
        )
    yield DataItem(0x03110000, V7, "power-down count", (Field("power_down_count", COUNT3),), SURE)
    for n in range(1, 11):
        yield DataItem(
            0x03110000 | n,
            V7,
            f"power-down record, {n} ago",
            (Field("power_down_start", STAMP6), Field("power_down_end", STAMP6)),
        )
    yield DataItem(
        0x03300D00, V7, "meter cover opened count", (Field("meter_cover_open_count", COUNT3),), SURE
    )
    yield DataItem(
        0x03300E00, V7, "terminal cover opened count", (Field("terminal_cover_open_count", COUNT3),)
    )


def _parameter_items() -> Iterator[DataItem]:
    yield DataItem(
        0x04000101, V7, "date and weekday", (Field("weekday", WEEKDAY), Field("date", DATE)), SURE
    )
    yield DataItem(0x04000102, V7, "time", (Field("time", TIME),), SURE)
    yield DataItem(0x04000401, V7, "communication address", (Field("comm_address", DIGITS6),))
    yield DataItem(0x04000402, V7, "meter number", (Field("meter_number", DIGITS6),), SURE)
    yield DataItem(0x04000403, V7, "asset management code", (Field("asset_code", AsciiText(32)),))
    yield DataItem(
        0x04000409, V7, "active meter constant", (Field("active_constant", CONSTANT3, "imp/kWh"),)
    )
    yield DataItem(
        0x0400040A,
        V7,
        "reactive meter constant",
        (Field("reactive_constant", CONSTANT3, "imp/kvarh"),),
    )
    for n, (title, fmt) in STATUS_WORDS.items():
        conf = SURE if n == 3 else (LIKELY if n == 1 else UNSURE)
        yield DataItem(0x04000500 | n, V7, title, (Field(f"status_word_{n}", fmt),), conf)
    for n, port in enumerate(
        ("infrared modulated", "infrared contact", "port 1", "port 2", "port 3"), 1
    ):
        yield DataItem(
            0x04000700 | n, V7, f"baud feature word, {port}", (Field(f"baud_{n}", BAUD, "bd"),)
        )
    yield DataItem(
        0x040007FF,
        V7,
        "baud feature words, block",
        (Field("baud", BAUD_BLOCK, "bd", tuple(f"baud_{n}" for n in range(1, 6))),),
        SURE,
    )


def _prepaid_items() -> Iterator[DataItem]:
    yield DataItem(0x00900100, V7, "remaining energy", (Field("remaining_energy", ENERGY, "kWh"),))
    yield DataItem(0x00900101, V7, "overdraft energy", (Field("overdraft_energy", ENERGY, "kWh"),))
    yield DataItem(
        0x00900200,
        V7,
        "remaining amount (balance)",
        (Field("remaining_amount", ENERGY, "CNY"),),
        SURE,
    )
    yield DataItem(0x00900201, V7, "overdraft amount", (Field("overdraft_amount", ENERGY, "CNY"),))


def _items_1997() -> Iterator[DataItem]:
    energy_1997 = (
        (0x9010, "forward_active", "kWh", "forward active energy", SURE),
        (0x9020, "reverse_active", "kWh", "reverse active energy", SURE),
        (0x9110, "forward_reactive", "kvarh", "forward reactive energy", LIKELY),
        (0x9120, "reverse_reactive", "kvarh", "reverse reactive energy", LIKELY),
        (0x9410, "forward_active", "kWh", "forward active energy, last month", LIKELY),
        (0x9420, "reverse_active", "kWh", "reverse active energy, last month", LIKELY),
    )
    for base, q, unit, title, conf in energy_1997:
        for t in range(5):
            yield DataItem(
                base | t,
                V97,
                f"{title}, {tariff_name(t)}",
                (Field(f"{q}_{tariff_name(t)}", ENERGY, unit),),
                conf,
            )
        yield DataItem(
            base | 0x0F,
            V97,
            f"{title}, block",
            (Field(q, ENERGY_BLOCK, unit, tuple(f"{q}_{tariff_name(t)}" for t in range(5))),),
            conf,
        )
    # 9000 is not in the 1997 tables we could check, but a field capture answers it with a
    # 4-byte XXXXXX.XX energy [unsure].
    yield DataItem(
        0x9000,
        V97,
        "active energy total (non-standard DI seen in the field)",
        (Field("active_total", ENERGY, "kWh"),),
        UNSURE,
    )
    for base, q, fmt, unit, title in (
        (0xB610, "voltage", VOLTAGE_1997, "V", "voltage"),
        (0xB620, "current", CURRENT_1997, "A", "current"),
    ):
        for i, p in enumerate("abc", 1):
            yield DataItem(
                base | i,
                V97,
                f"{title}, phase {p.upper()}",
                (Field(f"{q}_{p}", fmt, unit),),
                SURE if base == 0xB610 else LIKELY,
            )
        yield DataItem(
            base | 0x0F, V97, f"{title}, block", tuple(Field(f"{q}_{p}", fmt, unit) for p in "abc")
        )
    for base, q, fmt, unit, title in (
        (0xB630, "active_power", POWER_1997, "kW", "active power"),
        (0xB650, "power_factor", POWER_FACTOR_1997, "", "power factor"),
    ):
        for i, p in enumerate(("total", "a", "b", "c")):
            yield DataItem(base | i, V97, f"{title}, {p}", (Field(f"{q}_{p}", fmt, unit),))
        yield DataItem(
            base | 0x0F,
            V97,
            f"{title}, block",
            tuple(Field(f"{q}_{p}", fmt, unit) for p in ("total", "a", "b", "c")),
        )
    yield DataItem(
        0xC010, V97, "date and weekday", (Field("weekday", WEEKDAY), Field("date", DATE)), SURE
    )
    yield DataItem(0xC011, V97, "time", (Field("time", TIME),), SURE)
    yield DataItem(
        0xC030, V97, "active meter constant", (Field("active_constant", CONSTANT3, "imp/kWh"),)
    )
    yield DataItem(
        0xC031,
        V97,
        "reactive meter constant",
        (Field("reactive_constant", CONSTANT3, "imp/kvarh"),),
    )
    yield DataItem(0xC032, V97, "meter number", (Field("meter_number", DIGITS6),), SURE)
    yield DataItem(0xC033, V97, "user number", (Field("user_number", DIGITS6),))
    yield DataItem(0xC034, V97, "device code", (Field("device_code", DIGITS6),))


def _build() -> dict[tuple[Edition, int], DataItem]:
    table: dict[tuple[Edition, int], DataItem] = {}
    for gen in (_variable_items, _event_items, _parameter_items, _prepaid_items, _items_1997):
        for item in gen():
            key = (item.edition, item.di)
            if key in table:
                raise AssertionError(f"DI {item.di_text} declared twice")
            table[key] = item
    return table


#: Items declared one by one; family members are built on first use and kept in _RESOLVED
#: (a collector uses a few dozen DIs, so the thousands a family spans never sit in memory).
_EXPLICIT: Final[Mapping[tuple[Edition, int], DataItem]] = _build()
_RESOLVED: dict[int, DataItem] = {}


def lookup(edition: Edition, di: int) -> DataItem | None:
    item = _EXPLICIT.get((edition, di))
    if item is not None or edition is not Edition.V2007:
        return item
    cached = _RESOLVED.get(di)
    if cached is not None:
        return cached
    resolved = _resolve_family(di)
    if resolved is not None:  # only real family members are kept: the cache stays bounded
        _RESOLVED[di] = resolved
    return resolved


def items(edition: Edition | None = None) -> Iterator[DataItem]:
    """Every declared item (family members are built as they are enumerated)."""
    for (e, _), item in _EXPLICIT.items():
        if edition is None or e is edition:
            yield item
    if edition in (None, Edition.V2007):
        for di in _family_dis():
            member = _resolve_family(di)
            assert member is not None
            yield member


def find(name_or_di: str, edition: Edition = Edition.V2007) -> DataItem | None:
    """Look an item up by DI text (``"05060101"``, ``"9010"``) or by a value name."""
    text = name_or_di.strip().upper().replace(" ", "")
    if len(text) == edition.di_size * 2:
        try:
            return lookup(edition, int(text, 16))
        except ValueError:
            pass
    lowered = name_or_di.strip().lower()
    for item in items(edition):
        if len(item.fields) == 1 and item.fields[0].name == lowered and (item.di & 0xFF) == 0:
            return item
    return None


__all__ = [
    "ABSENT",
    "Confidence",
    "DataItem",
    "DecodedItem",
    "Edition",
    "Field",
    "StatusBits",
    "Value",
    "find",
    "items",
    "lookup",
]
