"""Small pure helpers the rules share: sample pairs, evidence, days, expected energy.

Expected energy is what the measured power explains between two register reads. Power is a
snapshot, so between two snapshots it is taken as held at the earlier one (left Riemann sum:
exactly right for loads that change at most at the reads, close enough elsewhere for ratios
against thresholds of 4 and 6); a stopped-meter check takes the smaller of the two ends
instead, so a load that switched off right after a read is not taken for a stopped register.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import itertools
from collections.abc import Iterator, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from gateway.config import Edition
from spool import JSONValue, Quality

from .history import MeterHistory, Sample, VerifiedDays
from .model import Observation, State

FWD: Final = "forward_active_total"
REV: Final = "reverse_active_total"
POWER: Final = "active_power_total"
HOUR_S: Final = Decimal(3600)
#: two snapshots further apart than this are not used to explain energy with power
MAX_POWER_GAP: Final = dt.timedelta(hours=4)
_Q: Final = Decimal("0.0001")
_ONE_DAY: Final = dt.timedelta(days=1)


def q4(value: Decimal) -> Decimal:
    """Ratios and derived energies in evidence: 4 places, half-even."""
    return value.quantize(_Q, ROUND_HALF_EVEN)


def pairs(samples: Sequence[Sample]) -> Iterator[tuple[Sample, Sample]]:
    for i in range(1, len(samples)):
        yield samples[i - 1], samples[i]


def with_value(samples: Sequence[Sample], name: str) -> list[Sample]:
    return [s for s in samples if s.dec(name) is not None]


def realtime_with(h: MeterHistory, name: str) -> list[Sample]:
    """Real-time snapshots that carry ``name``."""
    return h.memo(f"realtime/{name}", lambda: with_value(h.realtime, name))


def frozen_ok(h: MeterHistory) -> list[Sample]:
    """Verified daily frozen values (quality ok, with a forward total)."""
    return h.memo(
        "frozen_ok",
        lambda: [s for s in h.frozen if s.quality is Quality.OK and s.dec(FWD) is not None],
    )


def frozen_by_time(h: MeterHistory) -> dict[dt.datetime, Sample]:
    return h.memo("frozen_by_time", lambda: {s.time: s for s in h.frozen})


def verified_by_day(h: MeterHistory, edition: Edition, zone: dt.tzinfo) -> dict[dt.date, Sample]:
    """Each local day's verified daily value: the frozen record at its 00:00 with quality ok
    (a 1997 meter, which keeps no frozen history, gives its register read that day)."""

    def make() -> dict[dt.date, Sample]:
        out: dict[dt.date, Sample] = {}
        for s in h.frozen:
            day, midnight = _local_day(s.time, zone)
            if edition is Edition.V1997:
                if s.quality in (Quality.OK, Quality.NOT_FROZEN) and day not in out:
                    out[day] = s
            elif midnight and s.quality is Quality.OK and s.dec(FWD) is not None:
                out[day] = s
        return out

    return h.memo(f"verified/{edition.value}", make)


def verified_days(h: MeterHistory, edition: Edition, zone: dt.tzinfo) -> VerifiedDays | None:
    """:func:`verified_by_day` in the compact form the district rules read every run: built
    while the daily frozen values are in memory, kept after they went back to the spool (a
    history whose samples changed since is judged, so read back, before it is asked)."""
    key = (edition, zone)
    found = h.days
    if found is not None and found.key == key and (found.version == h.version or not h.held):
        return found
    if not h.held:
        return None
    found = h.days = VerifiedDays(verified_by_day(h, edition, zone), key, h.version)
    return found


@functools.lru_cache(maxsize=4096)
def _local_day(moment: dt.datetime, zone: dt.tzinfo) -> tuple[dt.date, bool]:
    """The local day of a data time and whether it is that day's 00:00. Most meters' frozen
    values share their midnights, so every history holds the same few date objects."""
    local = moment.astimezone(zone)
    return local.date(), local.time() == dt.time()


def daily(h: MeterHistory, zone: dt.tzinfo) -> list[tuple[Sample, Sample, Decimal, dt.date]]:
    """Each local day's energy from verified daily frozen values at its two midnights (which
    may be negative: the register went back), with the day. Not kept with the history: the
    rules that read it run once per history version, and a day's energies would outlive it."""
    by_day = verified_by_day(h, Edition.V2007, zone)
    out = []
    for day, a in sorted(by_day.items()):
        b = by_day.get(day + _ONE_DAY)
        if b is not None:
            out.append((a, b, b.values[FWD] - a.values[FWD], day))
    return out


def seconds(a: dt.datetime, b: dt.datetime) -> Decimal:
    return Decimal((b - a) // dt.timedelta(seconds=1))


def point(sample: Sample, *names: str) -> dict[str, JSONValue]:
    """A sample as evidence: its data time and the named values."""
    out: dict[str, JSONValue] = {"time": sample.time.isoformat()}
    for name in names:
        value = sample.values.get(name)
        out[name] = value if value is None or isinstance(value, Decimal | int | str) else str(value)
    return out


def covered(times: Sequence[dt.datetime], start: dt.datetime, end: dt.datetime) -> bool:
    """Whether any of the sorted ``times`` falls in ``(start, end]``."""
    i = bisect.bisect_right(times, start)
    return i < len(times) and times[i] <= end


def drop_covered(coarse: list[Observation], fine: Sequence[dt.datetime]) -> list[Observation]:
    """Coarse interval observations (daily frozen pairs) whose interval holds a sample of the
    finer series that judges the same condition are dropped: one anomaly, one episode."""
    if not fine:
        return coarse
    return [o for o in coarse if not covered(fine, o.start, o.at)]


def changes(out: list[Observation], state: State) -> bool:
    """Whether an observation in ``state`` changes what ``out`` says so far.

    Rules record only changes (and never holds): folding, matching and clearing look only at
    where the state turns, and a run judges hundreds of thousands of samples."""
    return state is not State.HOLD and (not out or out[-1].state is not state)


def power_kw(sample: Sample) -> Decimal | None:
    """Active power, or (without it) the sum of U x I over the phases as an upper bound."""
    power = sample.dec(POWER)
    if power is not None:
        return power
    total: Decimal | None = None
    for phase in "abc":
        u, i = sample.dec(f"voltage_{phase}"), sample.dec(f"current_{phase}")
        if u is not None and i is not None:
            total = (total or Decimal(0)) + u * i / 1000
    return total


def expected_kwh(
    snapshots: Sequence[Sample], start: dt.datetime, end: dt.datetime, *, low_end: bool
) -> tuple[Decimal, Decimal] | None:
    """Energy the snapshots' power explains over ``[start, end]`` and the share of the span it
    covers, or ``None`` when no two usable snapshots lie in it. ``low_end``: hold the smaller
    power of each pair (stopped-meter check) instead of the earlier one."""
    times = [s.time for s in snapshots]
    lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
    inside = [(s, p) for s in snapshots[lo:hi] if (p := power_kw(s)) is not None]
    if len(inside) < 2:
        return None
    energy = Decimal(0)
    spanned = Decimal(0)
    for (a, pa), (b, pb) in itertools.pairwise(inside):
        if b.time - a.time > MAX_POWER_GAP:
            continue
        held = min(pa, pb) if low_end else pa
        energy += max(held, Decimal(0)) * seconds(a.time, b.time) / HOUR_S
        spanned += seconds(a.time, b.time)
    whole = seconds(start, end)
    return energy, (spanned / whole if whole else Decimal(0))


def local_day_start(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), zone)


def state_of(abnormal: bool, normal: bool) -> State:
    if abnormal:
        return State.ABNORMAL
    return State.NORMAL if normal else State.HOLD
