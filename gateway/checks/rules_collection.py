"""Rules about collection itself: missed readings, the district's daily collection rate, and
the archive (an address answering that is not configured, a configured meter never seen).

A day is judged only once its deadline has passed and only if the checks were already
watching the meter before that deadline, so days back-filled when a gateway (or a meter) is
first set up do not count as missed. A value that arrives after the deadline still counts as
missed (raised), and clears the alarm when it arrives.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from gateway.config import Config, MeterConfig
from spool import Event, JSONValue

from .context import Context, District, settings_of
from .history import MeterHistory, Verified
from .model import Finding, Observation, State
from .series import FWD, local_day_start, verified_days

#: the spool event type a bus or PLC driver writes for a reply from an address not configured
UNKNOWN_METER_EVENT = "unknown_meter"
_MISSING_SHOWN = 100


def verified_value(
    h: MeterHistory | None, meter: MeterConfig, day: dt.date, zone: dt.tzinfo
) -> Verified | None:
    """The verified daily value of ``day`` (see :func:`verified_days`), if read."""
    days = None if h is None else verified_days(h, meter.edition, zone)
    return None if days is None else days.get(day)


@functools.lru_cache(maxsize=8)
def _deadlines(
    first: dt.date, today: dt.date, deadline_at: dt.time, zone: dt.tzinfo
) -> tuple[tuple[dt.date, dt.datetime], ...]:
    days = (today - first).days + 1
    return tuple(
        (d, dt.datetime.combine(d, deadline_at, zone))
        for d in (first + dt.timedelta(days=i) for i in range(max(days, 0)))
    )


def judged_days(ctx: Context, meter: str) -> list[tuple[dt.date, dt.datetime]]:
    """Days whose deadline has passed, was after the meter was first watched, and whose value
    the history in memory would still hold; with their deadlines."""
    first = ctx.local(ctx.frozen_from).date() + dt.timedelta(days=1)
    all_days = _deadlines(
        first, ctx.local(ctx.now).date(), ctx.checks.missed_reading.deadline_time, ctx.zone
    )
    since = ctx.watched_since(meter)
    return [(d, deadline) for d, deadline in all_days if since < deadline <= ctx.now]


def missed_reading(h: MeterHistory | None, meter: MeterConfig, ctx: Context) -> list[Finding]:
    cfg = ctx.checks.missed_reading
    out = []
    for day, deadline in judged_days(ctx, meter.address):
        start = local_day_start(day, ctx.zone)
        value = verified_value(h, meter, day, ctx.zone)
        evidence: dict[str, JSONValue] = {"day": day.isoformat(), "deadline": deadline.isoformat()}
        obs = []
        if value is None or value.read > deadline:
            obs.append(Observation(deadline, State.ABNORMAL, evidence, since=start))
        if value is not None:
            arrived = {**evidence, "read": value.read.isoformat(), FWD: value.forward_total}
            obs.append(Observation(max(value.read, start), State.NORMAL, arrived, since=start))
        out.append(Finding(meter.address, "missed_reading", obs, settings_of(cfg), keyed=True))
    return out


@dataclass(frozen=True, slots=True)
class DailyRate:
    """A district's collection on one day: meters expected, read by the deadline, missing."""

    district: str
    day: dt.date
    deadline: dt.datetime
    expected: int
    read: int
    rate: Decimal
    missing: Sequence[str]

    def details(self) -> dict[str, JSONValue]:
        return {
            "district": self.district,
            "day": self.day.isoformat(),
            "deadline": self.deadline.isoformat(),
            "expected": self.expected,
            "read_by_deadline": self.read,
            "rate": self.rate,
            "missing": list(self.missing[:_MISSING_SHOWN]),
            "missing_count": len(self.missing),
        }


def collection_rate(
    district: District, histories: Mapping[str, MeterHistory], ctx: Context
) -> tuple[list[Finding], list[DailyRate]]:
    """Per judged day: the share of the district's watched meters with a verified value by
    the deadline; low below ``min_rate``, cleared when back-filled values bring it up."""
    cfg = ctx.checks.collection_rate
    findings: list[Finding] = []
    rates: list[DailyRate] = []
    meters = district.meters
    if not meters:
        return findings, rates
    days: dict[dt.date, dt.datetime] = {}
    for m in meters:
        days.update(judged_days(ctx, m.address))
    for day, deadline in sorted(days.items()):
        expected = [m for m in meters if ctx.watched_since(m.address) < deadline]
        if not expected:
            continue
        arrivals: list[dt.datetime] = []
        missing: list[str] = []
        for m in expected:
            value = verified_value(histories.get(m.address), m, day, ctx.zone)
            if value is None or value.read > deadline:
                missing.append(m.address)
            if value is not None:
                arrivals.append(value.read)
        n = len(expected)
        on_time = n - len(missing)
        rate = (Decimal(on_time) / Decimal(n)).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)
        daily = DailyRate(district.name, day, deadline, n, on_time, rate, missing)
        rates.append(daily)
        start = local_day_start(day, ctx.zone)
        evidence = daily.details()
        obs = []
        if rate < cfg.min_rate:
            obs.append(Observation(deadline, State.ABNORMAL, evidence, since=start))
            needed = math.ceil(cfg.min_rate * n)
            arrivals.sort()
            if len(arrivals) >= needed:
                at = max(arrivals[needed - 1], deadline)
                cleared = {**evidence, "read_now": len(arrivals)}
                obs.append(Observation(at, State.NORMAL, cleared, since=start))
        else:
            obs.append(Observation(deadline, State.NORMAL, evidence, since=start))
        findings.append(
            Finding(
                district.alarm_meter,
                "collection_rate_low",
                obs,
                settings_of(cfg),
                {"district": district.name},
                keyed=True,
            )
        )
    return findings, rates


def archive(
    config: Config,
    histories: Mapping[str, MeterHistory],
    events: Iterable[Event],
    ctx: Context,
) -> list[Finding]:
    """Unknown addresses (readings or driver reports from an address not in the archive), and
    configured meters with nothing at all in the history after ``grace_h`` of watching."""
    cfg = ctx.checks.archive
    settings = settings_of(cfg)
    configured = {m.address for m in config.meter}
    sightings: dict[str, list[Observation]] = {}
    for address, h in histories.items():
        if address in configured or h.empty or h.last_read is None:
            continue
        evidence: dict[str, JSONValue] = {"source": "readings", "seen": h.last_read.isoformat()}
        sightings.setdefault(address, []).append(Observation(h.last_read, State.ABNORMAL, evidence))
    for event in events:
        if event.type != UNKNOWN_METER_EVENT or event.subject in configured:
            continue
        if not (len(event.subject) == 12 and event.subject.isdigit()):
            continue
        evidence = {"source": event.source, "seen": event.event_time.isoformat()}
        sightings.setdefault(event.subject, []).append(
            Observation(event.event_time, State.ABNORMAL, evidence)
        )
    out = [Finding(a, "unknown_meter", obs, settings) for a, obs in sorted(sightings.items())]
    grace = dt.timedelta(hours=cfg.grace_h)
    for m in config.meter:
        # A configured address is not unknown: this clears an alarm raised before it was added.
        out.append(
            Finding(m.address, "unknown_meter", [Observation(ctx.now, State.NORMAL)], settings)
        )
        seen_h = histories.get(m.address)
        since = ctx.watched_since(m.address)
        if seen_h is None or seen_h.last_read is None:
            if ctx.now - since >= grace:
                evidence = {"watched_since": since.isoformat(), "grace_h": cfg.grace_h}
                obs = [Observation(ctx.now, State.ABNORMAL, evidence, since=since)]
                out.append(Finding(m.address, "meter_not_seen", obs, settings))
            continue
        seen: dict[str, JSONValue] = {"seen": seen_h.last_read.isoformat()}
        obs = [Observation(seen_h.last_read, State.NORMAL, seen)]
        out.append(Finding(m.address, "meter_not_seen", obs, settings))
    return out
