"""Caps: keep the spool under its size cap by evicting by value, and survive a full disk.

Size is what the database *uses*: ``(page_count - freelist_count) x page_size``. SQLite reuses
freed pages but never shrinks the file, so the file settles near the cap and stays there;
measuring used pages is what makes eviction visible at all.

Prepared batches (:mod:`spool.prepared`: the JSON of batches cut while the broker was away,
kept beside the file) count towards the size, and go before anything else: they are a cache of
what the records render to, so dropping them loses nothing.

When a committed write leaves the spool above ``max_bytes`` it is brought down to
``LOW_WATER x max_bytes``, prepared batches first, then records lowest value first and oldest
first within each step:

1. ``sent`` — records whose batch was acknowledged (snapshots, then events, then alarms, then
   frozen and billing readings). The head-end has them; they are only the local history.
2. ``snapshot`` — unsent 15-minute and hourly curves, real-time, clock, status and prepaid
   snapshots (and any kind not named below): a later read supersedes them.
3. ``event`` — unsent events, ledger changes and event counters.
4. ``frozen`` — unsent daily frozen and billing readings, then alarms: what bills are made of.

Every eviction is counted by class in ``spool_counters`` (in the deleting transaction, so the
counts survive restarts) and logged once per run and class. Evicting *unsent* records loses
data the head-end never saw, so it also raises an :class:`~spool.records.Alarm`
(``spool_evicted_unsent``, one per hour window; ``major`` once frozen data goes); evicting only
sent records is housekeeping and is logged at INFO.

``SQLITE_FULL`` (a full disk, or a ``max_page_count`` limit) is relieved the same way: the store
counts it, calls :meth:`Caps.relieve_full` to free a slice of pages, and retries the write once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from spool.errors import SpoolFullError, SpoolUnavailableError
from spool.prepared import TOTALS
from spool.records import Alarm, ReadingKind, Severity

if TYPE_CHECKING:
    from spool.store import Spool

log = logging.getLogger("amigw.spool.caps")

#: after eviction the spool uses at most this share of its cap, so the next writes do not
#: trigger another eviction straight away
LOW_WATER: Final = 0.9
#: a full disk frees at least this share of the pages in use (and at least _MIN_RELIEF_PAGES)
_FULL_RELIEF: Final = 0.05
_MIN_RELIEF_PAGES: Final = 64
_MIN_CHUNK: Final = 64
_MAX_CHUNK: Final = 20_000
_MAX_ROUNDS: Final = 200
EVICTION_ALARM: Final = "spool_evicted_unsent"


class EvictionClass(StrEnum):
    SENT = "sent"
    SNAPSHOT = "snapshot"
    EVENT = "event"
    FROZEN = "frozen"


FROZEN_KINDS: Final = (ReadingKind.DAILY_FROZEN, ReadingKind.BILLING)
EVENT_KINDS: Final = (ReadingKind.EVENT_COUNTER,)


def _kinds(kinds: tuple[ReadingKind, ...]) -> str:
    return ", ".join(f"'{k.value}'" for k in kinds)


_FROZEN = f"kind IN ({_kinds(FROZEN_KINDS)})"
_EVENT_KIND = f"kind IN ({_kinds(EVENT_KINDS)})"
_SNAPSHOT = f"kind NOT IN ({_kinds(FROZEN_KINDS + EVENT_KINDS)})"


@dataclass(frozen=True, slots=True)
class _Step:
    klass: EvictionClass
    table: str
    stream: str  # the outbox stream whose acknowledged bound limits a ``sent`` step
    where: str


# Each step runs until it finds nothing more; a later step is reached only when every earlier
# one is exhausted, so the unsent steps never see a sent record.
_STEPS: Final = (
    _Step(EvictionClass.SENT, "readings", "readings", _SNAPSHOT),
    _Step(EvictionClass.SENT, "events", "events", "1"),
    _Step(EvictionClass.SENT, "readings", "readings", _EVENT_KIND),
    _Step(EvictionClass.SENT, "alarms", "alarms", "1"),
    _Step(EvictionClass.SENT, "readings", "readings", _FROZEN),
    _Step(EvictionClass.SNAPSHOT, "readings", "readings", _SNAPSHOT),
    _Step(EvictionClass.EVENT, "events", "events", "1"),
    _Step(EvictionClass.EVENT, "ledger_changes", "ledger", "1"),
    _Step(EvictionClass.EVENT, "readings", "readings", _EVENT_KIND),
    _Step(EvictionClass.FROZEN, "readings", "readings", _FROZEN),
    _Step(EvictionClass.FROZEN, "alarms", "alarms", "1"),
)

# A record is sent when it was cut (at or below the cursor) and no open batch covers it: open
# batches are those not acknowledged yet, and those a resend reopened over old records.
_SENT: Final = (
    " AND id <= (SELECT taken FROM outbox_cursor WHERE stream = ?) AND NOT EXISTS ("
    "SELECT 1 FROM outbox_batches b WHERE b.stream = ? AND b.first_id <= {table}.id "
    "AND b.last_id >= {table}.id)"
)
#: bytes the spool uses: its pages in use, and the JSON of prepared batches (spool.prepared)
USED_BYTES: Final = (
    "SELECT ((SELECT page_count FROM pragma_page_count()) "
    "- (SELECT freelist_count FROM pragma_freelist_count())) "
    "* (SELECT page_size FROM pragma_page_size()) "
    "+ (SELECT coalesce(sum(size), 0) FROM outbox_prepared)"
)
_ROWS: Final = (
    "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM events) "
    "+ (SELECT count(*) FROM alarms) + (SELECT count(*) FROM ledger_changes) "
    "+ (SELECT count(*) FROM ledger)"
)
_COUNT: Final = (
    "INSERT INTO spool_counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)


@dataclass(frozen=True, slots=True)
class EvictionReport:
    """One eviction run: why, how many records per class, and the used bytes around it."""

    reason: str  # "cap" or "full"
    evicted: Mapping[EvictionClass, int]
    used_before: int
    used_after: int
    max_bytes: int | None
    #: prepared batches whose JSON was dropped first (spool.prepared; no record lost)
    prepared_dropped: int = 0

    @property
    def total(self) -> int:
        return sum(self.evicted.values())

    @property
    def unsent(self) -> int:
        return self.total - self.evicted.get(EvictionClass.SENT, 0)


@dataclass(frozen=True, slots=True)
class CapsStatistics:
    """Counters for metrics. ``evicted`` is cumulative over the spool's life (persisted)."""

    max_bytes: int | None
    used_bytes: int
    evicted: Mapping[EvictionClass, int]
    eviction_runs: int
    full_errors: int


class Caps:
    """The size cap and disk-full relief of one :class:`~spool.store.Spool`."""

    def __init__(self, spool: Spool, max_bytes: int | None) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._spool = spool
        self.max_bytes = max_bytes
        self._busy = False
        self.eviction_runs = 0
        self.full_errors = 0
        self.last_report: EvictionReport | None = None

    async def used_bytes(self) -> int:
        rows = await self._spool._fetch(USED_BYTES)
        return int(rows[0][0])

    async def evicted(self) -> dict[EvictionClass, int]:
        """Records evicted so far, per class, over the spool's whole life."""
        counts = dict.fromkeys(EvictionClass, 0)
        rows = await self._spool._fetch(
            "SELECT name, value FROM spool_counters WHERE name LIKE 'evicted.%'"
        )
        for name, value in rows:
            klass = str(name).removeprefix("evicted.")
            if klass in EvictionClass._value2member_map_:
                counts[EvictionClass(klass)] = int(value)
        return counts

    async def statistics(self) -> CapsStatistics:
        return CapsStatistics(
            max_bytes=self.max_bytes,
            used_bytes=await self.used_bytes(),
            evicted=MappingProxyType(await self.evicted()),
            eviction_runs=self.eviction_runs,
            full_errors=self.full_errors,
        )

    # -- entry points ----------------------------------------------------------------------

    async def after_write(self) -> EvictionReport | None:
        """Called by the store after each committed record write: enforce the cap if set."""
        if self.max_bytes is None or self._busy:
            return None
        try:
            return await self.enforce()
        except SpoolUnavailableError as exc:
            # The write that got us here is committed; a busy or full disk during eviction is
            # retried after the next write, not reported as that write's failure.
            log.warning("spool eviction postponed: %s", exc)
            return None

    async def enforce(self) -> EvictionReport | None:
        """Bring the used size down to ``LOW_WATER x max_bytes`` when it is above the cap."""
        if self.max_bytes is None or self._busy:
            return None
        used = await self.used_bytes()
        if used <= self.max_bytes:
            return None
        return await self._run("cap", used, int(self.max_bytes * LOW_WATER))

    async def relieve_full(self, exc: SpoolFullError) -> bool:
        """After ``SQLITE_FULL``: count it, free a slice of pages; True if anything was freed."""
        self.full_errors += 1
        if self._busy:
            return False
        log.warning("spool full (%d so far): evicting to make room: %s", self.full_errors, exc)
        used = await self.used_bytes()
        page_size = int((await self._spool._fetch("PRAGMA page_size"))[0][0])
        relief = max(int(used * _FULL_RELIEF), _MIN_RELIEF_PAGES * page_size)
        try:
            report = await self._run("full", used, used - relief)
        except SpoolFullError as again:
            self.full_errors += 1
            log.error("spool full and eviction could not run: %s", again)
            return False
        return report.total > 0 or report.prepared_dropped > 0

    # -- the eviction loop -----------------------------------------------------------------

    async def _run(self, reason: str, used: int, target: int) -> EvictionReport:
        self._busy = True
        try:
            before = used
            dropped, used = await self._drop_prepared(used)
            evicted = dict.fromkeys(EvictionClass, 0)
            per_row = await self._bytes_per_row(used)
            rounds = 0
            for step in _STEPS:
                while used > target and rounds < _MAX_ROUNDS:
                    rounds += 1
                    chunk = min(_MAX_CHUNK, max(_MIN_CHUNK, math.ceil((used - target) / per_row)))
                    deleted = await self._evict(step, chunk)
                    if not deleted:
                        break
                    evicted[step.klass] += deleted
                    used = await self.used_bytes()
                if used <= target:
                    break
            report = EvictionReport(
                reason, MappingProxyType(evicted), before, used, self.max_bytes, dropped
            )
            self.eviction_runs += 1
            self.last_report = report
            await self._report(report)
            return report
        finally:
            self._busy = False

    async def _drop_prepared(self, used: int) -> tuple[int, int]:
        """Before any record goes: drop every prepared batch's JSON (a cache of what the
        records render to; those batches are rendered again when sent). Return how many were
        dropped and the used bytes after it."""
        async with self._spool._transaction() as conn:
            cursor = await conn.execute(TOTALS)
            row = await cursor.fetchone()
            count, size = (0, 0) if row is None else (int(row[0]), int(row[1]))
            if count:
                await conn.execute("DELETE FROM outbox_prepared")
                await conn.execute(_COUNT, ("prepared.dropped", count))
        if not count:
            return 0, used
        log.info(
            "spool at its cap: dropped %d prepared batch(es) (%s bytes); they are rendered again"
            " when sent", count, f"{size:,}",
        )  # fmt: skip
        for sweep in list(self._spool._sweepers):
            try:
                await sweep()
            except SpoolUnavailableError as exc:
                log.warning("prepared segment files not removed yet: %s", exc)
        return count, await self.used_bytes()

    async def _bytes_per_row(self, used: int) -> float:
        rows = int((await self._spool._fetch(_ROWS))[0][0])
        return max(64.0, used / max(rows, 1))

    async def _evict(self, step: _Step, chunk: int) -> int:
        """Delete up to ``chunk`` of the oldest rows of one step; return how many went."""
        async with self._spool._transaction() as conn:
            bound_clause = ""
            params: list[object] = []
            if step.klass is EvictionClass.SENT:
                bound_clause = _SENT.format(table=step.table)
                params.extend((step.stream, step.stream))
            params.append(chunk)
            # Table names and conditions come from _STEPS above; every value is bound.
            cursor = await conn.execute(
                f"DELETE FROM {step.table} WHERE id IN (SELECT id FROM {step.table} "  # noqa: S608
                f"WHERE {step.where}{bound_clause} ORDER BY id LIMIT ?)",
                params,
            )
            deleted = cursor.rowcount
            if deleted and step.klass is not EvictionClass.SENT:
                # A batch whose every record was evicted has nothing left to deliver.
                await conn.execute(
                    "DELETE FROM outbox_batches WHERE stream = ? AND NOT EXISTS ("  # noqa: S608
                    f"SELECT 1 FROM {step.table} t WHERE t.id BETWEEN first_id AND last_id)",
                    (step.stream,),
                )
            if deleted:
                await conn.execute(_COUNT, (f"evicted.{step.klass.value}", deleted))
            return deleted

    async def _report(self, report: EvictionReport) -> None:
        cap = "none" if report.max_bytes is None else f"{report.max_bytes:,}"
        for klass, n in report.evicted.items():
            if n:
                level = logging.INFO if klass is EvictionClass.SENT else logging.WARNING
                log.log(
                    level,
                    "spool %s: evicted %d %s record(s); used %s -> %s bytes (cap %s)",
                    "over its cap" if report.reason == "cap" else "full",
                    n, klass.value, f"{report.used_before:,}", f"{report.used_after:,}", cap,
                )  # fmt: skip
        if report.total == 0 and not report.prepared_dropped:
            log.error(
                "spool %s but nothing is left to evict (used %s bytes, cap %s)",
                "over its cap" if report.reason == "cap" else "full",
                f"{report.used_after:,}", cap,
            )  # fmt: skip
        if report.unsent:
            await self._raise_alarm(report)

    async def _raise_alarm(self, report: EvictionReport) -> None:
        now = self._spool.clock.now().astimezone(UTC)
        hour = now.replace(minute=0, second=0, microsecond=0)
        frozen = report.evicted.get(EvictionClass.FROZEN, 0)
        alarm = Alarm(
            meter="",
            type=EVICTION_ALARM,
            window_start=hour,
            window_end=hour + timedelta(hours=1),
            raised=now,
            severity=Severity.MAJOR if frozen else Severity.WARNING,
            details={
                "reason": report.reason,
                "evicted": {k.value: n for k, n in report.evicted.items()},
                "used_bytes_before": report.used_before,
                "used_bytes_after": report.used_after,
                "max_bytes": report.max_bytes,
            },
        )
        # Still inside _run (``_busy`` is set), so the alarm's own write cannot start another run.
        try:
            await self._spool.write_alarms([alarm])
        except SpoolUnavailableError as exc:
            log.error("could not record the eviction alarm: %s", exc)
