"""When to send a broadcast time sync (DL/T 645 function 0x08) on a bus: the rules, as a pure
function of what the clock reads found.

* only when at least one meter is off by the threshold or more (default 60 s);
* a broadcast may correct at most ``max_correction_s`` (5 minutes): a meter further off is not
  synced by broadcast (it needs a programmed clock write) and is reported instead;
* at most once a day per bus (meters themselves refuse a second broadcast the same day);
* never within ``quiet_minutes`` of midnight by either clock, so no meter's zero-hour freeze
  can be skipped or doubled by the correction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from protocols.bcd import Address


@dataclass(frozen=True, slots=True)
class TimeSyncRules:
    threshold_s: float = 60.0
    max_correction_s: float = 300.0
    quiet_minutes: int = 5


@dataclass(frozen=True, slots=True)
class TimeSyncDecision:
    send: bool
    reason: str
    to_correct: tuple[Address, ...] = ()
    out_of_range: tuple[Address, ...] = ()


def near_midnight(local: dt.datetime, quiet_minutes: int) -> bool:
    minutes = local.hour * 60 + local.minute
    return minutes < quiet_minutes or minutes >= 24 * 60 - quiet_minutes


def decide(
    drifts: Mapping[Address, float],
    gateway_local: dt.datetime,
    last_sync_day: dt.date | None,
    rules: TimeSyncRules,
) -> TimeSyncDecision:
    """``drifts``: meter minus gateway, seconds, from today's clock reads on one bus."""
    out_of_range = tuple(sorted(a for a, d in drifts.items() if abs(d) > rules.max_correction_s))
    to_correct = tuple(
        sorted(
            a for a, d in drifts.items() if rules.threshold_s <= abs(d) <= rules.max_correction_s
        )
    )
    if not to_correct:
        return TimeSyncDecision(
            False, "no meter drifted past the threshold within range", (), out_of_range
        )
    if last_sync_day == gateway_local.date():
        return TimeSyncDecision(False, "already synced today", to_correct, out_of_range)
    if near_midnight(gateway_local, rules.quiet_minutes):
        return TimeSyncDecision(False, "too close to midnight", to_correct, out_of_range)
    for address in to_correct:
        meter_local = gateway_local + dt.timedelta(seconds=drifts[address])
        if near_midnight(meter_local, rules.quiet_minutes):
            return TimeSyncDecision(
                False, f"meter {address} is too close to its midnight", to_correct, out_of_range
            )
    return TimeSyncDecision(True, f"{len(to_correct)} meter(s) drifted", to_correct, out_of_range)
