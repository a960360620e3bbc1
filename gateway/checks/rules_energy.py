"""Rules over the energy registers: decreased (示度下降), stopped (停走), over-deviation (超差)
and running fast (飞走), above the physical maximum, abnormal jump, reverse energy.

Each is a pure function ``(history, archive entry, context) -> findings``. Real-time register
reads (every ``realtime_interval_s``) and verified daily frozen values are both judged; a
frozen-day observation is dropped when real-time observations of the same condition fall in
its day, so one anomaly seen by both series is one episode (the finer one).

Evidence is bound with :func:`functools.partial` and built only for the observations that
raise or clear an alarm.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import statistics
from collections.abc import Sequence
from decimal import Decimal
from functools import partial
from typing import Final

from pydantic import BaseModel

from gateway.config import MeterConfig, MeterRole
from spool import JSONValue, ReadingKind

from .context import Context, settings_of
from .history import MeterHistory, Sample
from .model import Finding, Observation, State
from .series import (
    FWD,
    HOUR_S,
    MAX_POWER_GAP,
    POWER,
    REV,
    changes,
    daily,
    drop_covered,
    expected_kwh,
    frozen_ok,
    point,
    power_kw,
    q4,
    realtime_with,
    seconds,
    state_of,
)

#: a frozen-day judgement that needs power needs snapshots spanning this share of the day
MIN_COVERAGE: Final = Decimal("0.9")
SQRT3: Final = Decimal(3).sqrt()
_DAY_COVERED: Final = dt.timedelta(days=0.9)  # MIN_COVERAGE of a day
_ZERO: Final = Decimal(0)
ABNORMAL, NORMAL, HOLD = State.ABNORMAL, State.NORMAL, State.HOLD


def _spans_a_day(h: MeterHistory) -> bool:
    """Whether the real-time history could explain a frozen day's energy at all."""
    rt = h.realtime
    return len(rt) > 1 and (rt[-1].time - rt[0].time) >= _DAY_COVERED


def _finding(
    meter: MeterConfig, type_: str, obs: list[Observation], settings: BaseModel
) -> list[Finding]:
    if not obs:
        return []
    obs.sort(key=lambda o: o.at)
    return [Finding(meter.address, type_, obs, settings_of(settings))]


def _pair_evidence(
    a: Sample, b: Sample, names: tuple[str, ...], extra: dict[str, JSONValue]
) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = {"previous": point(a, *names), "current": point(b, *names)}
    out.update(extra)
    return out


def _evidence(
    a: Sample, b: Sample, *names: str, **extra: JSONValue
) -> partial[dict[str, JSONValue]]:
    return partial(_pair_evidence, a, b, names, extra)


# -- 示度下降 -------------------------------------------------------------------------------


def _decreases(series: Sequence[Sample], name: str, source: str) -> list[Observation]:
    out: list[Observation] = []
    for a, b in itertools.pairwise(series):
        va, vb = a.values[name], b.values[name]
        state = ABNORMAL if vb < va else NORMAL
        if changes(out, state):
            evidence = _evidence(a, b, name, source=source, change_kwh=vb - va)
            out.append(Observation(b.time, state, evidence, a.time))
    return out


def _times(samples: Sequence[Sample]) -> list[dt.datetime]:
    return [s.time for s in samples]


def register_decreased(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """A forward active total below the previous read of the same series."""
    realtime = realtime_with(h, FWD)
    fine = _decreases(realtime, FWD, "realtime")
    coarse = drop_covered(_decreases(frozen_ok(h), FWD, "daily_frozen"), _times(realtime))
    return _finding(meter, "register_decreased", fine + coarse, ctx.checks.register_decreased)


# -- 停走 ------------------------------------------------------------------------------------


def meter_stopped(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """Register unchanged over at least the window while power explains >= min_expected
    (the smaller of the two reads' power, held over the interval)."""
    cfg = ctx.checks.meter_stopped
    window, least = cfg.realtime_window_s, cfg.min_expected_kwh
    obs: list[Observation] = []
    realtime = realtime_with(h, FWD)
    for a, b in itertools.pairwise(realtime):
        span = b.time - a.time
        if span.total_seconds() < window or span > MAX_POWER_GAP:
            continue
        pa, pb = power_kw(a), power_kw(b)
        if pa is None or pb is None:
            continue
        expected = max(min(pa, pb), _ZERO) * seconds(a.time, b.time) / HOUR_S
        change = b.values[FWD] - a.values[FWD]
        state = HOLD if expected < least else state_of(change == 0, change > 0)
        if changes(obs, state):
            evidence = _evidence(a, b, FWD, POWER, source="realtime", expected_kwh=q4(expected))
            obs.append(Observation(b.time, state, evidence, a.time))
    coarse: list[Observation] = []
    if _spans_a_day(h):
        frozen = frozen_ok(h)
        for a, b in itertools.pairwise(frozen):
            if (b.time - a.time).days < cfg.frozen_window_days:
                continue
            explained = expected_kwh(h.realtime, a.time, b.time, low_end=True)
            if explained is None or explained[1] < MIN_COVERAGE:
                continue
            expected = explained[0]
            change = b.values[FWD] - a.values[FWD]
            state = state_of(change == 0 and expected >= least, change > 0)
            if changes(coarse, state):
                evidence = _evidence(a, b, FWD, source="daily_frozen", expected_kwh=q4(expected))
                coarse.append(Observation(b.time, state, evidence, a.time))
    return _finding(meter, "meter_stopped", obs + drop_covered(coarse, _times(realtime)), cfg)


# -- 超差 / 飞走 ------------------------------------------------------------------------------


def deviation(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """Register increase / energy explained by the power held at the earlier read:
    超差 above ``over_ratio``, 飞走 above ``fast_ratio``; skipped at or below min_expected."""
    cfg = ctx.checks.deviation

    def judge(
        pairs: list[tuple[Sample, Sample, Decimal]], source: str
    ) -> tuple[list[Observation], list[Observation]]:
        over: list[Observation] = []
        fast: list[Observation] = []
        for a, b, expected in pairs:
            if expected <= cfg.min_expected_kwh:
                continue
            change = b.values[FWD] - a.values[FWD]
            ratio = change / expected
            s_over = state_of(ratio > cfg.over_ratio, ratio <= cfg.over_clear_ratio)
            s_fast = state_of(ratio > cfg.fast_ratio, ratio <= cfg.fast_clear_ratio)
            if not (changes(over, s_over) or changes(fast, s_fast)):
                continue
            evidence = _evidence(
                a, b, FWD, POWER, source=source, expected_kwh=q4(expected), change_kwh=change,
                ratio=q4(ratio),
            )  # fmt: skip
            if changes(over, s_over):
                over.append(Observation(b.time, s_over, evidence, a.time))
            if changes(fast, s_fast):
                fast.append(Observation(b.time, s_fast, evidence, a.time))
        return over, fast

    realtime = realtime_with(h, FWD)
    fine_pairs = []
    for a, b in itertools.pairwise(realtime):
        pa = power_kw(a)
        if pa is not None and b.time - a.time <= MAX_POWER_GAP:
            fine_pairs.append((a, b, max(pa, _ZERO) * seconds(a.time, b.time) / HOUR_S))
    fine_over, fine_fast = judge(fine_pairs, "realtime")
    coarse_pairs = []
    if _spans_a_day(h):
        frozen = frozen_ok(h)
        for a, b in itertools.pairwise(frozen):
            explained = expected_kwh(h.realtime, a.time, b.time, low_end=False)
            if explained is not None and explained[1] >= MIN_COVERAGE:
                coarse_pairs.append((a, b, explained[0]))
    over, fast = judge(coarse_pairs, "daily_frozen")
    times = _times(realtime)
    return _finding(meter, "over_deviation", fine_over + drop_covered(over, times), cfg) + _finding(
        meter, "running_fast", fine_fast + drop_covered(fast, times), cfg
    )


# -- daily energy against physics and against the meter's own past ---------------------------


def wiring_factor(meter: MeterConfig) -> Decimal:
    """k in Un x Imax x k: 1 single-phase, sqrt 3 three-phase three-wire, 3 four-wire."""
    if meter.phases == 1 or meter.wiring == "single":
        return Decimal(1)
    return SQRT3 if meter.wiring == "three_wire" else Decimal(3)


def physical_max_kwh(meter: MeterConfig) -> Decimal:
    return meter.rated_voltage * meter.max_current * wiring_factor(meter) * 24 / 1000


def above_physical_max(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """A day's energy above Un x Imax x k x 24 h."""
    limit = physical_max_kwh(meter)
    obs: list[Observation] = []
    for a, b, energy, _ in daily(h, ctx.zone):
        state = state_of(energy > limit, energy <= limit)
        if not changes(obs, state):
            continue
        evidence = _evidence(
            a, b, FWD, daily_kwh=energy, limit_kwh=q4(limit), rated_voltage=meter.rated_voltage,
            max_current=meter.max_current, k=q4(wiring_factor(meter)),
        )  # fmt: skip
        obs.append(Observation(b.time, state, evidence, a.time))
    return _finding(meter, "above_physical_max", obs, ctx.checks.physical_max)


def consumption_jump(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """A day above ``factor`` x the median of the previous ``window_days`` days' energy
    (days that went negative left out), once ``min_history_days`` of them exist."""
    cfg = ctx.checks.consumption_jump
    days = daily(h, ctx.zone)
    ordinals = [day.toordinal() for _, _, _, day in days]
    energies = [e for _, _, e, _ in days]
    obs: list[Observation] = []
    for i, (a, b, energy, _) in enumerate(days):
        if energy < 0:
            continue
        lo = bisect.bisect_left(ordinals, ordinals[i] - cfg.window_days, 0, i)
        past = [e for e in energies[lo:i] if e >= 0]
        if len(past) < cfg.min_history_days:
            continue
        if energy < cfg.min_kwh or energy <= cfg.factor * min(past):
            # No median can make this a jump (the median is at least the smallest day).
            state = NORMAL
        else:
            jump = energy > cfg.factor * statistics.median(past)
            state = state_of(jump, not jump)
        if changes(obs, state):
            evidence = _evidence(
                a,
                b,
                FWD,
                daily_kwh=energy,
                median_kwh=statistics.median(past),
                history_days=len(past),
            )
            obs.append(Observation(b.time, state, evidence, a.time))
    return _finding(meter, "consumption_jump", obs, cfg)


# -- reverse energy --------------------------------------------------------------------------


def _status_evidence(s: Sample) -> dict[str, JSONValue]:
    return {"status": point(s, "active_power_reverse")}


def reverse_energy(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """Reverse register rising (by ``min_increase_kwh`` or more) on a consumer meter, or the
    active power direction bit of status word 1."""
    cfg = ctx.checks.reverse_energy
    if meter.role is MeterRole.MASTER:
        return []

    def judge(series: Sequence[Sample], source: str) -> list[Observation]:
        out: list[Observation] = []
        for a, b in itertools.pairwise(series):
            rise = b.values[REV] - a.values[REV]
            state = state_of(rise >= cfg.min_increase_kwh and rise > 0, rise <= 0)
            if changes(out, state):
                evidence = _evidence(a, b, REV, source=source, change_kwh=rise)
                out.append(Observation(b.time, state, evidence, a.time))
        return out

    realtime = realtime_with(h, REV)
    fine = judge(realtime, "realtime")
    status: list[Observation] = []
    prev = None
    for s in h.of(ReadingKind.STATUS):
        flag = s.flag("active_power_reverse")
        if flag is None:
            continue
        state = state_of(flag, not flag)
        if changes(status, state):
            since = prev.time if prev is not None else None
            status.append(Observation(s.time, state, partial(_status_evidence, s), since))
        prev = s
    times = sorted(_times(realtime) + [s.time for s in h.of(ReadingKind.STATUS)])
    frozen = [s for s in frozen_ok(h) if s.dec(REV) is not None]
    coarse = drop_covered(judge(frozen, "daily_frozen"), times)
    fine += status
    return _finding(meter, "reverse_energy", fine + coarse, cfg)
