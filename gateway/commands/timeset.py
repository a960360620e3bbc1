"""Per-meter time set: the DL/T 645-2007 write (0x14) of date and time, for meters configured
``time_set = "write"``.

A broadcast corrects at most 5 minutes, once a day, and nobody answers it; a write sets any
offset and is answered, so it is how a meter far off (or one that must be set now) is put right.
The write carries ``[commands]`` password level, password and operator, like relay control.
The meter's clock is read (04000101 date, 04000102 time) before and after, and the deviation
from the gateway's clock (meter minus gateway, seconds) is reported both times. As for the
broadcast, nothing is written within ``quiet_minutes_around_midnight`` of midnight by either
clock: a meter's day changing between the date and the time write would set it a day off.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from drivers.errors import DriverError
from gateway.collector.collector import MeterAccess, MeterPlan
from gateway.collector.timesync import near_midnight
from protocols.dlt645 import Edition, ErrorResponse, ReadRequest, ReadResponse, WriteRequest
from protocols.dlt645.registry import lookup
from protocols.errors import ProtocolError

if TYPE_CHECKING:
    from .service import CommandService

DATE_DI: Final = 0x04000101
TIME_DI: Final = 0x04000102


class TimeSetError(Exception):
    """A meter's clock could not be read or set: ``outcome`` is ``refused`` (by the meter or
    the midnight rule) or ``failed`` (no reply, or a reply that makes no sense)."""

    def __init__(self, outcome: str, detail: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.errors = errors


@dataclass(frozen=True, slots=True)
class MeterClockRead:
    meter: dt.datetime  # the meter's local time, naive
    deviation_s: int  # meter minus gateway


async def _read_value(access: MeterAccess, plan: MeterPlan, di: int, name: str) -> Any:
    item = lookup(Edition.V2007, di)
    if item is None:  # pragma: no cover - both are in the registry
        raise TimeSetError("failed", f"no DI {di:08X} in the registry")
    exchange = await access.request(ReadRequest(plan.address, di, plan.edition))
    reply = exchange.reply
    if isinstance(reply, ErrorResponse):
        raise TimeSetError("failed", f"reading {di:08X}: " + ", ".join(reply.flag_names))
    if not isinstance(reply, ReadResponse):
        raise TimeSetError("failed", f"reading {di:08X}: unexpected reply")
    try:
        decoded = item.decode(reply.payload)
    except ProtocolError as exc:
        raise TimeSetError("failed", f"reading {di:08X}: {exc}") from None
    values = {v.name: v.value for v in decoded.values}
    return values.get(name)


async def read_clock(
    service: CommandService, access: MeterAccess, plan: MeterPlan
) -> MeterClockRead:
    """The meter's clock and its deviation from the gateway's (at the time read)."""
    day = await _read_value(access, plan, DATE_DI, "date")
    moment = await _read_value(access, plan, TIME_DI, "time")
    if not isinstance(day, dt.date) or not isinstance(moment, dt.time):
        raise TimeSetError("failed", "the meter's date or time is not a valid value")
    local = service.clock.now().astimezone(service.config.gateway.zone)
    meter = dt.datetime.combine(day, moment)
    deviation = (meter - local.replace(tzinfo=None)).total_seconds()
    return MeterClockRead(meter, round(deviation))


async def _write(service: CommandService, access: MeterAccess, plan: MeterPlan, di: int,
                 values: dict[str, Any]) -> None:  # fmt: skip
    item = lookup(Edition.V2007, di)
    if item is None:  # pragma: no cover - both are in the registry
        raise TimeSetError("failed", f"no DI {di:08X} in the registry")
    s = service.settings
    exchange = await access.request(
        WriteRequest(
            plan.address, di, item.build(values), password_level=s.password_level,
            password=s.password.get_secret_value(), operator=s.operator,
        )
    )  # fmt: skip
    reply = exchange.reply
    if isinstance(reply, ErrorResponse):
        raise TimeSetError(
            "refused", f"the meter refused: {', '.join(reply.flag_names)}", tuple(reply.flag_names)
        )
    if isinstance(reply, ReadResponse):
        raise TimeSetError("failed", "unexpected reply to the write")


async def set_meter(service: CommandService, plan: MeterPlan) -> dict[str, Any]:
    """Write one meter's date and time from the gateway's clock; the per-meter result."""
    out: dict[str, Any] = {"method": "write", "bus": plan.bus}
    quiet = service.config.time_sync.quiet_minutes_around_midnight
    try:
        if plan.edition is not Edition.V2007:
            raise TimeSetError("refused", "DL/T 645-1997 meters are not set by write")
        access = service.accesses.get(plan.bus)
        if access is None:
            raise TimeSetError("failed", f"bus {plan.bus} is not open")
        local = service.clock.now().astimezone(service.config.gateway.zone)
        if near_midnight(local, quiet):
            raise TimeSetError("refused", f"within {quiet} min of midnight (gateway clock)")
        before = await read_clock(service, access, plan)
        out["deviation_before_s"] = before.deviation_s
        if near_midnight(before.meter, quiet):
            raise TimeSetError("refused", f"within {quiet} min of midnight (meter clock)")
        now = service.clock.now().astimezone(service.config.gateway.zone)
        await _write(service, access, plan, DATE_DI,
                     {"weekday": (now.weekday() + 1) % 7, "date": now.date()})  # fmt: skip
        now = service.clock.now().astimezone(service.config.gateway.zone)
        await _write(service, access, plan, TIME_DI, {"time": now.time().replace(microsecond=0)})
        after = await read_clock(service, access, plan)
        out["deviation_after_s"] = after.deviation_s
    except TimeSetError as exc:
        out.update(outcome=exc.outcome, detail=exc.detail)
        if exc.errors:
            out["errors"] = list(exc.errors)
        return out
    except DriverError as exc:
        out.update(outcome="failed", detail=f"{exc.reason}: {exc}")
        return out
    out["outcome"] = "set"
    return out
