"""Alarm life: episodes from observations, raise once, clear once, hysteresis, no flapping."""

from __future__ import annotations

import dataclasses
import datetime as dt

from gateway.checks import Finding, Observation, State, decide, decide_all, fold
from spool import AlarmState, Severity

from .test_checks_rules import at

A, N, H = State.ABNORMAL, State.NORMAL, State.HOLD
METER = "000000000001"


def obs(*items: tuple[State, float]) -> list[Observation]:
    """Observations at the given hours of day 1, each speaking since the previous one."""
    out: list[Observation] = []
    prev: dt.datetime | None = None
    for state, hour in items:
        when = at(1, hour)
        out.append(Observation(when, state, {"hour": hour}, since=prev))
        prev = when
    return out


def finding(*items: tuple[State, float], keyed: bool = False) -> Finding:
    return Finding(METER, "clock_deviation", obs(*items), {"threshold_s": 300}, {"k": "v"}, keyed)


def stored(
    start: dt.datetime, first: dt.datetime, cleared: dt.datetime | None = None
) -> AlarmState:
    return AlarmState(METER, "clock_deviation", start, first, Severity.WARNING, first, cleared)


def test_fold_opens_on_abnormal_closes_on_normal_and_ignores_holds() -> None:
    episodes = fold(obs((N, 1), (A, 2), (H, 3), (A, 4), (N, 5), (H, 6), (A, 7)))
    assert [(e.start, e.first_at, e.end.at if e.end else None) for e in episodes] == [
        (at(1, 1), at(1, 2), at(1, 5)),
        (at(1, 6), at(1, 7), None),
    ]


def test_a_new_episode_is_raised_with_its_window_and_cleared_when_it_ends() -> None:
    decided = decide(finding((N, 1), (A, 2), (N, 5)), [], at(2))
    (alarm,) = decided.raises
    (clear,) = decided.clears
    assert (alarm.meter, alarm.type, alarm.window_start, alarm.window_end) == (
        METER, "clock_deviation", at(1, 1), at(1, 2),
    )  # fmt: skip
    assert alarm.severity is Severity.WARNING
    assert alarm.raised == at(2)
    assert alarm.details["state"] == "raised"
    assert alarm.details["evidence"] == {"hour": 2}
    assert alarm.details["params"] == {"threshold_s": 300}
    assert alarm.details["k"] == "v"
    assert (clear.window_start, clear.cleared) == (at(1, 1), at(1, 5))
    assert clear.details["state"] == "cleared"
    assert clear.details["evidence"] == {"hour": 5}


def test_raise_once_and_clear_once_across_runs() -> None:
    f = finding((N, 1), (A, 2), (A, 3))
    first = decide(f, [], at(2))
    assert len(first.raises) == 1
    assert first.clears == []
    active = stored(at(1, 1), at(1, 2))
    assert decide(f, [active], at(2)) == type(first)()  # nothing new
    closing = finding((N, 1), (A, 2), (A, 3), (N, 4))
    again = decide(closing, [active], at(3))
    assert again.raises == []
    assert [(c.window_start, c.cleared) for c in again.clears] == [(at(1, 1), at(1, 4))]
    done = dataclasses.replace(active, cleared=at(1, 4))
    assert decide(closing, [done], at(3)) == type(first)()


def test_an_episode_whose_start_slid_out_of_the_window_is_not_raised_again() -> None:
    active = stored(at(0, 10), at(0, 11))  # raised yesterday; today's window starts mid-episode
    assert decide(finding((A, 1), (A, 2)), [active], at(2)).raises == []
    cleared = decide(finding((A, 1), (N, 3)), [active], at(2)).clears
    assert [(c.window_start, c.cleared) for c in cleared] == [(at(0, 10), at(1, 3))]


def test_a_new_episode_after_a_cleared_one_is_a_new_alarm() -> None:
    done = stored(at(1, 1), at(1, 2), cleared=at(1, 3))
    decided = decide(finding((N, 1), (A, 2), (N, 3), (A, 4)), [done], at(2))
    assert [a.window_start for a in decided.raises] == [at(1, 3)]


def test_active_alarm_without_episode_clears_at_the_first_normal_after_it() -> None:
    active = stored(at(0, 1), at(0, 2))
    assert [c.cleared for c in decide(finding((N, 3), (N, 4)), [active], at(2)).clears] == [
        at(1, 3)
    ]
    # Holds, or no observation at all, leave it active: no data is not good news.
    assert decide(finding((H, 3)), [active], at(2)).clears == []
    assert decide(finding(), [active], at(2)).clears == []


def test_keyed_findings_match_only_their_own_window() -> None:
    day1 = Finding(METER, "missed_reading", [
        Observation(at(1, 6), A, since=at(1)), Observation(at(1, 8), N, since=at(1)),
    ], keyed=True)  # fmt: skip
    day2 = Finding(METER, "missed_reading", [Observation(at(2, 6), A, since=at(2))], keyed=True)
    decided = decide_all([day1, day2], [], at(3))
    assert sorted((a.window_start, a.window_end) for a in decided.raises) == [
        (at(1), at(1, 6)),
        (at(2), at(2, 6)),
    ]
    assert [(c.window_start, c.cleared) for c in decided.clears] == [(at(1), at(1, 8))]
    # Stored alarms of other days do not match (overlap would merge these two days).
    day2_state = AlarmState(
        METER, "missed_reading", at(2), at(2, 6), Severity.WARNING, at(2, 6), None
    )
    again = decide_all([day1, day2], [day2_state], at(3))
    assert [a.window_start for a in again.raises] == [at(1)]


def test_decide_all_routes_stored_alarms_by_meter_and_type() -> None:
    other_meter = AlarmState(
        "000000000002", "clock_deviation", at(1, 1), at(1, 2), Severity.WARNING, at(1, 2), None
    )
    other_type = AlarmState(
        METER, "clock_battery_low", at(1, 1), at(1, 2), Severity.WARNING, at(1, 2), None
    )
    decided = decide_all([finding((N, 1), (A, 2))], [other_meter, other_type], at(2))
    assert len(decided.raises) == 1
