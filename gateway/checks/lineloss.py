"""District line loss (台区线损) per day, from verified daily frozen values.

For day D every meter's energy is its verified frozen value at D+1 00:00 minus the one at
D 00:00. The loss rate is ``(master - sum(users)) / master``. It is computed as soon as every
user meter and the master have both values; otherwise once the deadline of D+1 has passed, if
at least ``completeness`` of the user meters have them (the rate then sums the users read and
names the missing ones), else the day is reported incomplete with its missing meters — and
computed later if back-filled values complete it. A complete result is final. Days that ended
before the checks watched the district are computed when their values are there, and never
reported incomplete.

Results are stored (``line_loss``) and published once each on the ``events`` stream
(``line_loss`` / ``line_loss_incomplete``, subject = the district, at D 00:00) with their
inputs; rates outside ``[low, high]`` raise ``line_loss_high`` / ``line_loss_negative`` on the
district's master meter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from gateway.config import MeterConfig
from spool import Event, JSONValue, LineLossResult, LineLossState

from .context import Context, District, settings_of
from .history import MeterHistory
from .model import Finding, Observation
from .series import local_day_start, state_of, verified_days

RATE_PLACES: Final = Decimal("0.000001")
EVENT_SOURCE: Final = "checks"


def loss_rate(master_kwh: Decimal, users_kwh: Decimal) -> Decimal:
    """``(master - users) / master`` to 6 places, half-even."""
    return ((master_kwh - users_kwh) / master_kwh).quantize(RATE_PLACES, ROUND_HALF_EVEN)


_NOTHING: Final[Mapping[dt.date, Decimal]] = {}

#: each meter's verified forward total by day, by address
Totals = dict[str, Mapping[dt.date, Decimal]]


def _totals(
    h: MeterHistory | None, meter: MeterConfig, zone: dt.tzinfo, cache: Totals
) -> Mapping[dt.date, Decimal]:
    """Each day's verified forward total of one meter, shared through ``cache`` by the days
    computed in one run. Not kept on the history: complete days are final, so most runs
    compute nothing, and 2,000 meters' totals would stay in memory for nothing."""
    if h is None:
        return _NOTHING
    found = cache.get(meter.address)
    if found is None:
        days = verified_days(h, meter.edition, zone)
        found = cache[meter.address] = _NOTHING if days is None else days.totals()
    return found


def compute(
    district: District,
    histories: Mapping[str, MeterHistory],
    day: dt.date,
    ctx: Context,
    totals: Totals | None = None,
) -> LineLossResult | None:
    """Day ``day`` of ``district``, or ``None`` while it is too early to say. ``totals``
    shares the meters' daily totals between the days computed in one run."""
    cache: Totals = {} if totals is None else totals
    master = district.master
    if master is None:
        return None
    cfg = ctx.checks.line_loss
    following = day + dt.timedelta(days=1)
    deadline = dt.datetime.combine(following, ctx.checks.missed_reading.deadline_time, ctx.zone)
    mt = _totals(histories.get(master.address), master, ctx.zone, cache)
    m = (mt[day], mt[following]) if day in mt and following in mt else None
    users: dict[str, JSONValue] = {}
    missing: list[str] = []
    total = Decimal(0)
    for u in district.users:
        ut = _totals(histories.get(u.address), u, ctx.zone, cache)
        a, b = ut.get(day), ut.get(following)
        if a is None or b is None:
            missing.append(u.address)
            continue
        users[u.address] = [a, b]
        total += b - a
    n = len(district.users)
    share = Decimal(1) if n == 0 else Decimal(n - len(missing)) / Decimal(n)
    everything = m is not None and not missing
    if not everything and ctx.now < deadline:
        return None
    master_kwh = None if m is None else m[1] - m[0]
    complete = master_kwh is not None and master_kwh > 0 and share >= cfg.completeness
    watched = min(ctx.watched_since(x.address) for x in district.meters)
    if not complete and deadline <= watched:
        return None  # a day that ended before the checks watched the district: nothing owed
    details: dict[str, JSONValue] = {
        "district": district.name,
        "day": day.isoformat(),
        "master": {"meter": master.address, "start": None if m is None else m[0],
                   "end": None if m is None else m[1], "kwh": master_kwh},
        "users": users,  # address: [start, end] (kWh)
        "missing": missing,
        "share": share.quantize(RATE_PLACES, ROUND_HALF_EVEN),
        "completeness": cfg.completeness,
    }  # fmt: skip
    rate = None
    if complete:
        assert master_kwh is not None
        rate = loss_rate(master_kwh, total)
        details["rate"] = rate
    elif master_kwh is not None and master_kwh <= 0:
        details["reason"] = "the master meter registered no energy"
    return LineLossResult(
        district=district.name,
        day=day,
        state=LineLossState.COMPLETE if complete else LineLossState.INCOMPLETE,
        master=master.address,
        master_kwh=master_kwh,
        users_kwh=total if complete else None,
        rate=rate,
        users_read=n - len(missing),
        users_total=n,
        computed=ctx.now,
        details=details,
    )


def days_to_compute(ctx: Context) -> list[dt.date]:
    """Days whose both frozen values the history in memory can hold and that have ended."""
    first = ctx.local(ctx.frozen_from).date() + dt.timedelta(days=1)
    last = ctx.local(ctx.now).date() - dt.timedelta(days=1)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def event_of(result: LineLossResult, zone: dt.tzinfo) -> Event:
    kind = "line_loss" if result.state is LineLossState.COMPLETE else "line_loss_incomplete"
    details: dict[str, JSONValue] = {
        "state": result.state.value,
        "users_read": result.users_read,
        "users_total": result.users_total,
        "users_kwh": result.users_kwh,
    }
    details.update(result.details)
    return Event(EVENT_SOURCE, kind, result.district, local_day_start(result.day, zone), details)


def findings(district: District, results: Iterable[LineLossResult], ctx: Context) -> list[Finding]:
    """Complete results as observations of the band (incomplete days say nothing)."""
    if district.master is None:
        return []
    cfg = ctx.checks.line_loss
    high: list[Observation] = []
    low: list[Observation] = []
    for r in sorted(results, key=lambda r: r.day):
        if r.rate is None or r.district != district.name:
            continue
        start = local_day_start(r.day, ctx.zone)
        at = start + dt.timedelta(days=1)
        evidence: dict[str, JSONValue] = {
            "day": r.day.isoformat(),
            "rate": r.rate,
            "master_kwh": r.master_kwh,
            "users_kwh": r.users_kwh,
            "users_read": r.users_read,
            "users_total": r.users_total,
        }
        high.append(
            Observation(at, state_of(r.rate > cfg.high, r.rate <= cfg.high), evidence, start)
        )
        low.append(Observation(at, state_of(r.rate < cfg.low, r.rate >= cfg.low), evidence, start))
    context: dict[str, JSONValue] = {"district": district.name}
    meter = district.alarm_meter
    return [
        Finding(meter, "line_loss_high", high, settings_of(cfg), context),
        Finding(meter, "line_loss_negative", low, settings_of(cfg), context),
    ]
