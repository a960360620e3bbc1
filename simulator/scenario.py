"""Scenario files: load a district description from TOML, check it, and build the district.

:func:`load_scenario` reads the file with ``tomllib``, validates its shape against
:mod:`simulator.schema`, then checks what pydantic cannot (buses, profiles and time-of-use tables
that a meter names must exist; addresses must be unique; a timeline entry must name known meters
and suit them). Every problem is reported at once in :class:`ScenarioError`, one line each,
starting with its key path (``meters[3].bus: unknown bus 'rs485-9' ...``).

The layering of per-meter settings and the checks live in :mod:`simulator.resolve`; the shape
of the file in :mod:`simulator.schema`; what it resolves to in :mod:`simulator.plan`.

:func:`build_district` turns a :class:`Scenario` into a running
:class:`~simulator.district.District`
under an injected clock.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from drivers.clock import Clock
from protocols.bcd import Address

from . import faults as f
from .district import District, DistrictLoad
from .meter import VirtualMeter
from .plan import KIND_NAMES, PLC_BUS, MeterPlan, Scenario, ScenarioError, TimelineEntry
from .profile import MeterLoad
from .resolve import resolve, seed_for
from .schema import ScenarioSpec

__all__ = [
    "PLC_BUS",
    "MeterPlan",
    "Scenario",
    "ScenarioError",
    "TimelineEntry",
    "build_district",
    "key_path",
    "load_scenario",
    "parse_scenario",
]


def key_path(loc: Sequence[int | str]) -> str:
    """pydantic's ``loc`` as ``meters[3].prepaid.price``, without union tags."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i >= 2 and loc[0] == "timeline" and isinstance(loc[i - 1], int) and part in KIND_NAMES:
            continue  # the discriminator tag pydantic inserts for a tagged union
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def load_scenario(path: str | Path) -> Scenario:
    """Read, validate and resolve a scenario file; raises :class:`ScenarioError`."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ScenarioError([f"cannot read: {exc.strerror or exc}"], source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([f"not valid TOML: {exc}"], source) from None
    return parse_scenario(data, source)


def parse_scenario(data: Mapping[str, Any], source: str = "") -> Scenario:
    try:
        spec = ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            got = (
                ""
                if err["type"] in ("missing", "extra_forbidden")
                else f" (got {err.get('input')!r})"
            )
            errors.append(f"{key_path(err['loc'])}: {err['msg']}{got}")
        raise ScenarioError(errors, source) from None
    return resolve(spec, source)


# --- building -------------------------------------------------------------------------------------


def build_district(scenario: Scenario, clock: Clock, *, catch_up: bool = True) -> District:
    """Meters, master meter and faults of ``scenario`` under ``clock``.

    Registers hold their initial values ``history_days`` before the start; with ``catch_up``
    every meter is advanced to the start (or to ``clock.now()`` if that is earlier), so the
    daily records of those days exist from the first read.
    """
    start = scenario.start
    warm_up = start - dt.timedelta(days=scenario.history_days)
    link: dict[Address, list[f.LinkFault]] = {}
    anomalies: dict[Address, list[f.Anomaly]] = {}
    for entry in scenario.timeline:
        item = entry.build(start)
        for address in entry.addresses:
            if entry.is_link_fault:
                link.setdefault(address, []).append(item)  # type: ignore[arg-type]
            else:
                anomalies.setdefault(address, []).append(item)  # type: ignore[arg-type]
    users: list[tuple[VirtualMeter, str]] = []
    for plan in scenario.meters:
        assert plan.profile is not None
        load = MeterLoad(plan.profile, scenario.zone, plan.scale, plan.config.seed)
        meter = VirtualMeter(
            plan.config, clock, load, anomalies.get(plan.address, ()), start=warm_up
        )
        users.append((meter, plan.bus))
    master = None
    if scenario.master is not None:
        plan = scenario.master
        district_load = DistrictLoad(
            [m for m, _ in users], scenario.line_loss, scenario.zone, scenario.slot_minutes
        )
        master = VirtualMeter(
            plan.config, clock, district_load, anomalies.get(plan.address, ()), start=warm_up
        )
        users.append((master, plan.bus))
    faults = {
        address: f.LinkFaults(address, items, seed_for(scenario.seed, address.digits, "link"))
        for address, items in link.items()
    }
    district = District(
        clock, users, buses=scenario.buses, master=master, link_faults=faults, plc=scenario.plc
    )
    if catch_up:
        district.advance_to(min(start, clock.now()))
    return district
