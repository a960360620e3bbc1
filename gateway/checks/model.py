"""What a rule says: observations of one condition at one meter, and the alarm types.

A rule never decides *when* to raise or clear. It looks at a series (frozen registers, real-time
snapshots, status words...) and says, for each sample, whether the condition it checks is
**abnormal**, **normal**, or neither (**hold**: inside a hysteresis band, or not judgeable, e.g. a
clock read around midnight). :mod:`.lifecycle` folds those into episodes and turns them into
raises and clears, so hysteresis and raise-once/clear-once live in one place.

An observation that compares two samples speaks for the interval between them: ``since`` is the
earlier sample's time, and an alarm it raises has that interval as its window (the anomaly
happened somewhere in it).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final, NamedTuple

from spool import JSONValue, Severity


class State(enum.Enum):
    ABNORMAL = "abnormal"
    NORMAL = "normal"
    HOLD = "hold"


#: evidence is built only for the observations that raise or clear (most never do)
Evidence = Mapping[str, JSONValue] | Callable[[], Mapping[str, JSONValue]]
NO_EVIDENCE: Final[Mapping[str, JSONValue]] = MappingProxyType({})


class Observation(NamedTuple):
    """One judgement at ``at``; ``since`` opens the interval it speaks for (default ``at``).

    A named tuple: a run makes hundreds of thousands of them."""

    at: datetime
    state: State
    evidence: Evidence = NO_EVIDENCE
    since: datetime | None = None

    @property
    def start(self) -> datetime:
        return self.at if self.since is None else self.since

    def details(self) -> Mapping[str, JSONValue]:
        return self.evidence() if callable(self.evidence) else self.evidence


@dataclass(frozen=True, slots=True)
class Finding:
    """The observations of one alarm type at one meter (``""``: the gateway) in time order.

    ``keyed`` findings speak for one fixed window (a meter's day, a district's day): their alarm
    key is exactly the window start, and only an alarm with that key matches them. Other
    findings match any stored alarm of the same meter and type whose life overlaps theirs, so a
    history window that slid past an episode's start does not raise it again.
    """

    meter: str
    type: str
    observations: Sequence[Observation]
    params: Mapping[str, JSONValue] = field(default_factory=dict)
    context: Mapping[str, JSONValue] = field(default_factory=dict)
    keyed: bool = False


@dataclass(frozen=True, slots=True)
class AlarmType:
    name: str
    severity: Severity
    title: str
    rule: str  # the [checks.<rule>] table that switches it


def _types(*items: AlarmType) -> Mapping[str, AlarmType]:
    return MappingProxyType({t.name: t for t in items})


W, M, C = Severity.WARNING, Severity.MAJOR, Severity.CRITICAL
ALARM_TYPES: Final = _types(
    AlarmType("missed_reading", W, "no verified daily frozen value by the deadline",
              "missed_reading"),
    AlarmType("collection_rate_low", M, "district collection rate below the minimum",
              "collection_rate"),
    AlarmType("register_decreased", M, "示度下降: forward active total decreased",
              "register_decreased"),
    AlarmType("meter_stopped", M, "停走: register unchanged under load", "meter_stopped"),
    AlarmType("over_deviation", M, "超差: register ahead of measured power", "deviation"),
    AlarmType("running_fast", C, "飞走: register far ahead of measured power", "deviation"),
    AlarmType("above_physical_max", C, "daily energy above Un x Imax x k x 24 h",
              "physical_max"),
    AlarmType("consumption_jump", W, "daily energy far above the rolling median",
              "consumption_jump"),
    AlarmType("reverse_energy", M, "reverse energy on a consumer meter", "reverse_energy"),
    AlarmType("clock_deviation", W, "meter clock off the gateway clock", "clock"),
    AlarmType("voltage_loss", M, "失压: voltage lost while current flows", "voltage"),
    AlarmType("phase_failure", M, "断相: phase voltage failed", "voltage"),
    AlarmType("overvoltage", M, "过压: voltage above the limit", "voltage"),
    AlarmType("meter_cover_opened", C, "meter cover opened", "cover"),
    AlarmType("terminal_cover_opened", C, "terminal cover opened", "cover"),
    AlarmType("power_down", W, "power-down counter jumped", "power_down"),
    AlarmType("relay_mismatch", M, "relay state differs from the commanded state", "relay"),
    AlarmType("clock_battery_low", W, "clock battery low", "battery"),
    AlarmType("unknown_meter", W, "an address not in the archive answered", "archive"),
    AlarmType("meter_not_seen", W, "a configured meter has not been seen", "archive"),
    AlarmType("line_loss_high", M, "district line loss above the band", "line_loss"),
    AlarmType("line_loss_negative", M, "district line loss below the band", "line_loss"),
    AlarmType("balance_warning_1", W, "prepaid balance at warning level 1", "prepaid"),
    AlarmType("balance_warning_2", M, "prepaid balance at warning level 2", "prepaid"),
    AlarmType("overdraft", M, "prepaid balance overdrawn", "prepaid"),
    AlarmType("cutoff_recommended", C, "overdrawn account recommended for cut-off", "prepaid"),
    AlarmType("balance_divergence", M, "local meter balance differs from the ledger",
              "prepaid"),
)  # fmt: skip


def severity_of(alarm_type: str) -> Severity:
    return ALARM_TYPES[alarm_type].severity


def types_of_rule(rule: str) -> frozenset[str]:
    return frozenset(t.name for t in ALARM_TYPES.values() if t.rule == rule)
