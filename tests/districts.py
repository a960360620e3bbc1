"""Test helpers: a simulated district and a gateway configuration that matches it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from simulator.scenario import Scenario, parse_scenario


def scenario_from(text: str) -> Scenario:
    return parse_scenario(tomllib.loads(text), "<test scenario>")


def gateway_config(scenario: Scenario, spool: Path, **kwargs: Any) -> Config:
    """The configuration of :func:`config_text`, validated."""
    return parse_config(config_text(scenario, spool, **kwargs), "<test config>")


def config_text(
    scenario: Scenario,
    spool: Path,
    *,
    buses: dict[str, dict[str, Any]] | None = None,
    extra: str = "",
    catch_up_days: int = 2,
    plc: dict[str, Any] | None = None,
) -> str:
    """A gateway configuration with every meter of ``scenario`` on the same bus names.

    ``buses`` gives each bus's keys (device or host/port); a bus it does not name gets a
    placeholder serial device (fine for in-memory channels, which never open it).
    """
    buses = buses or {}
    names = sorted(
        {p.bus for p in scenario.meters} | ({scenario.master.bus} if scenario.master else set())
    )
    names = [n for n in names if n != "plc"]
    lines = [
        "[gateway]",
        'id = "gw-test"',
        f'timezone = "{scenario.zone.name}"',
        "[spool]",
        f'path = "{spool}"',
        "[collection]",
        f"catch_up_days = {catch_up_days}",
    ]
    for name in names:
        lines += ["[[bus]]", f'name = "{name}"']
        keys = buses.get(name, {"kind": "serial", "device": f"/dev/null-{name}"})
        lines += [_kv(k, v) for k, v in keys.items()]
    if plc is not None:
        lines += ["[plc]"] + [_kv(k, v) for k, v in plc.items()]
    plans = list(scenario.meters) + ([scenario.master] if scenario.master else [])
    for plan in plans:
        lines += [
            "[[meter]]",
            f'address = "{plan.address.digits}"',
            f'edition = "{plan.config.edition.value[-4:]}"',
            f'bus = "{plan.bus}"',
        ]
        if scenario.master is not None and plan is scenario.master:
            lines += ['role = "master"', "phases = 3"]
        if plan.config.prepaid is not None:
            lines += ['prepaid = "remote"']
    return "\n".join(lines) + "\n" + extra


def _kv(key: str, value: Any) -> str:
    return f"{key} = {value!r}".replace("'", '"')
