"""The :class:`Checker`: runs every enabled rule over the spool and persists what follows.

One run (:meth:`Checker.run_once`): read what the collector wrote since the last run into the
in-memory history (the month of daily values and counters stays in the spool and is read back
for the meters judged, a chunk at a time; see :mod:`.history`), evaluate the meter rules, the
district rules (collection rate, line loss), the archive rule and the prepaid ledgers, then raise
and clear alarms in one transaction (:mod:`.lifecycle` decides, :class:`spool.ChecksStore`
records; the uplink publishes them on ``alarms``). District results go to the ``events``
stream. Running twice over the same data at the same time changes nothing the second time.

:meth:`Checker.run` repeats that after the collector writes (at most every ``min_interval_s``)
and at least every ``interval_s``, on the injected clock, until :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from drivers.clock import Clock
from gateway.config import Config, MeterConfig
from spool import (
    Alarm,
    AlarmClear,
    AlarmState,
    ChecksStore,
    CommandsStore,
    Event,
    LineLossResult,
    LineLossState,
    ReadingKind,
    Spool,
    SpoolFullError,
    SpoolUnavailableError,
)

from . import lineloss
from .context import Context, districts
from .engine import enabled, evaluate_meter, judged_types, meter_rules
from .history import HistoryCache, MeterHistory, spans
from .lifecycle import Transitions, decide_all
from .model import Finding
from .prepaid import AccountStatus, Ledgers
from .rules_collection import UNKNOWN_METER_EVENT, archive, collection_rate, missed_reading
from .series import verified_days

log = logging.getLogger("amigw.checks")

_WATCH: Final = "watch/"
#: meters whose long history is read back, judged and decided together: a first run's findings
#: of every meter at once held more memory than the history they come from
_METER_CHUNK: Final = 25
EVENT_SOURCE: Final = lineloss.EVENT_SOURCE


@dataclass(frozen=True, slots=True)
class RunReport:
    """What one run did."""

    at: dt.datetime
    rows_read: int
    findings: int
    raised: int
    cleared: int
    balance_entries: int
    line_loss: int
    events: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What :meth:`Checker.evaluate` found and decided, before anything is written."""

    #: how many findings (each is decided as it is built, not kept)
    findings: int
    decided: Transitions
    judged: dict[str, int]
    rates: list[tuple[tuple[str, dt.date], Event]]
    losses: list[LineLossResult]


@dataclass(frozen=True, slots=True)
class CheckerStatistics:
    """Counters for metrics (since start) and the state after the last run."""

    runs: int
    failures: int
    raised: Mapping[str, int]
    cleared: Mapping[str, int]
    active: int
    last_run: dt.datetime | None
    last_duration_s: float
    balance_entries: int
    line_loss_results: int


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic collector paused over a CPU-bound pass: a run allocates about a million
    short-lived, acyclic objects, and full collections over the large history in memory would
    otherwise cost as much as the rules themselves (reference counting still frees them)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Checker:
    """The edge checks of one gateway."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        clock: Clock,
        *,
        headend: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.settings = config.checks
        self.spool = spool
        self.clock = clock
        self.zone = config.gateway.zone
        self.store = ChecksStore(spool)
        self.cache = HistoryCache(
            self.store, spans(self.settings.history_days, self.settings.realtime_history_h)
        )
        self.ledgers = Ledgers(config, self.store)
        self.districts = districts(config)
        self._headend = headend
        self._headend_ok: dt.datetime | None = None
        self._started: dt.datetime | None = None
        self._since: dict[str, dt.datetime] = {}
        self._relay: dict[str, tuple[bool, dt.datetime]] = {}
        self._loaded = False
        #: results without their details (see :meth:`LineLossResult.summary`)
        self._losses: dict[tuple[str, dt.date], LineLossResult] = {}
        #: per meter, the history version whose rule findings are committed
        self._decided: dict[str, int] = {}
        #: per prepaid meter, the history version whose balance entries are posted
        self._planned: dict[str, int] = {}
        self._published: set[tuple[str, dt.date]] = set()
        self._stop = asyncio.Event()
        self._raised: Counter[str] = Counter()
        self._cleared: Counter[str] = Counter()
        self._runs = 0
        self._failures = 0
        self._active = 0
        self._last: RunReport | None = None
        self._entries = 0
        self._loss_results = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        """Check after collection writes and at least every ``interval_s`` until stopped."""
        if not self.settings.enabled:
            log.info("edge checks are switched off ([checks] enabled = false)")
            await self._stop.wait()
            return
        while not self.stopping:
            started = self.clock.now()
            try:
                await self.run_once(started)
            except (SpoolFullError, SpoolUnavailableError) as exc:
                # The next run reads everything again from the last committed state.
                self._failures += 1
                log.warning("edge checks postponed: %s", exc)
            seen = self.spool.write_count
            await self._wait(seen, started)

    async def _wait(self, seen: int, started: dt.datetime) -> None:
        """Until a write after ``seen`` (no sooner than ``min_interval_s`` after ``started``),
        ``interval_s`` after ``started``, or a stop."""
        s = self.settings
        waiters = {
            asyncio.ensure_future(self.spool.wait_written(seen)),
            asyncio.ensure_future(self._stop.wait()),
        }
        timer = asyncio.ensure_future(self._sleep_until(started, s.interval_s))
        try:
            await asyncio.wait(waiters | {timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*waiters, timer):
                task.cancel()
        if not self.stopping and s.min_interval_s:
            pause = asyncio.ensure_future(self._sleep_until(started, s.min_interval_s))
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({pause, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                pause.cancel()
                stop.cancel()

    async def _sleep_until(self, started: dt.datetime, seconds: float) -> None:
        left = seconds - (self.clock.now() - started).total_seconds()
        if left > 0:
            await self.clock.sleep(left)

    # -- one run -----------------------------------------------------------------------------

    async def _load(self, now: dt.datetime) -> None:
        watched = await self.store.state(_WATCH)
        self._since = {
            k.removeprefix(_WATCH): dt.datetime.fromisoformat(v) for k, v in watched.items()
        }
        horizon = now - dt.timedelta(days=self.settings.history_days)
        since = horizon.astimezone(self.zone).date()
        for r in await self.store.line_losses(since=since, details=False):
            self._losses[(r.district, r.day)] = r
        await self.ledgers.load(horizon)
        self._started = now
        self._loaded = True

    async def _watch(self, now: dt.datetime) -> None:
        """Remember when each configured meter was first watched (days before don't count)."""
        new = {m.address: now for m in self.config.meter if m.address not in self._since}
        if new:
            await self.store.remember({_WATCH + a: t.isoformat() for a, t in new.items()})
            self._since.update(new)

    def headend_down_s(self, now: dt.datetime) -> float | None:
        """Seconds the head-end has been unreachable (0 when reachable; ``None``: no uplink)."""
        if self._headend is None:
            return None
        if self._headend():
            self._headend_ok = now
            return 0.0
        since = self._headend_ok or self._started or now
        return max(0.0, (now - since).total_seconds())

    async def run_once(self, now: dt.datetime | None = None) -> RunReport:
        """One pass of every enabled rule at ``now`` (default: the clock's now)."""
        t0 = time.perf_counter()
        now = now or self.clock.now()
        s = self.settings
        if not self._loaded:
            await self._load(now)
        await self._watch(now)
        rows = await self.cache.refresh(now)
        histories = self.cache.meters
        posted = 0
        if enabled(s, "prepaid") and self.ledgers.books:
            # A meter whose history did not change since its entries were posted has nothing
            # new to charge (every verified value after its charge point was posted).
            versions = {
                m.address: h.version
                for book in self.ledgers.books.values()
                for m in book.meters
                if (h := histories.get(m.address)) is not None
            }
            changed = [a for a, v in versions.items() if self._planned.get(a) != v]
            async with self.cache.loaded(changed, now):
                posted = await self.ledgers.update(histories, now)
            self._planned.update(versions)
            self.ledgers.trim(now - dt.timedelta(days=s.history_days))
        reports: list[Event] = []
        if enabled(s, "archive"):
            horizon = now - dt.timedelta(days=s.history_days)
            reports = await self.spool.events(since=horizon, type=UNKNOWN_METER_EVENT)
        types = judged_types(s)
        stored = await self.store.alarm_states(
            cleared_since=now - dt.timedelta(days=s.history_days + 2), types=types
        )
        if enabled(s, "relay"):
            self._relay = await CommandsStore(self.spool).relay_commands()
        ev = await self.evaluate(now, stored, reports)
        decided, rates, losses = ev.decided, ev.rates, ev.losses
        events = [e for _, e in rates] + [lineloss.event_of(r, self.zone) for r in losses]
        new_events = await self.spool.write_events(events) if events else 0
        self._published.update(key for key, _ in rates)
        if losses:
            await self.store.save_line_loss(losses)
            self._losses.update(((r.district, r.day), r.summary()) for r in losses)
            self._loss_results += len(losses)
        # Days older than the history are neither recomputed nor republished.
        oldest = (now - dt.timedelta(days=s.history_days + 1)).astimezone(self.zone).date()
        self._losses = {k: r for k, r in self._losses.items() if k[1] >= oldest}
        self._published = {k for k in self._published if k[1] >= oldest}
        raised, cleared = await self.store.apply_alarms(decided.raises, decided.clears)
        self._decided.update(ev.judged)
        if raised or cleared:
            self._count(decided.raises, decided.clears)
        if raised or cleared or self._runs == 0:
            self._active = len(await self.store.active_alarms())
        self._runs += 1
        self._entries += posted
        report = RunReport(
            now, rows, ev.findings, raised, cleared, posted, len(losses), new_events,
            time.perf_counter() - t0,
        )  # fmt: skip
        self._last = report
        if raised or cleared:
            log.info(
                "checks at %s: %d alarm(s) raised, %d cleared, %d active",
                now.astimezone(self.zone).isoformat(timespec="minutes"), raised, cleared,
                self._active,
            )  # fmt: skip
        return report

    async def evaluate(
        self, now: dt.datetime, stored: Sequence[AlarmState], reports: Sequence[Event] = ()
    ) -> Evaluation:
        """The CPU-bound part of a run, writing nothing: every enabled rule over the history
        (the long-span part read back from the spool chunk by chunk), the district books, the
        prepaid judgements, and the alarm decisions against ``stored``. Meters whose findings
        are already committed for their current history are skipped (clear ``_decided`` to
        judge them all)."""
        s = self.settings
        histories = self.cache.meters
        ctx = Context(
            now, self.zone, s, MappingProxyType(self._since),
            now - self.cache.spans[ReadingKind.DAILY_FROZEN], MappingProxyType(self._relay),
        )  # fmt: skip
        types = judged_types(s)
        decided = Transitions()
        judged: dict[str, int] = {}
        found = 0
        # Each finding is decided on its own, so deciding the meters chunk by chunk, then
        # the rest, gives the same transitions in the same order as all at once.
        meters = self.config.meter
        for i in range(0, len(meters), _METER_CHUNK):
            chunk = meters[i : i + _METER_CHUNK]
            stale = [
                m.address
                for m in chunk
                if (h := histories.get(m.address)) is not None
                and self._decided.get(m.address) != h.version
            ]
            async with self.cache.loaded(stale, now):
                with _gc_paused():
                    findings: list[Finding] = []
                    judged.update(self._meter_findings(chunk, histories, ctx, findings))
                    decided.extend(
                        decide_all((f for f in findings if f.type in types), stored, now)
                    )
                    found += len(findings)
        with _gc_paused():
            findings = []
            rates, losses = self._districts(ctx, findings)
            if enabled(s, "archive"):
                findings.extend(archive(self.config, histories, reports, ctx))
            if enabled(s, "prepaid") and self.ledgers.books:
                findings.extend(self.ledgers.findings(histories, now, self.headend_down_s(now)))
            decided.extend(decide_all((f for f in findings if f.type in types), stored, now))
            found += len(findings)
        return Evaluation(found, decided, judged, rates, losses)

    def _meter_findings(
        self,
        meters: Sequence[MeterConfig],
        histories: Mapping[str, MeterHistory],
        ctx: Context,
        out: list[Finding],
    ) -> dict[str, int]:
        """The history rules of each of ``meters`` whose history changed since its findings
        were last decided (an unchanged history gives the same findings: nothing new to raise
        or clear), and the missed readings of each (they depend on the time). Returns the
        history versions judged, to be marked decided once the alarms are committed."""
        rules = meter_rules(self.settings)
        missed = enabled(self.settings, "missed_reading")
        judged: dict[str, int] = {}
        for meter in meters:
            history = histories.get(meter.address)
            if history is not None and self._decided.get(meter.address) != history.version:
                out.extend(evaluate_meter(history, meter, ctx, rules))
                judged[meter.address] = history.version
                # What the district rules read of it once its samples went back to the spool.
                verified_days(history, meter.edition, ctx.zone)
            if missed:
                out.extend(missed_reading(history, meter, ctx))
        return judged

    def _count(self, raises: list[Alarm], clears: list[AlarmClear]) -> None:
        # Counted as decided: apply_alarms skips only what an earlier run already did.
        self._raised.update(a.type for a in raises)
        self._cleared.update(c.type for c in clears)

    def _districts(
        self, ctx: Context, findings: list[Finding]
    ) -> tuple[list[tuple[tuple[str, dt.date], Event]], list[LineLossResult]]:
        """Collection rates and line loss of every district: their findings go to
        ``findings``; returns the rate events not yet published and the line-loss results
        that are new or changed (to store and publish)."""
        histories = self.cache.meters
        rate_on = enabled(self.settings, "collection_rate")
        loss_on = enabled(self.settings, "line_loss")
        events: list[tuple[tuple[str, dt.date], Event]] = []
        changed: list[LineLossResult] = []
        totals: lineloss.Totals = {}
        for district in self.districts:
            if rate_on:
                found, rates = collection_rate(district, histories, ctx)
                findings.extend(found)
                for rate in rates:
                    key = (district.name, rate.day)
                    if key not in self._published:
                        at = dt.datetime.combine(rate.day, dt.time(), self.zone)
                        event = Event(
                            EVENT_SOURCE, "collection_rate", district.name, at, rate.details()
                        )
                        events.append((key, event))
            if not loss_on:
                continue
            results = {day: r for (d, day), r in self._losses.items() if d == district.name}
            for day in lineloss.days_to_compute(ctx):
                known = results.get(day)
                if known is not None and known.state is LineLossState.COMPLETE:
                    continue
                result = lineloss.compute(district, histories, day, ctx, totals)
                if result is None:
                    continue
                if known is None or (known.state, known.users_read) != (
                    result.state,
                    result.users_read,
                ):
                    changed.append(result)
                    results[day] = result
            findings.extend(lineloss.findings(district, results.values(), ctx))
        return events, changed

    # -- what metrics and the CLI read -------------------------------------------------------

    def statistics(self) -> CheckerStatistics:
        last = self._last
        return CheckerStatistics(
            runs=self._runs,
            failures=self._failures,
            raised=MappingProxyType(dict(self._raised)),
            cleared=MappingProxyType(dict(self._cleared)),
            active=self._active,
            last_run=None if last is None else last.at,
            last_duration_s=0.0 if last is None else last.duration_s,
            balance_entries=self._entries,
            line_loss_results=self._loss_results,
        )

    def accounts(self, now: dt.datetime | None = None) -> list[AccountStatus]:
        """Every prepaid account's balance, days left and protections now."""
        now = now or self.clock.now()
        return self.ledgers.status(now, self.headend_down_s(now))
