"""Meter archive changes by command: add, modify, remove — checked whole, applied whole.

The collector plans from its meter table (:attr:`Collector.meters`); an archive command
changes that table, persists the change in the spool's archive overlay (so a restart keeps
it: :func:`overlay` applies it over the TOML archive at start), plans the new meters at once
and, for meters behind the PLC module, pushes the module's archive (``sync_archive``). The
edge checks keep judging the meters of the TOML file; put lasting changes there too.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from drivers.errors import DriverError
from gateway.collector.collector import MeterPlan, items_for
from gateway.config import Config, MeterConfig
from protocols.bcd import Address
from protocols.dlt645 import Edition
from protocols.q13762 import ProtocolType
from spool import ArchiveChange

if TYPE_CHECKING:
    from .envelope import ArchiveParams
    from .service import CommandService, Done


def plan_of(meter: MeterConfig, config: Config) -> MeterPlan:
    edition = Edition.V2007 if meter.edition.value == "2007" else Edition.V1997
    return MeterPlan(Address(meter.address), edition, meter.bus, items_for(meter, config), meter)


def overlay(
    meters: MutableMapping[str, MeterPlan], changes: Sequence[ArchiveChange], config: Config
) -> int:
    """Apply the stored archive changes over the configured meters; return how many applied."""
    applied = 0
    for change in changes:
        if change.action == "remove":
            applied += meters.pop(change.meter, None) is not None
            continue
        try:
            meter = MeterConfig.model_validate(dict(change.config))
        except ValidationError:
            continue  # written by an older version with other fields: the TOML entry stands
        meters[meter.address] = plan_of(meter, config)
        applied += 1
    return applied


def plc_archive(meters: Mapping[str, MeterPlan]) -> dict[Address, ProtocolType]:
    return {
        p.address: ProtocolType.DLT645_2007
        if p.edition is Edition.V2007
        else ProtocolType.DLT645_1997
        for p in meters.values()
        if p.bus == "plc"
    }


def _check(service: CommandService, params: ArchiveParams) -> list[str]:
    meters, config = service.meters, service.config
    errors: list[str] = []
    buses = set(service.accesses)
    tariffs = {t.name for t in config.tariff}
    accounts = {a.id for a in config.account}
    seen: set[str] = set()
    for what, entries in (("add", params.add), ("modify", params.modify)):
        for m in entries:
            if m.address in seen:
                errors.append(f"{what}: meter {m.address} named twice")
            seen.add(m.address)
            if what == "add" and m.address in meters:
                errors.append(f"add: meter {m.address} is already in the archive")
            if what == "modify" and m.address not in meters:
                errors.append(f"modify: meter {m.address} is not in the archive")
            if m.bus not in buses:
                errors.append(f"{what}: meter {m.address}: no bus {m.bus!r}")
            if m.tariff is not None and m.tariff not in tariffs:
                errors.append(f"{what}: meter {m.address}: unknown tariff {m.tariff!r}")
            if m.account is not None and m.account not in accounts:
                errors.append(f"{what}: meter {m.address}: unknown account {m.account!r}")
    for address in params.remove:
        if address in seen:
            errors.append(f"remove: meter {address} named twice")
        seen.add(address)
        if address not in meters:
            errors.append(f"remove: meter {address} is not in the archive")
    return errors


async def apply(service: CommandService, command: str, params: ArchiveParams) -> Done:
    from .service import Done  # noqa: PLC0415 - the service imports this module

    errors = _check(service, params)
    if errors:
        return Done("failed", {"errors": errors}, errors[0])
    now = service.clock.now()
    changes: list[ArchiveChange] = []
    configs: list[MeterConfig] = []
    try:
        for m in params.add:
            configs.append(MeterConfig.model_validate(m.model_dump()))
        for m in params.modify:
            base = service.meters[m.address].config.model_dump()
            configs.append(MeterConfig.model_validate({**base, **m.model_dump(exclude_unset=True)}))
    except ValidationError as exc:
        detail = f"invalid meter: {exc.errors()[0]['msg']}"
        return Done("failed", {"errors": [detail]}, detail)
    for cfg in configs:
        changes.append(ArchiveChange(cfg.address, "set", cfg.model_dump(mode="json"), command, now))
    for address in params.remove:
        changes.append(ArchiveChange(address, "remove", {}, command, now))
    plc_before = plc_archive(service.meters)
    await service.store.save_archive(changes)
    for cfg in configs:
        service.meters[cfg.address] = plan_of(cfg, service.config)
    for address in params.remove:
        del service.meters[address]
    result: dict[str, Any] = {
        "added": [m.address for m in params.add],
        "modified": [m.address for m in params.modify],
        "removed": list(params.remove),
    }
    if params.add or params.modify:
        result["planned"] = await service.collector.plan()
    plc_after = plc_archive(service.meters)
    if service.plc is not None and plc_after != plc_before:
        try:
            sync = await service.plc.sync_archive(plc_after)
        except DriverError as exc:
            result["plc"] = {"error": str(exc)}
            return Done("failed", result, f"archive stored, PLC module not updated: {exc}")
        result["plc"] = {
            "added": [str(a) for a in sync.added],
            "removed": [str(a) for a in sync.removed],
        }
    return Done("done", result)
