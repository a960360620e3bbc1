"""Alarm life: fold observations into episodes, compare them with the stored alarms, and decide
what to raise and what to clear. Pure: the checker persists what this returns.

An **episode** opens at the first abnormal observation and closes at the first normal one
after it; hold observations change nothing (that is the hysteresis: a rule says "hold" inside
its band). Its alarm window runs from the opening observation's ``since`` (the last sample
before it) to the observation itself.

Raise once: an episode that matches a stored alarm is not raised again. A keyed finding matches
the alarm with exactly its window start; any other finding matches every stored alarm of the
same meter and type whose life ``[window start, cleared)`` overlaps the episode's
``[start, end)``. Clear once: a matched active alarm is cleared when its episode has closed; an
active alarm no episode matches is cleared at the first normal observation after its first
abnormal one (no observation, or only holds, leaves it active: no data is not good news).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from spool import Alarm, AlarmClear, AlarmState, JSONValue

from .model import ALARM_TYPES, Finding, Observation, State


@dataclass(frozen=True, slots=True)
class Episode:
    start: dt.datetime
    first: Observation
    end: Observation | None = None

    @property
    def first_at(self) -> dt.datetime:
        return self.first.at

    def overlaps(self, state: AlarmState) -> bool:
        episode_end = None if self.end is None else self.end.at
        if episode_end is not None and episode_end <= state.window_start:
            return False
        return state.cleared is None or self.start < state.cleared


@dataclass(slots=True)
class Transitions:
    raises: list[Alarm] = field(default_factory=list)
    clears: list[AlarmClear] = field(default_factory=list)

    def extend(self, other: Transitions) -> None:
        self.raises.extend(other.raises)
        self.clears.extend(other.clears)


def fold(observations: Iterable[Observation]) -> list[Episode]:
    """Episodes in time order; the last may still be open."""
    episodes: list[Episode] = []
    current: Episode | None = None
    for obs in sorted(observations, key=lambda o: o.at):
        if obs.state is State.ABNORMAL and current is None:
            current = Episode(obs.start, obs)
        elif obs.state is State.NORMAL and current is not None:
            episodes.append(Episode(current.start, current.first, obs))
            current = None
    if current is not None:
        episodes.append(current)
    return episodes


def _first_normal_after(
    observations: Sequence[Observation], after: dt.datetime
) -> Observation | None:
    normals = [o for o in observations if o.state is State.NORMAL and o.at > after]
    return min(normals, key=lambda o: o.at) if normals else None


def _details(
    finding: Finding, state: str, obs: Observation, **extra: JSONValue
) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = {"state": state, "title": ALARM_TYPES[finding.type].title}
    out.update(finding.context)
    out["evidence"] = dict(obs.details())
    out["observed"] = obs.at.isoformat()
    if finding.params:
        out["params"] = dict(finding.params)
    out.update(extra)
    return out


def _raise(finding: Finding, episode: Episode, now: dt.datetime) -> Alarm:
    return Alarm(
        meter=finding.meter,
        type=finding.type,
        window_start=episode.start,
        window_end=max(episode.first_at, episode.start),
        raised=now,
        severity=ALARM_TYPES[finding.type].severity,
        details=_details(finding, "raised", episode.first),
    )


def _clear(
    finding: Finding, start: dt.datetime, first: dt.datetime, obs: Observation
) -> AlarmClear:
    # A clear never dates before the alarm's own first observation.
    at = max(obs.at, first, start)
    return AlarmClear(
        meter=finding.meter,
        type=finding.type,
        window_start=start,
        cleared=at,
        details=_details(finding, "cleared", obs),
    )


def decide(finding: Finding, stored: Sequence[AlarmState], now: dt.datetime) -> Transitions:
    """What to raise and clear for one finding, given its meter's stored alarms of its type."""
    out = Transitions()
    episodes = fold(finding.observations)
    matched: set[dt.datetime] = set()
    by_start = {s.window_start: s for s in stored}
    for episode in episodes:
        if finding.keyed:
            hits = [s for s in stored if s.window_start == episode.start]
        else:
            hits = [s for s in stored if episode.overlaps(s)]
        if not hits:
            out.raises.append(_raise(finding, episode, now))
            if episode.end is not None:
                out.clears.append(_clear(finding, episode.start, episode.first_at, episode.end))
            continue
        for s in hits:
            matched.add(s.window_start)
            if s.active and episode.end is not None:
                out.clears.append(_clear(finding, s.window_start, s.first, episode.end))
    for start, s in by_start.items():
        if start in matched or not s.active:
            continue
        normal = _first_normal_after(finding.observations, s.first)
        if normal is not None:
            out.clears.append(_clear(finding, s.window_start, s.first, normal))
    return out


def decide_all(
    findings: Iterable[Finding], stored: Iterable[AlarmState], now: dt.datetime
) -> Transitions:
    """:func:`decide` for every finding; ``stored`` holds the alarms of every type evaluated
    (active ones, and those cleared recently enough to overlap the findings)."""
    index: dict[tuple[str, str], list[AlarmState]] = defaultdict(list)
    for s in stored:
        index[(s.meter, s.type)].append(s)
    out = Transitions()
    for finding in findings:
        states = index.get((finding.meter, finding.type), [])
        if finding.keyed:
            starts = {o.start for o in finding.observations}
            states = [s for s in states if s.window_start in starts]
        out.extend(decide(finding, states, now))
    return out
