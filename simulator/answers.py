"""What a virtual meter answers for each data identifier, in both editions.

The registry (:mod:`protocols.dlt645.registry`) says what a DI carries; this module says which
DIs the model supports and where each value comes from in :class:`~simulator.meter.VirtualMeter`.
The payload is built with the registry's own value formats, so the gateway parses exactly what
the simulator meant. ``None`` means "no such data" (the meter answers ERR 02): a DI the registry
does not know, one the model does not keep (hourly freezes, reactive demand...), a phase a
single-phase meter lacks, a prepaid DI on a post-paid meter, or a frozen record not yet made.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from protocols.dlt645.formats import ABSENT, Repeated
from protocols.dlt645.registry import DataItem, Edition, lookup

from .registers import Demand, RegisterView

if TYPE_CHECKING:
    from .meter import VirtualMeter

_ENERGY_2007: Final = {
    0x00: "combined_active",
    0x01: "forward_active",
    0x02: "reverse_active",
    0x03: "combined_reactive_1",
    0x04: "combined_reactive_2",
    0x05: "reactive_q1",
    0x06: "reactive_q2",
    0x07: "reactive_q3",
    0x08: "reactive_q4",
}
_PHASE_ENERGY_2007: Final = {
    0x15: ("phase_forward", 0), 0x16: ("phase_reverse", 0),
    0x29: ("phase_forward", 1), 0x2A: ("phase_reverse", 1),
    0x3D: ("phase_forward", 2), 0x3E: ("phase_reverse", 2),
}  # fmt: skip
_DAILY_ENERGY: Final = {di1: q for di1, q in _ENERGY_2007.items() if di1}
_BAUD_PORTS: Final = (1200, 1200)  # infrared modulated, infrared contact
_ENERGY_1997: Final = {
    0x901: ("forward_active", 0), 0x902: ("reverse_active", 0),
    0x911: ("combined_reactive_1", 0), 0x912: ("combined_reactive_2", 0),
    0x941: ("forward_active", 1), 0x942: ("reverse_active", 1),
}  # fmt: skip


def answer(meter: VirtualMeter, di: int) -> bytes | None:
    """The value bytes of ``di`` (what follows the DI in a read reply), or ``None`` for ERR 02."""
    item = lookup(meter.edition, di)
    if item is None:
        return None
    values = (
        _values_2007(meter, item) if meter.edition is Edition.V2007 else _values_1997(meter, item)
    )
    if values is None:
        return None
    return encode(item, values)


def encode(item: DataItem, values: Mapping[str, Any]) -> bytes:
    """The same bytes as ``item.build(values)``, without construct's per-call overhead."""
    return b"".join(f.format.encode(values[f.name]) for f in item.fields)


def _single(item: DataItem, value: Any) -> dict[str, Any] | None:
    """A one-field item; an absent value there means the meter has no such data."""
    if value is ABSENT or value is None:
        return None
    return {item.fields[0].name: value}


def _from_map(item: DataItem, source: Mapping[str, Any]) -> dict[str, Any] | None:
    """Fill an item from a name -> value map (a callable value is computed only when needed).

    A lone absent field means "no such data"; inside a block it is sent as FF.
    """
    if any(f.name not in source for f in item.fields):
        return None
    values = {f.name: _value(source[f.name]) for f in item.fields}
    if len(item.fields) == 1 and not isinstance(item.fields[0].format, Repeated):
        return _single(item, values[item.fields[0].name])
    return values


def _value(value: Any) -> Any:
    return value() if callable(value) else value


def _energy(
    item: DataItem, regs: RegisterView | None, quantity: str, tariff: int
) -> dict[str, Any] | None:
    if regs is None:
        return None
    values = regs.quantity(quantity)
    if tariff == 0xFF:
        return {item.fields[0].name: list(values)}
    return _single(item, values[tariff]) if tariff < len(values) else None


def _demand(
    item: DataItem, regs: RegisterView | None, forward: bool, tariff: int
) -> dict[str, Any] | None:
    if regs is None:
        return None
    demands = regs.demand(forward=forward)

    def pair(d: Demand) -> tuple[Decimal, Any]:
        return (d.kw, ABSENT if d.at is None else d.at)

    if tariff == 0xFF:
        return {item.fields[0].name: [pair(d) for d in demands]}
    return _single(item, pair(demands[tariff])) if tariff < len(demands) else None


def _period(meter: VirtualMeter, n: int) -> RegisterView | None:
    return meter.register_view(n)


def _values_2007(meter: VirtualMeter, item: DataItem) -> dict[str, Any] | None:
    di = item.di
    di3, di2, di1, di0 = di >> 24, di >> 16 & 0xFF, di >> 8 & 0xFF, di & 0xFF
    if di3 == 0x00:
        if di2 == 0x90:
            return _from_map(item, _prepaid_map(meter))
        if di2 in _ENERGY_2007:
            return _energy(item, _period(meter, di0), _ENERGY_2007[di2], di1)
        if di2 in _PHASE_ENERGY_2007:
            name, phase = _PHASE_ENERGY_2007[di2]
            if phase >= meter.config.phases:
                return None
            regs = _period(meter, di0)
            return None if regs is None else _single(item, regs.quantity(name)[phase])
        return None
    if di3 == 0x01 and di2 in (0x01, 0x02):
        return _demand(item, _period(meter, di0), di2 == 0x01, di1)
    if di3 == 0x02:
        return _from_map(item, _variables(meter))
    if di3 == 0x03:
        return _from_map(item, _events_map(meter, di))
    if di3 == 0x04:
        return _from_map(item, _parameters(meter))
    if di3 == 0x05 and di2 == 0x06:
        return _daily(meter, item, di1, di0)
    return None


def _daily(meter: VirtualMeter, item: DataItem, di1: int, n: int) -> dict[str, Any] | None:
    record = meter.daily_view(n)
    if record is None:
        return None
    day, regs = record
    if di1 == 0x00:
        return {"freeze_time": dt.datetime(day.year, day.month, day.day)}
    if di1 in _DAILY_ENERGY:
        return {item.fields[0].name: list(regs.quantity(_DAILY_ENERGY[di1]))}
    if di1 in (0x09, 0x0A):
        return _demand(item, regs, di1 == 0x09, 0xFF)
    return None


def _variables(meter: VirtualMeter) -> dict[str, Any]:
    values = dict(meter.instant().values())
    battery_low = meter.status_word(1).bits["clock_battery_low"]
    values["clock_battery_voltage"] = Decimal("2.10") if battery_low else Decimal("3.60")
    values["clock_battery_minutes"] = meter.battery_minutes()
    return values


def _events_map(meter: VirtualMeter, di: int) -> dict[str, Any]:
    c = meter.counters()
    three = meter.config.phases == 3
    values: dict[str, Any] = {
        "meter_cover_open_count": c.meter_cover_open,
        "terminal_cover_open_count": c.terminal_cover_open,
        "power_down_count": c.power_down,
    }
    for i, p in enumerate("abc"):
        present = i == 0 or three
        values[f"loss_of_voltage_{p}_count"] = c.loss_of_voltage_count[i] if present else ABSENT
        values[f"loss_of_voltage_{p}_minutes"] = c.loss_of_voltage_minutes[i] if present else ABSENT
        values[f"phase_failure_{p}_count"] = 0 if present else ABSENT
        values[f"phase_failure_{p}_minutes"] = 0 if present else ABSENT
    if di >> 8 == 0x031100 and di & 0xFF:
        n = di & 0xFF
        if n > len(c.power_down_records):
            return {}
        start, end = c.power_down_records[n - 1]
        values["power_down_start"], values["power_down_end"] = start, end
    return values


def _parameters(meter: VirtualMeter) -> dict[str, Any]:
    now = meter.now_local()
    cfg = meter.config
    values: dict[str, Any] = {
        "weekday": (now.weekday() + 1) % 7,  # DL/T 645: 0 = Sunday
        "date": now.date(),
        "time": now.time().replace(microsecond=0),
        "comm_address": meter.address.digits,
        "meter_number": cfg.meter_number or meter.address.digits,
        "asset_code": f"AMIGW-SIM-{meter.address.digits}",
        "active_constant": cfg.active_constant,
        "reactive_constant": cfg.active_constant,
        "user_number": meter.address.digits,
        "device_code": meter.address.digits,
    }
    for n in range(1, 8):
        values[f"status_word_{n}"] = functools.partial(meter.status_word, n)
    bauds = (*_BAUD_PORTS, cfg.baud, 2400, 2400)
    for n, baud in enumerate(bauds, 1):
        values[f"baud_{n}"] = baud
    values["baud"] = list(bauds)
    return values


def _prepaid_map(meter: VirtualMeter) -> dict[str, Any]:
    state = meter.prepaid()
    if state is None:
        return {}
    return {
        "remaining_amount": state.remaining_amount,
        "overdraft_amount": state.overdraft_amount,
        "remaining_energy": state.remaining_energy,
        "overdraft_energy": state.overdraft_energy,
    }


# --- DL/T 645-1997 ------------------------------------------------------------------------------


def _values_1997(meter: VirtualMeter, item: DataItem) -> dict[str, Any] | None:
    di = item.di
    family = di >> 4
    if family in _ENERGY_1997:
        quantity, period = _ENERGY_1997[family]
        return _energy(
            item, _period(meter, period), quantity, 0xFF if di & 0xF == 0xF else di & 0xF
        )
    if di == 0x9000:
        view = meter.register_view()
        return None if view is None else _single(item, view.quantity("forward_active")[0])
    if di >> 8 == 0xB6:
        return _from_map(item, _variables_1997(meter))
    if di >> 8 == 0xC0:
        return _from_map(item, _parameters(meter))
    return None


_1997_CONVERT: Final[Mapping[str, Callable[[Decimal], Decimal]]] = {
    "voltage": lambda v: v.quantize(Decimal(1)),
    "current": lambda v: abs(v).quantize(Decimal("0.01")),
    "active_power": abs,
    "power_factor": abs,
}


def _variables_1997(meter: VirtualMeter) -> dict[str, Any]:
    """1997 formats are unsigned and coarser: volts as integers, amps with 2 decimals."""
    out: dict[str, Any] = {}
    for name, value in meter.instant().values().items():
        quantity = name.rsplit("_", 1)[0]
        convert = _1997_CONVERT.get(quantity)
        if convert is not None:
            out[name] = value if value is ABSENT else convert(value)
    return out
