"""The collector: plans each day's work into the ledger and works the ledger bus by bus.

* **Planning** (at start and at each day's ``daily_start``): every configured meter gets ledger
  entries for today's items, due at ``daily_start`` plus a per-meter jitter, and
  ``daily_frozen`` entries for the ``catch_up_days`` before today, due at once. Entries that
  exist are left alone, so a restart never forgets what was done or still owed.
* **Working** (one worker per bus, requests serialised by the bus channel): the due entries of
  the bus's meters, oldest day first, each run as a plan session; a meter's readings and its
  ledger updates are committed in one transaction. A failure is retried through the day with
  doubling delays; a meter that times out is not asked for its other items in the same pass;
  a resting meter (channel back-off) costs no bus time and is rescheduled for when it wakes.
* **Time sync** after each pass, from the clock reads of the day, under :mod:`.timesync`.

Everything takes time from the injected clock; stopping is cooperative: the current exchange
finishes, its results are committed, then the workers return.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from structlog.contextvars import bind_contextvars, bound_contextvars

from drivers.channel import Exchange
from drivers.clock import Clock
from drivers.errors import DriverError, MeterRestingError
from drivers.plc_router import RoundReport, RoundSource
from gateway.config import Config, MeterConfig
from gateway.config import Edition as ConfigEdition
from protocols.bcd import Address
from protocols.dlt645 import ABSENT, BroadcastTime, Edition, Message
from protocols.dlt645.describe import flat_values
from spool import Event, LedgerEntry, LedgerState, Reading, ReadingValue, Spool

from .plans import ClockSession, Collected, Item, Session, SessionResult, start_session
from .router import RouterRound
from .timesync import TimeSyncRules, decide

log = logging.getLogger("amigw.collector")

#: next_attempt of an entry that no retry can complete (kept for the record, never due).
NEVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
#: driver failures after which the meter is not asked for more items in the same pass
_LINK_FAILURES = (
    "timeout", "corrupted", "backed-off", "link-error", "module-timeout", "not-in-network",
)  # fmt: skip


class _Ticking:
    """A router round's source that counts each request handed out and each answer or
    failure reported as progress of the bus."""

    def __init__(self, source: RouterRound, tick: Callable[[], None]) -> None:
        self._source = source
        self._tick = tick

    def next_request(self, address: Address) -> Message | None:
        self._tick()
        return self._source.next_request(address)

    def on_reply(self, address: Address, reply: Message) -> None:
        self._tick()
        self._source.on_reply(address, reply)

    def on_failure(self, address: Address, reason: str) -> None:
        self._tick()
        self._source.on_failure(address, reason)


class RoundRunner(Protocol):
    """A PLC module in router-led mode: runs a round against a round source."""

    async def run_round(
        self, source: RoundSource, *, idle_timeout_s: float, stop: asyncio.Event | None = None
    ) -> RoundReport: ...


class MeterAccess(Protocol):
    """What the collector needs of a bus: the RS-485 channel and the PLC driver both offer it."""

    name: str

    async def request(self, message: Message) -> Exchange: ...

    async def broadcast(self, message: BroadcastTime) -> None: ...

    def resting_until(self, address: Address) -> dt.datetime | None: ...


@dataclass(frozen=True, slots=True)
class MeterPlan:
    address: Address
    edition: Edition
    bus: str
    items: tuple[Item, ...]
    config: MeterConfig


@dataclass(slots=True)
class CollectorStatistics:
    sessions_ok: int = 0
    sessions_failed: int = 0
    readings_new: int = 0
    time_syncs: int = 0
    passes: int = 0


@dataclass(frozen=True, slots=True)
class CollectorSnapshot:
    """What :meth:`Collector.statistics` returns for metrics: the counters above, plus
    readings read and sessions run per plan item, and per meter its failed sessions and the
    time of its last successful one (both since start)."""

    stats: CollectorStatistics
    readings_by_item: Mapping[str, int]
    sessions_by_item: Mapping[tuple[str, str], int]  # (item, "ok" | "failed")
    meter_failures: Mapping[str, int]
    meter_last_ok: Mapping[str, dt.datetime]


def items_for(meter: MeterConfig, config: Config) -> tuple[Item, ...]:
    c = config.collection
    items = [Item.DAILY_FROZEN, Item.CLOCK]
    if meter.edition is ConfigEdition.V2007:
        if c.read_status:
            items.append(Item.STATUS)
        if c.read_events:
            items.append(Item.EVENTS)
        if c.read_prepaid and meter.prepaid != "none":
            items.append(Item.PREPAID)
    return tuple(items)


def item_of(name: str) -> Item:
    """The plan item of a ledger item name (``realtime/0915`` is a real-time slot)."""
    return Item(name.partition("/")[0])


def known_item(name: str) -> bool:
    return name.partition("/")[0] in Item._value2member_map_


def realtime_slots(day: dt.date, interval_s: int, zone: ZoneInfo) -> list[tuple[str, dt.datetime]]:
    """The real-time snapshot slots of a day: ledger item name and when it falls due."""
    if interval_s <= 0:
        return []
    start = dt.datetime.combine(day, dt.time(), zone)
    out = []
    for k in range(0, 86400, interval_s):
        at = start + dt.timedelta(seconds=k)
        out.append((f"{Item.REALTIME.value}/{at:%H%M}", at))
    return out


def _scalar(value: Any) -> Decimal | int | str | bool | None:
    if value is ABSENT or value is None:
        return None
    if isinstance(value, bool | int | str | Decimal):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def to_reading(
    meter: Address, collected: Collected, read_time: dt.datetime, source: str
) -> Reading:
    values = {
        name: ReadingValue(_scalar(value), unit or None)
        for name, value, unit in flat_values(collected.values)
    }
    return Reading(
        meter=str(meter),
        di=collected.di,
        data_time=collected.data_time,
        read_time=read_time,
        values=values,
        quality=collected.quality,
        kind=collected.kind,
        source=source,
    )


class Collector:
    """Plans and works the collection ledger for every bus of one gateway."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        accesses: Mapping[str, MeterAccess],
        clock: Clock,
        *,
        rounds: Mapping[str, RoundRunner] | None = None,
        prepare: Mapping[str, Callable[[], Awaitable[bool]]] | None = None,
        rng: random.Random | None = None,
        round_idle_s: float = 120.0,
    ) -> None:
        self.config = config
        self.rounds = dict(rounds or {})
        self.prepare = dict(prepare or {})
        self.round_idle_s = round_idle_s
        self.spool = spool
        self.accesses = dict(accesses)
        self.clock = clock
        self.zone = ZoneInfo(config.gateway.timezone)
        self.rng = rng or random.Random()
        self.meters: dict[str, MeterPlan] = {}
        for m in config.meter:
            edition = Edition.V2007 if m.edition is ConfigEdition.V2007 else Edition.V1997
            self.meters[m.address] = MeterPlan(
                Address(m.address), edition, m.bus, items_for(m, config), m
            )
        self.stats = CollectorStatistics()
        self._by_item: Counter[str] = Counter()
        self._sessions: Counter[tuple[str, str]] = Counter()
        self._meter_failures: Counter[str] = Counter()
        self._meter_last_ok: dict[str, dt.datetime] = {}
        self.rules = TimeSyncRules(
            config.time_sync.threshold_s,
            config.time_sync.max_correction_s,
            config.time_sync.quiet_minutes_around_midnight,
        )
        self._stop = asyncio.Event()
        # One due-list query at a time: each lists every bus's entries, and twenty buses
        # asking at once held twenty copies of the day's ledger in memory.
        self._due_lock = asyncio.Lock()
        self._kick: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._wake: dict[str, dt.datetime] = {}
        self._drifts: dict[str, dict[Address, float]] = defaultdict(dict)
        self._drift_day: dict[str, dt.date] = {}
        self._last_sync: dict[str, dt.date] = {}
        self.progress = 0  # bumped on every exchange; the watchdog reads it
        # Per bus, exchanges so far (answered or not) and whether its worker is in a pass
        # rather than asleep until its next due time: the watchdog tells a wedged bus from
        # an idle one with these.
        self.bus_progress: Counter[str] = Counter()
        self.working: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        for event in self._kick.values():
            event.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        """Plan, then work every bus until :meth:`stop`."""
        await self.restore()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._planner(), name="collector-planner")
            for bus in sorted({p.bus for p in self.meters.values()}):
                if bus in self.accesses:
                    tasks.create_task(self._worker(bus), name=f"collector-{bus}")

    async def restore(self) -> None:
        """Re-learn from the spool what is still owed and when buses last had a time sync."""
        now = self.clock.now()
        for state in (LedgerState.PENDING, LedgerState.FAILED):
            for entry in await self.spool.ledger(state=state):
                plan = self.meters.get(entry.meter)
                if (
                    plan is not None
                    and entry.next_attempt is not None
                    and entry.next_attempt != NEVER
                ):
                    self._note_wake(plan.bus, entry.next_attempt)
        day_start = dt.datetime.combine(self.local(now).date(), dt.time(), self.zone)
        for event in await self.spool.events(since=day_start, type="time_sync"):
            self._last_sync[event.source] = event.event_time.astimezone(self.zone).date()

    def local(self, instant: dt.datetime) -> dt.datetime:
        return instant.astimezone(self.zone)

    def synced_on(self, bus: str) -> dt.date | None:
        """The local day of the bus's last broadcast time sync (meters take one a day)."""
        return self._last_sync.get(bus)

    def note_time_sync(self, bus: str, day: dt.date) -> None:
        """A time sync broadcast by someone else (a head-end command) counts for the day."""
        self._last_sync[bus] = day

    # -- planning ------------------------------------------------------------------------------
    def _jitter(self, address: str) -> dt.timedelta:
        spread = self.config.collection.daily_jitter_s
        if spread <= 0:
            return dt.timedelta()
        # Stable per meter and day-independent, so a restart does not reshuffle the morning.
        return dt.timedelta(seconds=random.Random(address).uniform(0, spread))

    async def plan(self, now: dt.datetime | None = None) -> int:
        """Ensure today's entries and the back-fill window exist; return how many were added."""
        now = now or self.clock.now()
        today = self.local(now).date()
        start = dt.datetime.combine(today, self.config.collection.daily_start_time, self.zone)
        entries: list[LedgerEntry] = []
        for address, plan in self.meters.items():
            due = (start + self._jitter(address)).astimezone(dt.UTC)
            for item in plan.items:
                entries.append(
                    LedgerEntry(address, today, item.value, LedgerState.PENDING, 0, None, due, now)
                )
            for name, at in realtime_slots(
                today, self.config.collection.realtime_interval_s, self.zone
            ):
                if at >= now - dt.timedelta(seconds=self.config.collection.realtime_interval_s):
                    entries.append(
                        LedgerEntry(
                            address,
                            today,
                            name,
                            LedgerState.PENDING,
                            0,
                            None,
                            at.astimezone(dt.UTC),
                            now,
                        )
                    )
            if self._settlement_due(today):
                entries.append(
                    LedgerEntry(
                        address,
                        today,
                        Item.SETTLEMENT.value,
                        LedgerState.PENDING,
                        0,
                        None,
                        due,
                        now,
                    )
                )
            if plan.edition is Edition.V1997:
                continue  # a 1997 meter keeps no daily history to back-fill from
            for back in range(1, self.config.collection.catch_up_days + 1):
                day = today - dt.timedelta(days=back)
                entries.append(
                    LedgerEntry(
                        address,
                        day,
                        Item.DAILY_FROZEN.value,
                        LedgerState.PENDING,
                        0,
                        None,
                        None,
                        now,
                    )
                )
        added = await self.spool.ensure_ledger(entries)
        for plan in self.meters.values():
            due = (start + self._jitter(str(plan.address))).astimezone(dt.UTC)
            self._note_wake(plan.bus, due if due > now else now)
        log.info("planned %s: %d new ledger entries for %d meters", today, added, len(self.meters))
        return added

    def _settlement_due(self, day: dt.date) -> bool:
        return day.day == self.config.collection.settlement_day

    async def _planner(self) -> None:
        while not self.stopping:
            now = self.clock.now()
            await self.plan(now)
            today = self.local(now).date()
            next_start = dt.datetime.combine(
                today + dt.timedelta(days=1), self.config.collection.daily_start_time, self.zone
            )
            # Plan a little before the first entries fall due, so the morning starts on time.
            await self._sleep_until(next_start - dt.timedelta(seconds=30), None)

    # -- working ---------------------------------------------------------------------------
    def _note_wake(self, bus: str, when: dt.datetime) -> None:
        current = self._wake.get(bus)
        # A wake time already past was for work the pass in progress takes anyway: a new one
        # replaces it, or the bus would sleep the idle fallback instead of until ``when``.
        if current is None or when < current or current <= self.clock.now():
            self._wake[bus] = when
            self._kick[bus].set()

    async def _sleep_until(self, when: dt.datetime, bus: str | None) -> None:
        """Sleep on the injected clock until ``when``; a stop (or, for a bus, new work) wakes
        the sleeper at once."""
        wake = self._kick[bus] if bus is not None else self._stop
        while not self.stopping:
            remaining = (when - self.clock.now()).total_seconds()
            if remaining <= 0:
                return
            if bus is not None and wake.is_set():
                wake.clear()
                return
            sleeper = asyncio.ensure_future(self.clock.sleep(min(remaining, 3600.0)))
            waiter = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waiter.cancel()

    async def _worker(self, bus: str) -> None:
        bind_contextvars(bus=bus)  # this task's context: every line it logs names the bus
        ready = bus not in self.prepare
        while not self.stopping:
            if not ready:
                ready = await self.prepare[bus]()
                if not ready:
                    await self._sleep_until(self.clock.now() + dt.timedelta(seconds=300), bus)
                    continue
            self.working.add(bus)
            try:
                if bus in self.rounds:
                    processed = await self.collect_round(bus)
                else:
                    processed = await self.collect_bus(bus)
            finally:
                self.working.discard(bus)
            if processed:
                continue
            wake = self._wake.pop(bus, None)
            now = self.clock.now()
            if wake is None or wake <= now:
                wake = now + dt.timedelta(seconds=300)
            await self._sleep_until(wake, bus)
            if self.clock.now() < wake:
                # Woken early by new work: the appointment that was popped still stands.
                current = self._wake.get(bus)
                if current is None or wake < current:
                    self._wake[bus] = wake

    async def collect_bus(self, bus: str, now: dt.datetime | None = None) -> int:
        """Work every due entry of ``bus`` once; return how many entries were attempted."""
        access = self.accesses[bus]
        now = now or self.clock.now()
        async with self._due_lock:
            due = [e for e in await self.spool.due(now) if self._on_bus(e, bus)]
        by_meter: dict[str, list[LedgerEntry]] = {}
        for entry in due:
            by_meter.setdefault(entry.meter, []).append(entry)
        attempted = 0
        for meter, entries in by_meter.items():
            if self.stopping:
                break
            with bound_contextvars(meter=meter):
                attempted += await self._collect_meter(self.meters[meter], entries, access)
        self.stats.passes += 1
        await self._record_foreign(bus, access, now)
        if attempted:
            await self._maybe_time_sync(bus, access)
        return attempted

    async def _record_foreign(self, bus: str, access: MeterAccess, now: dt.datetime) -> None:
        """Addresses not in the archive that answered on the bus become ``unknown_meter``
        events (one per address and day), which the archive check turns into alarms."""
        take = getattr(access, "take_foreign", None)
        if take is None:
            return
        foreign: dict[Address, int] = take()
        day_start = dt.datetime.combine(self.local(now).date(), dt.time(), self.zone)
        events = [
            Event(bus, "unknown_meter", str(address), day_start, {"replies": n})
            for address, n in foreign.items()
            # a reply "from" the broadcast or wildcard address is garbage, not a meter
            if str(address) not in self.meters and not (address.is_broadcast or address.is_wildcard)
        ]
        if events:
            await self.spool.write_events(events)

    async def collect_round(self, bus: str, now: dt.datetime | None = None) -> int:
        """One router-led round over the due entries of ``bus``; return entries attempted."""
        now = now or self.clock.now()
        by_meter: dict[str, list[LedgerEntry]] = {}
        for entry in await self.spool.due(now):
            if self._on_bus(entry, bus):
                by_meter.setdefault(entry.meter, []).append(entry)
        if not by_meter:
            return 0

        def start(entry: LedgerEntry) -> Session:
            plan = self.meters[entry.meter]
            return start_session(
                item_of(entry.item),
                plan.address,
                plan.edition,
                self.zone,
                now=self.clock.now(),
                day=entry.day,
            )

        source = RouterRound(by_meter, start, self.clock.now)
        report = await self.rounds[bus].run_round(
            _Ticking(source, lambda: self._tick(bus)),
            idle_timeout_s=self.round_idle_s,
            stop=self._stop,
        )
        log.info("router round on %s: %s", bus, report)
        readings: list[Reading] = []
        updates: list[LedgerEntry] = []
        for attempt in source.conclude(stopped=self.stopping):
            if self.stopping and attempt.finished_at is None:
                continue  # cut short by the stop: not an attempt, still owed at the next start
            plan = self.meters[attempt.entry.meter]
            read_time = attempt.finished_at or self.clock.now()
            if attempt.session is None:
                result = SessionResult(
                    ok=False, reason="the router did not reach the meter in this round"
                )
                updates.append(self._after_result(attempt.entry, result, read_time))
                continue
            result = attempt.session.result
            readings.extend(to_reading(plan.address, c, read_time, bus) for c in result.collected)
            updates.append(self._after_result(attempt.entry, result, read_time))
            self._count(attempt.entry, result, read_time)
            if result.clock_drift_s is not None:
                self._record_drift(plan, result.clock_drift_s, read_time)
        self.stats.readings_new += await self.spool.commit_collection(readings, updates)
        self.stats.passes += 1
        if bus in self.accesses:
            await self._maybe_time_sync(bus, self.accesses[bus])
        return len(updates)

    def _count(self, entry: LedgerEntry, result: SessionResult, at: dt.datetime) -> None:
        item = item_of(entry.item).value
        self._by_item[item] += len(result.collected)
        self._sessions[item, "ok" if result.ok else "failed"] += 1
        if result.ok:
            self.stats.sessions_ok += 1
            self._meter_last_ok[entry.meter] = at
        else:
            self.stats.sessions_failed += 1
            self._meter_failures[entry.meter] += 1

    def statistics(self) -> CollectorSnapshot:
        return CollectorSnapshot(
            replace(self.stats),
            MappingProxyType(dict(self._by_item)),
            MappingProxyType(dict(self._sessions)),
            MappingProxyType(dict(self._meter_failures)),
            MappingProxyType(dict(self._meter_last_ok)),
        )

    def _on_bus(self, entry: LedgerEntry, bus: str) -> bool:
        plan = self.meters.get(entry.meter)
        return plan is not None and plan.bus == bus and known_item(entry.item)

    async def _collect_meter(
        self, plan: MeterPlan, entries: Sequence[LedgerEntry], access: MeterAccess
    ) -> int:
        now = self.clock.now()
        resting = access.resting_until(plan.address)
        if resting is not None:
            rest = [
                e.with_state(
                    e.state,
                    now=now,
                    reason=e.reason or "meter resting",
                    next_attempt=resting,
                    attempt=False,
                )
                for e in entries
            ]
            await self.spool.update_ledger(rest)
            self._note_wake(plan.bus, resting)
            return 0
        readings: list[Reading] = []
        updates: list[LedgerEntry] = []
        attempted = 0
        for entry in sorted(entries, key=lambda e: (e.day, e.item != Item.DAILY_FROZEN)):
            if self.stopping:
                break
            if self._stale_snapshot(entry, now):
                stale = SessionResult(
                    ok=False, reason="the real-time slot passed before it was read"
                )
                updates.append(self._after_result(entry, stale, now))
                continue
            session = start_session(
                item_of(entry.item),
                plan.address,
                plan.edition,
                self.zone,
                now=self.clock.now(),
                day=entry.day,
            )
            await self._drive(session, access)
            result = session.result
            if result.interrupted:
                break  # not an attempt: the entry stays as it was for the next start
            attempted += 1
            read_time = self.clock.now()
            readings.extend(
                to_reading(plan.address, c, read_time, plan.bus) for c in result.collected
            )
            updates.append(self._after_result(entry, result, read_time))
            self._count(entry, result, read_time)
            if not result.ok:
                log.info("meter %s %s %s: %s", plan.address, entry.item, entry.day, result.reason)
            if result.clock_drift_s is not None:
                self._record_drift(plan, result.clock_drift_s, read_time)
            if not result.ok and result.reason and result.reason.startswith(_LINK_FAILURES):
                break  # the meter is not answering: its other items wait for the retry
        if updates:
            self.stats.readings_new += await self.spool.commit_collection(readings, updates)
        return attempted

    async def _drive(self, session: Session, access: MeterAccess) -> None:
        while (request := session.next_request()) is not None:
            if self.stopping:
                session.on_failure("stopped: the gateway is shutting down")
                session.result.interrupted = True
                return
            sent = self.clock.now()
            try:
                exchange = await access.request(request)
            except DriverError as exc:
                self._tick(access.name)
                session.on_failure(f"{exc.reason}: {exc}")
                return
            self._tick(access.name)
            if isinstance(session, ClockSession):
                session.set_exchange_times(sent, self.clock.now())
            session.on_reply(exchange.reply)

    def _tick(self, bus: str) -> None:
        self.progress += 1
        self.bus_progress[bus] += 1

    def _stale_snapshot(self, entry: LedgerEntry, now: dt.datetime) -> bool:
        if item_of(entry.item) is not Item.REALTIME or entry.next_attempt is None:
            return False
        late = (now - entry.next_attempt).total_seconds()
        return late > max(self.config.collection.realtime_interval_s, 60)

    def _after_result(
        self, entry: LedgerEntry, result: SessionResult, now: dt.datetime
    ) -> LedgerEntry:
        if result.ok:
            return entry.with_state(LedgerState.DONE, now=now, reason=None, next_attempt=None)
        if result.final or item_of(entry.item) is Item.REALTIME:
            # A real-time snapshot is of its moment: a missed one is not read later.
            return entry.with_state(
                LedgerState.FAILED, now=now, reason=result.reason, next_attempt=NEVER
            )
        c = self.config.collection
        delay = min(c.retry_initial_s * 2**entry.attempts, c.retry_max_s)
        # Spread retries a little so meters that failed together do not retry together.
        delay *= 1 + self.rng.uniform(0, 0.1)
        next_attempt = now + dt.timedelta(seconds=delay)
        self._note_wake(self.meters[entry.meter].bus, next_attempt)
        return entry.with_state(
            LedgerState.FAILED, now=now, reason=result.reason, next_attempt=next_attempt
        )

    # -- time sync -----------------------------------------------------------------------------
    def _record_drift(self, plan: MeterPlan, drift: float, now: dt.datetime) -> None:
        today = self.local(now).date()
        if self._drift_day.get(plan.bus) != today:
            self._drifts[plan.bus].clear()
            self._drift_day[plan.bus] = today
        self._drifts[plan.bus][plan.address] = drift

    async def _maybe_time_sync(self, bus: str, access: MeterAccess) -> None:
        if not self.config.time_sync.enabled:
            return
        drifts = self._drifts.get(bus)
        if not drifts:
            return
        now = self.clock.now()
        local = self.local(now)
        decision = decide(drifts, local, self._last_sync.get(bus), self.rules)
        events: list[Event] = []
        day_start = dt.datetime.combine(local.date(), dt.time(), self.zone)
        for address in decision.out_of_range:
            details = {
                "drift_s": round(drifts[address]),
                "max_correction_s": self.config.time_sync.max_correction_s,
            }
            events.append(Event(bus, "clock_drift_out_of_range", str(address), day_start, details))
        if decision.send:
            try:
                await access.broadcast(BroadcastTime(local.replace(tzinfo=None, microsecond=0)))
            except DriverError as exc:
                log.warning("time sync on %s failed: %s", bus, exc)
            else:
                self._last_sync[bus] = local.date()
                self.stats.time_syncs += 1
                events.append(
                    Event(bus, "time_sync", "", now.replace(microsecond=0),
                          {"meters": [str(a) for a in decision.to_correct],
                           "max_drift_s": max(round(abs(drifts[a])) for a in decision.to_correct)})
                )  # fmt: skip
                await self._recheck_clocks(decision.to_correct, local.date(), now)
                for address in decision.to_correct:
                    drifts.pop(address, None)
                log.info("time sync broadcast on %s for %d meter(s)", bus, len(decision.to_correct))
        if events:
            await self.spool.write_events(events)

    async def _recheck_clocks(
        self, meters: Sequence[Address], day: dt.date, now: dt.datetime
    ) -> None:
        """Read the corrected clocks again a little later, to confirm the broadcast took."""
        later = now + dt.timedelta(seconds=120)
        entries = [
            LedgerEntry(
                str(a),
                day,
                Item.CLOCK.value,
                LedgerState.PENDING,
                0,
                "re-check after time sync",
                later,
                now,
            )
            for a in meters
        ]
        await self.spool.update_ledger(entries)
        for a in meters:
            self._note_wake(self.meters[str(a)].bus, later)


__all__ = [
    "NEVER",
    "Collector",
    "CollectorSnapshot",
    "CollectorStatistics",
    "MeterAccess",
    "MeterPlan",
    "MeterRestingError",
    "to_reading",
]
