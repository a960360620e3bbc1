"""Rules over what a meter reports about itself: clock deviation, voltage (失压, 断相, 过压),
and the theft and tamper indicators (covers, power-down counter, relay, clock battery).

State rules judge each sample on its own (the clock now, the voltage now); counter rules judge
each pair of counter reads (did it go up in between). Both speak for the interval since the
previous sample of their series, where the change happened.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from functools import partial

from pydantic import BaseModel

from gateway.config import MeterConfig
from spool import JSONValue, ReadingKind

from .context import Context, settings_of
from .history import MeterHistory, Sample
from .model import Evidence, Finding, Observation, State
from .series import changes, pairs, point, state_of


def _finding(
    meter: MeterConfig, type_: str, obs: list[Observation], settings: BaseModel
) -> list[Finding]:
    return [Finding(meter.address, type_, obs, settings_of(settings))] if obs else []


Judged = list[tuple[Sample, State, Evidence]]


def _per_sample(judged: Judged) -> list[Observation]:
    """Observations of single samples, each speaking since the previous judged sample."""
    out: list[Observation] = []
    prev: dt.datetime | None = None
    for sample, state, evidence in judged:
        if changes(out, state):
            out.append(Observation(sample.time, state, evidence, since=prev))
        prev = sample.time
    return out


# -- clock ---------------------------------------------------------------------------------


def _clock_text(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def _in_quiet(t: dt.time, start: dt.time, end: dt.time) -> bool:
    return (start <= t or t < end) if start > end else start <= t < end


def clock_deviation(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """|meter - gateway| >= threshold_s; no judgement while either clock is in the quiet
    minutes around midnight (the date may be read on one side and the time on the other)."""
    cfg = ctx.checks.clock
    start, end = dt.time.fromisoformat(cfg.quiet_start), dt.time.fromisoformat(cfg.quiet_end)
    judged: Judged = []
    for s in h.of(ReadingKind.CLOCK):
        drift = s.number("drift")
        meter_time, gateway_time = (
            _clock_text(s.values.get("meter_time")),
            _clock_text(s.values.get("gateway_time")),
        )
        if drift is None or meter_time is None or gateway_time is None:
            continue
        evidence = partial(point, s, "meter_time", "gateway_time", "drift")
        if _in_quiet(meter_time.time(), start, end) or _in_quiet(gateway_time.time(), start, end):
            judged.append((s, State.HOLD, evidence))
            continue
        state = state_of(abs(drift) >= cfg.threshold_s, abs(drift) < cfg.clear_below_s)
        judged.append((s, state, evidence))
    return _finding(meter, "clock_deviation", _per_sample(judged), cfg)


# -- voltage -------------------------------------------------------------------------------


def _phases(s: Sample) -> list[tuple[str, Decimal, Decimal | None]]:
    out = []
    for p in "abc":
        u = s.dec(f"voltage_{p}")
        if u is not None:
            out.append((p, u, s.dec(f"current_{p}")))
    return out


def _voltage_evidence(
    s: Sample, phases: list[tuple[str, Decimal, Decimal | None]], un: Decimal, ib: Decimal
) -> dict[str, JSONValue]:
    names = (f"{k}_{p}" for p, _, _ in phases for k in ("voltage", "current"))
    return {"snapshot": point(s, *names), "rated_voltage": un, "basic_current": ib}


def voltage(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """失压: U < loss_ratio x Un with |I| > loss_current_ratio x Ib; 断相: U < failure_ratio x
    Un; 过压: U > over_ratio x Un. Any phase raises; all phases back past the recovery ratios
    clear (85 % and 115 % of Un by default)."""
    cfg = ctx.checks.voltage
    un, ib = meter.rated_voltage, meter.basic_current
    loss: Judged = []
    failure: Judged = []
    over: Judged = []
    for s in h.realtime:
        phases = _phases(s)
        if not phases:
            continue
        evidence = partial(_voltage_evidence, s, phases, un, ib)
        low_ok = all(u >= cfg.recover_low_ratio * un for _, u, _ in phases)
        lost = any(
            u < cfg.loss_ratio * un and i is not None and abs(i) > cfg.loss_current_ratio * ib
            for _, u, i in phases
        )
        failed = any(u < cfg.failure_ratio * un for _, u, _ in phases)
        high = any(u > cfg.over_ratio * un for _, u, _ in phases)
        high_ok = all(u <= cfg.recover_high_ratio * un for _, u, _ in phases)
        loss.append((s, state_of(lost, low_ok), evidence))
        failure.append((s, state_of(failed, low_ok), evidence))
        over.append((s, state_of(high, high_ok), evidence))
    return (
        _finding(meter, "voltage_loss", _per_sample(loss), cfg)
        + _finding(meter, "phase_failure", _per_sample(failure), cfg)
        + _finding(meter, "overvoltage", _per_sample(over), cfg)
    )


# -- tamper --------------------------------------------------------------------------------


def _counter_evidence(a: Sample, b: Sample, name: str, increase: int) -> dict[str, JSONValue]:
    return {"previous": point(a, name), "current": point(b, name), "increase": increase}


def _counter(h: MeterHistory, name: str, jump: int) -> list[Observation]:
    series = h.memo(
        f"counter/{name}",
        lambda: [s for s in h.of(ReadingKind.EVENT_COUNTER) if s.number(name) is not None],
    )
    out: list[Observation] = []
    for a, b in pairs(series):
        va, vb = a.values[name], b.values[name]
        state = state_of(vb - va >= jump, vb - va < jump)
        if changes(out, state):
            evidence = partial(_counter_evidence, a, b, name, vb - va)
            out.append(Observation(b.time, state, evidence, a.time))
    return out


def covers(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    cfg = ctx.checks.cover
    return _finding(
        meter, "meter_cover_opened", _counter(h, "meter_cover_open_count", 1), cfg
    ) + _finding(meter, "terminal_cover_opened", _counter(h, "terminal_cover_open_count", 1), cfg)


def power_down(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    cfg = ctx.checks.power_down
    return _finding(meter, "power_down", _counter(h, "power_down_count", cfg.jump), cfg)


def relay(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    """Relay open or closed against what was commanded: the state a head-end command set and
    confirmed (from then on), else the trip commanded bit of status word 3."""
    judged: Judged = []
    ours = ctx.relay_commanded.get(meter.address)
    for s in h.of(ReadingKind.STATUS):
        is_open, commanded = s.flag("relay_open"), s.flag("relay_trip_commanded")
        if ours is not None and s.time >= ours[1]:
            commanded = ours[0]
        if is_open is None or commanded is None:
            continue
        evidence = partial(point, s, "relay_open", "relay_trip_commanded")
        judged.append((s, state_of(is_open != commanded, is_open == commanded), evidence))
    return _finding(meter, "relay_mismatch", _per_sample(judged), ctx.checks.relay)


def battery(h: MeterHistory, meter: MeterConfig, ctx: Context) -> list[Finding]:
    judged: Judged = []
    for s in h.of(ReadingKind.STATUS):
        low = s.flag("clock_battery_low")
        if low is not None:
            judged.append((s, state_of(low, not low), partial(point, s, "clock_battery_low")))
    return _finding(meter, "clock_battery_low", _per_sample(judged), ctx.checks.battery)
