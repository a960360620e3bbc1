"""The rule table: which pure rule runs for each meter, and which alarm types a run judges.

Meter rules take ``(history, archive entry, context)``; district rules (collection rate, line
loss), the archive rule and the prepaid ledgers need more than one meter and are run by the
:class:`~gateway.checks.checker.Checker` beside them. A rule switched off (``enabled = false``)
produces no findings, and its alarm types are left out of the run altogether, so alarms it
raised earlier stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from gateway.config import ChecksConfig, Config, MeterConfig

from .context import Context
from .history import MeterHistory
from .model import ALARM_TYPES, Finding
from .rules_collection import missed_reading
from .rules_energy import (
    above_physical_max,
    consumption_jump,
    deviation,
    meter_stopped,
    register_decreased,
    reverse_energy,
)
from .rules_state import battery, clock_deviation, covers, power_down, relay, voltage

MeterRule = Callable[[MeterHistory, MeterConfig, Context], list[Finding]]

#: ``[checks.<name>]`` -> the rule it switches
METER_RULES: Final[Mapping[str, MeterRule]] = {
    "register_decreased": register_decreased,
    "meter_stopped": meter_stopped,
    "deviation": deviation,
    "physical_max": above_physical_max,
    "consumption_jump": consumption_jump,
    "reverse_energy": reverse_energy,
    "clock": clock_deviation,
    "voltage": voltage,
    "cover": covers,
    "power_down": power_down,
    "relay": relay,
    "battery": battery,
}


def enabled(checks: ChecksConfig, rule: str) -> bool:
    table = getattr(checks, rule)
    return checks.enabled and bool(table.enabled)


def judged_types(checks: ChecksConfig) -> frozenset[str]:
    """The alarm types of every enabled rule."""
    return frozenset(t.name for t in ALARM_TYPES.values() if enabled(checks, t.rule))


def meter_rules(checks: ChecksConfig) -> list[MeterRule]:
    return [rule for name, rule in METER_RULES.items() if enabled(checks, name)]


def evaluate_meter(
    history: MeterHistory, meter: MeterConfig, ctx: Context, rules: list[MeterRule]
) -> list[Finding]:
    """The history rules of one meter. They read only the history, the archive entry, the
    zone and the settings (never the time), so an unchanged history gives the same findings."""
    out: list[Finding] = []
    for rule in rules:
        out.extend(rule(history, meter, ctx))
    return out


def evaluate_meters(
    config: Config, histories: Mapping[str, MeterHistory], ctx: Context
) -> list[Finding]:
    """Every enabled meter rule over every configured meter, and the missed readings."""
    rules = meter_rules(ctx.checks)
    missed = enabled(ctx.checks, "missed_reading")
    out: list[Finding] = []
    for meter in config.meter:
        history = histories.get(meter.address)
        if history is not None:
            out.extend(evaluate_meter(history, meter, ctx, rules))
        if missed:
            out.extend(missed_reading(history, meter, ctx))
    return out
