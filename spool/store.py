"""The :class:`Spool`: one SQLite file on flash, opened safely, written in whole transactions.

Durability choices (power cuts are the normal failure on collector hardware): WAL journal,
``synchronous=FULL`` (every commit is fsynced before it returns), ``quick_check`` at open, and
every write API is a single ``BEGIN IMMEDIATE … COMMIT`` (a cancelled write is wholly committed
or wholly rolled back, never left open). After a kill or power cut SQLite
replays the committed WAL frames at open and ignores torn or garbage frames; a stale ``-shm``
is rebuilt.

One connection, one asyncio lock: every statement (reads included) runs under the lock, so a
reader can never observe another task's uncommitted rows, and transactions never interleave.

Every record write goes through :meth:`Spool._write`: on ``SQLITE_FULL`` it has
:class:`~spool.caps.Caps` evict by value and retries once, counts the failure, and raises
:class:`SpoolFullError` only when nothing could be freed or the retry fails too (nothing is
ever dropped silently); after a commit it wakes :meth:`wait_written` waiters (the uplink) and
lets the caps check the size cap.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self, TypeVar

import aiosqlite

from spool import codec
from spool.caps import Caps
from spool.errors import (
    SpoolClosedError,
    SpoolCorruptError,
    SpoolError,
    SpoolFullError,
    translate,
)
from spool.records import (
    Alarm,
    Clock,
    Event,
    LedgerEntry,
    LedgerState,
    LedgerSummary,
    Reading,
    ReadingKind,
    SpoolStatistics,
)
from spool.schema import check_sqlite_version, migrate

DEFAULT_BUSY_TIMEOUT: Final = 5.0
# After a checkpoint the WAL is truncated back to this size rather than left at its high-water
# mark, so one burst (a catch-up day) does not pin flash space forever.
_JOURNAL_SIZE_LIMIT: Final = 16 * 1024 * 1024

_INSERT_READING: Final = (
    "INSERT INTO readings "
    "(meter, di, data_epoch, data_time, read_time, kind, quality, source, value_json) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_SELECT_READINGS: Final = (
    "SELECT meter, di, data_epoch, data_time, read_time, kind, quality, source, value_json "
    "FROM readings"
)
_INSERT_LEDGER: Final = (
    "INSERT INTO ledger (meter, day, item, state, attempts, reason, next_attempt, updated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_UPSERT_LEDGER: Final = (
    "INSERT INTO ledger (meter, day, item, state, attempts, reason, next_attempt, updated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (meter, day, item) DO UPDATE SET state = excluded.state, "
    "attempts = excluded.attempts, reason = excluded.reason, "
    "next_attempt = excluded.next_attempt, updated = excluded.updated"
)
_SELECT_LEDGER: Final = (
    "SELECT meter, day, item, state, attempts, reason, next_attempt, updated FROM ledger"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (source, type, subject, event_us, event_time, details) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_SELECT_EVENTS: Final = "SELECT source, type, subject, event_us, event_time, details FROM events"
_INSERT_ALARM: Final = (
    "INSERT INTO alarms "
    "(meter, type, window_us, window_start, window_end, raised, severity, details) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_SELECT_ALARMS: Final = (
    "SELECT meter, type, window_us, window_start, window_end, raised, severity, details FROM alarms"
)
_RATE_PLACES: Final = Decimal("0.0001")

T = TypeVar("T")


class _SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class Spool:
    """The durable store. Create with :meth:`open` or :meth:`connect`; always close it."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        version: int,
        *,
        max_bytes: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self._path = path
        self._version = version
        self._lock = asyncio.Lock()
        self._written = asyncio.Event()
        self._write_count = 0
        # Helpers holding their own connection to this file (the outbox's reader) register
        # their close here, so closing the spool never leaves a worker thread behind.
        self._dependents: list[Callable[[], Awaitable[None]]] = []
        # Called by the caps after dropping prepared batches (the outbox removes their files).
        self._sweepers: list[Callable[[], Awaitable[int]]] = []
        self.clock: Clock = clock or _SystemClock()
        #: size cap, eviction by value and disk-full relief (see :mod:`spool.caps`)
        self.caps = Caps(self, max_bytes)

    # -- opening and closing -------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        quick_check: bool = True,
        max_bytes: int | None = None,
        clock: Clock | None = None,
    ) -> Spool:
        """Open (creating and migrating if needed) the spool at ``path``.

        ``max_bytes`` caps the pages in use (see :class:`~spool.caps.Caps`; ``None``: no cap,
        though a full disk is still relieved by eviction). ``clock`` stamps eviction alarms.
        Raises :class:`SpoolCorruptError` when the file is damaged, :class:`SpoolVersionError`
        when it is newer than this code, :class:`SpoolUnavailableError` when it cannot be
        opened or stays locked past ``busy_timeout`` seconds.
        """
        file = Path(path)
        check_sqlite_version(file)
        pending = aiosqlite.connect(file, isolation_level=None, timeout=busy_timeout)
        try:
            conn = await pending
        except sqlite3.Error as exc:
            await _reap_worker(pending)
            raise translate(exc, file) from exc
        try:
            try:
                await _configure(conn, file, busy_timeout)
                if quick_check:
                    await _quick_check(conn, file)
                version = await migrate(conn, file)
            except sqlite3.Error as exc:
                raise translate(exc, file) from exc
        except BaseException:
            await conn.close()
            raise
        return cls(conn, file, version, max_bytes=max_bytes, clock=clock)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        quick_check: bool = True,
        max_bytes: int | None = None,
        clock: Clock | None = None,
    ) -> AsyncIterator[Spool]:
        """``async with Spool.connect(path) as spool:`` — opened, and closed on the way out."""
        spool = await cls.open(
            path,
            busy_timeout=busy_timeout,
            quick_check=quick_check,
            max_bytes=max_bytes,
            clock=clock,
        )
        try:
            yield spool
        finally:
            await spool.close()

    async def close(self) -> None:
        """Close dependents (an outbox's reader), wait for the transaction in progress, then
        close. Idempotent."""
        dependents, self._dependents = self._dependents, []
        for close in dependents:
            await close()
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    await conn.close()
                except sqlite3.Error as exc:
                    raise translate(exc, self._path) from exc

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def schema_version(self) -> int:
        return self._version

    @property
    def closed(self) -> bool:
        return self._conn is None

    # -- the seam: every statement goes through one of these two -----------------------------

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise SpoolClosedError(self._path, "the spool is closed")
        return self._conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            conn = self._require()
            try:
                try:
                    # BEGIN sits inside the rollback guard: a task cancelled while awaiting it
                    # has still queued it, so the transaction opens and must be undone.
                    await conn.execute("BEGIN IMMEDIATE")
                    yield conn
                    await conn.commit()
                except BaseException:
                    # Even when cancelled, the ROLLBACK is queued on aiosqlite's worker thread
                    # before this task can be interrupted, and that thread runs strictly in
                    # order, so the statement in flight finishes and is then undone (and it
                    # is a no-op when no transaction is open, e.g. after COMMIT or a failed BEGIN).
                    await conn.rollback()
                    raise
            except sqlite3.Error as exc:
                raise translate(exc, self._path) from exc

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        async with self._lock:
            conn = self._require()
            try:
                return list(await conn.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                raise translate(exc, self._path) from exc

    async def _write(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction; on a full disk evict by value and retry once."""
        try:
            async with self._transaction() as conn:
                result = await work(conn)
        except SpoolFullError as exc:
            if not await self.caps.relieve_full(exc):
                raise
            try:
                async with self._transaction() as conn:
                    result = await work(conn)
            except SpoolFullError:
                self.caps.full_errors += 1
                raise
        self._write_count += 1
        self._written.set()
        await self.caps.after_write()
        return result

    # -- change notification -------------------------------------------------------------------

    @property
    def write_count(self) -> int:
        """How many record writes (readings, ledger, events, alarms) committed since open."""
        return self._write_count

    async def wait_written(self, seen: int) -> int:
        """Return :attr:`write_count` once it is above ``seen`` (a commit happened since)."""
        while self._write_count <= seen:
            self._written.clear()
            await self._written.wait()
        return self._write_count

    # -- readings ------------------------------------------------------------------------------

    async def write_readings(self, readings: Sequence[Reading]) -> int:
        """Write all readings in one transaction; return how many were new.

        A reading whose natural key is already stored is skipped and the stored row is kept.
        """
        rows = [codec.reading_row(r) for r in readings]
        if not rows:
            return 0

        async def work(conn: aiosqlite.Connection) -> int:
            return (await conn.executemany(_INSERT_READING, rows)).rowcount

        return await self._write(work)

    async def commit_collection(
        self, readings: Sequence[Reading], ledger_updates: Sequence[LedgerEntry]
    ) -> int:
        """Write readings and upsert ledger entries atomically; return how many readings were new.

        Either both land or neither does, so a ledger entry is never ``done`` without its
        readings, nor are readings stored while their entry still says ``pending``.
        """
        reading_rows = [codec.reading_row(r) for r in readings]
        ledger_rows = [codec.ledger_row(e) for e in ledger_updates]

        async def work(conn: aiosqlite.Connection) -> int:
            new = 0
            if reading_rows:
                new = (await conn.executemany(_INSERT_READING, reading_rows)).rowcount
            if ledger_rows:
                await conn.executemany(_UPSERT_LEDGER, ledger_rows)
            return new

        return await self._write(work)

    async def readings(
        self,
        *,
        meter: str | None = None,
        di: str | None = None,
        kind: ReadingKind | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[Reading]:
        """Readings matching every given filter, ordered by data time, then meter, then DI.

        ``since`` is inclusive and ``until`` exclusive (aware datetimes, any offset).
        """
        where: list[str] = []
        params: list[Any] = []
        if meter is not None:
            where.append("meter = ?")
            params.append(meter)
        if di is not None:
            where.append("di = ?")
            params.append(di)
        if kind is not None:
            where.append("kind = ?")
            params.append(ReadingKind(kind).value)
        if since is not None:
            where.append("data_epoch >= ?")
            params.append(codec.epoch_seconds_ceil(codec.require_aware("since", since)))
        if until is not None:
            where.append("data_epoch < ?")
            params.append(codec.epoch_seconds_ceil(codec.require_aware("until", until)))
        params.append(-1 if limit is None else limit)
        sql = _query(_SELECT_READINGS, where, "ORDER BY data_epoch, meter, di LIMIT ?")
        return [codec.row_reading(row) for row in await self._fetch(sql, params)]

    async def latest(self, meter: str, di: str) -> Reading | None:
        """The reading with the latest data time for this meter and DI, if any."""
        sql = _query(_SELECT_READINGS, ["meter = ?", "di = ?"], "ORDER BY data_epoch DESC LIMIT 1")
        rows = await self._fetch(sql, (meter, di))
        return codec.row_reading(rows[0]) if rows else None

    async def count_readings(self) -> int:
        rows = await self._fetch("SELECT COUNT(*) FROM readings")
        return int(rows[0][0])

    # -- collection ledger ---------------------------------------------------------------------

    async def ensure_ledger(self, entries: Iterable[LedgerEntry]) -> int:
        """Insert the entries that do not exist yet (normally pending ones); leave existing
        entries untouched. Return how many were inserted."""
        rows = [codec.ledger_row(e) for e in entries]
        if not rows:
            return 0

        async def work(conn: aiosqlite.Connection) -> int:
            return (await conn.executemany(_INSERT_LEDGER, rows)).rowcount

        return await self._write(work)

    async def update_ledger(self, entries: Iterable[LedgerEntry]) -> None:
        """Insert or replace the entries by ``(meter, day, item)``, in one transaction."""
        rows = [codec.ledger_row(e) for e in entries]
        if not rows:
            return

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.executemany(_UPSERT_LEDGER, rows)

        await self._write(work)

    async def ledger(
        self,
        day: date | None = None,
        meter: str | None = None,
        state: LedgerState | None = None,
    ) -> list[LedgerEntry]:
        """Ledger entries matching every given filter, ordered by day, meter, item."""
        where: list[str] = []
        params: list[Any] = []
        if day is not None:
            where.append("day = ?")
            params.append(day.isoformat())
        if meter is not None:
            where.append("meter = ?")
            params.append(meter)
        if state is not None:
            where.append("state = ?")
            params.append(LedgerState(state).value)
        sql = _query(_SELECT_LEDGER, where, "ORDER BY day, meter, item")
        return [codec.row_ledger(row) for row in await self._fetch(sql, params)]

    async def due(self, now: datetime, limit: int | None = None) -> list[LedgerEntry]:
        """Pending or failed entries whose ``next_attempt`` is unset or not after ``now``,
        oldest day first (then meter, item)."""
        cutoff = codec.utc_text(codec.require_aware("now", now))
        # "state <> 'done'" (not "IN ('pending', 'failed')") so the partial index applies.
        sql = _query(
            _SELECT_LEDGER,
            ["state <> 'done'", "(next_attempt IS NULL OR next_attempt <= ?)"],
            "ORDER BY day, meter, item LIMIT ?",
        )
        rows = await self._fetch(sql, (cutoff, -1 if limit is None else limit))
        return [codec.row_ledger(row) for row in rows]

    async def ledger_summary(self, day: date) -> LedgerSummary:
        """Counts per state for ``day``; ``success_rate`` = done/total (see LedgerSummary)."""
        rows = await self._fetch(
            "SELECT state, COUNT(*) FROM ledger WHERE day = ? GROUP BY state", (day.isoformat(),)
        )
        counts = {LedgerState(state): int(n) for state, n in rows}
        pending = counts.get(LedgerState.PENDING, 0)
        done = counts.get(LedgerState.DONE, 0)
        failed = counts.get(LedgerState.FAILED, 0)
        total = pending + done + failed
        rate = (
            (Decimal(done) / Decimal(total)).quantize(_RATE_PLACES, ROUND_HALF_EVEN)
            if total
            else None
        )
        return LedgerSummary(day, pending, done, failed, rate)

    async def owing_meters(self, day: date) -> set[str]:
        """The meters with a pending or failed entry on ``day`` (from the open-entries index;
        no entry is decoded)."""
        rows = await self._fetch(
            "SELECT DISTINCT meter FROM ledger WHERE day = ? AND state <> 'done'",
            (day.isoformat(),),
        )
        return {str(meter) for (meter,) in rows}

    # -- events --------------------------------------------------------------------------------

    async def write_events(self, events: Sequence[Event]) -> int:
        """Write events in one transaction; return how many were new (duplicates are skipped)."""
        rows = [codec.event_row(e) for e in events]
        if not rows:
            return 0

        async def work(conn: aiosqlite.Connection) -> int:
            return (await conn.executemany(_INSERT_EVENT, rows)).rowcount

        return await self._write(work)

    async def events(
        self,
        since: datetime | None = None,
        type: str | None = None,
        *,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Events ordered by time; ``since`` inclusive, ``until`` exclusive."""
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("event_us >= ?")
            params.append(codec.epoch_micros(codec.require_aware("since", since)))
        if until is not None:
            where.append("event_us < ?")
            params.append(codec.epoch_micros(codec.require_aware("until", until)))
        if type is not None:
            where.append("type = ?")
            params.append(type)
        params.append(-1 if limit is None else limit)
        sql = _query(_SELECT_EVENTS, where, "ORDER BY event_us, id LIMIT ?")
        return [codec.row_event(row) for row in await self._fetch(sql, params)]

    # -- alarms --------------------------------------------------------------------------------

    async def write_alarms(self, alarms: Sequence[Alarm]) -> int:
        """Write alarms in one transaction; return how many were new (same key: skipped)."""
        rows = [codec.alarm_row(a) for a in alarms]
        if not rows:
            return 0

        async def work(conn: aiosqlite.Connection) -> int:
            return (await conn.executemany(_INSERT_ALARM, rows)).rowcount

        return await self._write(work)

    async def alarms(
        self,
        since: datetime | None = None,
        type: str | None = None,
        *,
        meter: str | None = None,
        limit: int | None = None,
    ) -> list[Alarm]:
        """Alarms ordered by window start (then as written); ``since`` is inclusive."""
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("window_us >= ?")
            params.append(codec.epoch_micros(codec.require_aware("since", since)))
        if type is not None:
            where.append("type = ?")
            params.append(type)
        if meter is not None:
            where.append("meter = ?")
            params.append(meter)
        params.append(-1 if limit is None else limit)
        sql = _query(_SELECT_ALARMS, where, "ORDER BY window_us, id LIMIT ?")
        return [codec.row_alarm(row) for row in await self._fetch(sql, params)]

    # -- statistics ----------------------------------------------------------------------------

    async def statistics(self) -> SpoolStatistics:
        """A frozen snapshot: rows per table, readings per kind, bytes on flash, schema version.

        Counting is a full scan of each table; poll it at metrics cadence, not per request.
        """
        rows = await self._fetch(
            "SELECT 'readings', COUNT(*) FROM readings UNION ALL "
            "SELECT 'ledger', COUNT(*) FROM ledger UNION ALL "
            "SELECT 'events', COUNT(*) FROM events"
        )
        by_kind = dict.fromkeys(ReadingKind, 0)
        for kind, n in await self._fetch("SELECT kind, COUNT(*) FROM readings GROUP BY kind"):
            by_kind[ReadingKind(kind)] = int(n)
        sizes = {suffix: _size(self._path, suffix) for suffix in ("", "-wal", "-shm")}
        return SpoolStatistics(
            path=str(self._path),
            schema_version=self._version,
            rows=MappingProxyType({str(table): int(n) for table, n in rows}),
            readings_by_kind=MappingProxyType(by_kind),
            file_bytes=sum(sizes.values()),
            wal_bytes=sizes["-wal"],
        )


def _query(select: str, where: Sequence[str], tail: str) -> str:
    # Only constant fragments written in this module are joined; every value is bound.
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"{select}{clause} {tail}"


async def _reap_worker(conn: aiosqlite.Connection) -> None:
    # On a failed connect aiosqlite stops its worker thread without waiting for it; if the loop
    # closes first (a daemon exiting on this very error) the thread dies with a second,
    # misleading traceback. Join it so the open error is the only thing reported.
    thread = getattr(conn, "_thread", None)
    if isinstance(thread, threading.Thread) and thread.is_alive():
        await asyncio.to_thread(thread.join, 5.0)


def _size(path: Path, suffix: str) -> int:
    try:
        return os.stat(f"{path}{suffix}").st_size
    except FileNotFoundError:
        return 0


async def _configure(conn: aiosqlite.Connection, path: Path, busy_timeout: float) -> None:
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000):d}")
    rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
    mode = str(rows[0][0]).lower()
    if mode != "wal":
        # WAL is refused on filesystems without shared memory support; FULL sync alone would
        # still be safe, but we promise WAL semantics (readers never block the writer).
        raise SpoolError(path, f"cannot switch the journal to WAL (got {mode!r})")
    await conn.execute("PRAGMA synchronous = FULL")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT:d}")


async def _quick_check(conn: aiosqlite.Connection, path: Path) -> None:
    problems = [str(row[0]) for row in await conn.execute_fetchall("PRAGMA quick_check(20)")]
    if problems != ["ok"]:
        shown = "; ".join(problems[:5])
        raise SpoolCorruptError(path, f"quick_check failed ({len(problems)} problems): {shown}")
