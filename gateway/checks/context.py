"""What every rule may know besides the meter's history: the time, the zone, the settings,
and the archive (districts, master meters, when each meter was first watched)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from gateway.config import ChecksConfig, Config, MeterConfig, MeterRole
from spool import JSONValue


@dataclass(frozen=True, slots=True)
class Context:
    now: dt.datetime
    zone: ZoneInfo
    checks: ChecksConfig
    #: when the checks first watched each configured meter (days before are not judged)
    since: Mapping[str, dt.datetime]
    #: the earliest data time the daily frozen history in memory covers
    frozen_from: dt.datetime
    #: relay state a head-end command last set and confirmed per meter, and since when
    relay_commanded: Mapping[str, tuple[bool, dt.datetime]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def local(self, instant: dt.datetime) -> dt.datetime:
        return instant.astimezone(self.zone)

    def watched_since(self, meter: str) -> dt.datetime:
        return self.since.get(meter, self.now)


@dataclass(frozen=True, slots=True)
class District:
    name: str
    master: MeterConfig | None
    users: Sequence[MeterConfig]

    @property
    def meters(self) -> list[MeterConfig]:
        return ([self.master] if self.master is not None else []) + list(self.users)

    @property
    def alarm_meter(self) -> str:
        """District alarms are filed under the master meter (the transformer), else ``""``."""
        return self.master.address if self.master is not None else ""


def district_of(meter: MeterConfig, config: Config) -> str:
    return meter.district or config.gateway.district


def districts(config: Config) -> list[District]:
    names: dict[str, list[MeterConfig]] = {}
    for m in config.meter:
        names.setdefault(district_of(m, config), []).append(m)
    out = []
    for name, meters in sorted(names.items()):
        master = next((m for m in meters if m.role is MeterRole.MASTER), None)
        out.append(District(name, master, [m for m in meters if m.role is not MeterRole.MASTER]))
    return out


def params(model: object, *names: str) -> Mapping[str, JSONValue]:
    """A rule's settings as alarm details (Decimals stay exact, times as text)."""
    out: dict[str, JSONValue] = {}
    for name in names:
        out[name] = _plain(getattr(model, name))
    return MappingProxyType(out)


def _plain(value: object) -> JSONValue:
    if value is None or isinstance(value, Decimal | int | str | bool):
        return value
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


_SETTINGS: dict[int, tuple[BaseModel, Mapping[str, JSONValue]]] = {}


def settings_of(model: BaseModel) -> Mapping[str, JSONValue]:
    """Every setting of a rule's table but ``enabled`` (cached: tables are frozen)."""
    hit = _SETTINGS.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    value = params(model, *(n for n in type(model).model_fields if n != "enabled"))
    if len(_SETTINGS) > 256:
        _SETTINGS.clear()
    _SETTINGS[id(model)] = (model, value)
    return value
