"""Read-only access to a spool file, safe while the daemon writes it (``amigw spool``/``ledger``).

The file is opened with a ``file:...?mode=ro`` URI through plain ``sqlite3``: no migration, no
``quick_check``, no write of any kind. Under WAL a reader sees the last committed state and
never blocks the writer (a write transaction in progress is simply not visible). The schema
version is checked first: a file this code does not know raises :class:`SpoolVersionError`
rather than being misread; a missing file raises :class:`SpoolUnavailableError` (SQLite would
otherwise create an empty database for a mistyped path in read-write mode, and fail cryptically
in read-only mode).

Readings come back as :class:`~spool.records.Reading` through the same codec the store uses,
so an exported value is the stored ``Decimal``, digit for digit.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

from spool import codec
from spool.errors import SpoolError, SpoolUnavailableError, SpoolVersionError, translate
from spool.prepared import TOTALS, directory_of
from spool.records import LedgerEntry, Reading
from spool.schema import SCHEMA_VERSION
from spool.streams import STREAM_ORDER, TABLES, Stream

# When each stream's records were made (what the age of the oldest unsent one is measured from);
# the same columns the outbox's statistics use.
_MADE: Final[Mapping[Stream, str]] = MappingProxyType(
    {
        Stream.READINGS: "read_time",
        Stream.EVENTS: "event_time",
        Stream.ALARMS: "raised",
        Stream.LEDGER: "updated",
    }
)
# How each stream's records are named in a listing: their natural key columns.
_KEY: Final[Mapping[Stream, str]] = MappingProxyType(
    {
        Stream.READINGS: "meter || '/' || di || '/' || data_time",
        Stream.EVENTS: "source || '/' || type || '/' || subject || '/' || event_time",
        Stream.ALARMS: "CASE meter WHEN '' THEN '-' ELSE meter END || '/' || type || '/' "
        "|| window_start",
        Stream.LEDGER: "meter || '/' || day || '/' || item || '=' || state",
    }
)
_READING_COLUMNS: Final = (
    "meter, di, data_epoch, data_time, read_time, kind, quality, source, value_json"
)
# Offsets run from -12:00 to +14:00: a data time on local day D lies within these bounds of
# D's UTC midnight, so the epoch index narrows the scan before the local date is compared.
_BEFORE: Final = 14 * 3600
_AFTER: Final = 12 * 3600 + 86400
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TableStats:
    rows: int
    #: pages of the table and its indexes (``None`` when SQLite lacks the dbstat table)
    bytes: int | None


@dataclass(frozen=True, slots=True)
class StreamDepth:
    """Outbox depth of one stream: records in open batches and records not yet batched."""

    in_batches: int
    waiting: int
    oldest_unsent: datetime | None

    @property
    def unsent(self) -> int:
        return self.in_batches + self.waiting


@dataclass(frozen=True, slots=True)
class InspectStatistics:
    path: str
    schema_version: int
    files: Mapping[str, int]  # "db", "wal", "shm" -> bytes on disk
    tables: Mapping[str, TableStats]
    readings_by_kind: Mapping[str, int]
    outbox: Mapping[Stream, StreamDepth]
    open_batches: int
    last_seq: int
    evicted: Mapping[str, int]
    #: open batches written ahead while the broker was away (spool.prepared), and their bytes
    prepared_batches: int = 0
    prepared_bytes: int = 0

    @property
    def oldest_unsent(self) -> datetime | None:
        times = [d.oldest_unsent for d in self.outbox.values() if d.oldest_unsent is not None]
        return min(times) if times else None


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """An open (unacknowledged) batch and the natural keys of its first and last record
    (``None`` when that record has been evicted since the batch was cut)."""

    seq: int
    stream: Stream
    records: int
    present: int
    created: datetime
    first_key: str | None
    last_key: str | None


class SpoolReader:
    """A read-only view of a spool file. Use as a context manager, or :meth:`close` it."""

    def __init__(self, conn: sqlite3.Connection, path: Path, version: int) -> None:
        self._conn = conn
        self.path = path
        self.schema_version = version

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> SpoolReader:
        file = Path(path)
        if not file.is_file():
            raise SpoolUnavailableError(file, "no spool file here")
        uri = f"{file.resolve().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise translate(exc, file) from exc
        try:
            version = _version(conn, file)
        except BaseException:
            conn.close()
            raise
        return cls(conn, file, version)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    def _has(self, table: str) -> bool:
        rows = self._fetch(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
        )
        return bool(rows)

    # -- statistics ------------------------------------------------------------------------

    def statistics(self) -> InspectStatistics:
        """Rows and bytes per table, readings per kind, outbox depth, evictions, file sizes.

        Read in one read transaction, so the counts agree with each other.
        """
        self._fetch("BEGIN")
        try:
            return self._statistics()
        finally:
            self._fetch("COMMIT")

    def _statistics(self) -> InspectStatistics:
        names = [
            str(r[0])
            for r in self._fetch(
                "SELECT name FROM sqlite_schema WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        sizes = self._table_bytes()
        tables = {
            name: TableStats(
                int(self._fetch(f'SELECT count(*) FROM "{name}"')[0][0]),  # noqa: S608
                None if sizes is None else sizes.get(name, 0),
            )
            for name in names
        }
        kinds = {
            str(k): int(n)
            for k, n in self._fetch(
                "SELECT kind, count(*) FROM readings GROUP BY kind ORDER BY kind"
            )
        }
        outbox: dict[Stream, StreamDepth] = {}
        open_batches = last_seq = prepared_batches = prepared_bytes = 0
        evicted: dict[str, int] = {}
        if self._has("outbox_prepared"):
            count, size = self._fetch(TOTALS)[0]
            prepared_batches, prepared_bytes = int(count), int(size)
        if self._has("outbox_batches"):
            for stream in STREAM_ORDER:
                outbox[stream] = self._depth(stream)
            open_batches = int(self._fetch("SELECT count(*) FROM outbox_batches")[0][0])
            seq = self._fetch("SELECT seq FROM sqlite_sequence WHERE name = 'outbox_batches'")
            last_seq = int(seq[0][0]) if seq else 0
            evicted = {
                str(name).removeprefix("evicted."): int(value)
                for name, value in self._fetch(
                    "SELECT name, value FROM spool_counters WHERE name LIKE 'evicted.%' "
                    "ORDER BY name"
                )
            }
        files = {
            label: _size(f"{self.path}{suffix}")
            for label, suffix in (("db", ""), ("wal", "-wal"), ("shm", "-shm"))
        }
        files["prepared"] = _directory_size(directory_of(Path(self.path)))
        return InspectStatistics(
            path=str(self.path),
            schema_version=self.schema_version,
            files=MappingProxyType(files),
            tables=MappingProxyType(tables),
            readings_by_kind=MappingProxyType(kinds),
            outbox=MappingProxyType(outbox),
            open_batches=open_batches,
            last_seq=last_seq,
            evicted=MappingProxyType(evicted),
            prepared_batches=prepared_batches,
            prepared_bytes=prepared_bytes,
        )

    def _table_bytes(self) -> dict[str, int] | None:
        try:
            rows = self._conn.execute(
                "SELECT coalesce(s.tbl_name, d.name), sum(d.pgsize) FROM dbstat AS d "
                "LEFT JOIN sqlite_schema AS s ON s.name = d.name GROUP BY 1"
            ).fetchall()
        except sqlite3.OperationalError:
            return None  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
        return {str(name): int(size) for name, size in rows}

    def _depth(self, stream: Stream) -> StreamDepth:
        table = TABLES[stream]
        cursor = self._fetch("SELECT taken FROM outbox_cursor WHERE stream = ?", (stream.value,))
        taken = int(cursor[0][0])
        first = self._fetch(
            "SELECT coalesce((SELECT min(first_id) FROM outbox_batches WHERE stream = ?), ? + 1)",
            (stream.value, taken),
        )[0][0]
        # Only constant table and column names from this module are interpolated.
        waiting, made = self._fetch(
            f"SELECT count(*) FILTER (WHERE id > ?), "  # noqa: S608
            f"(SELECT {_MADE[stream]} FROM {table} WHERE id >= ? ORDER BY id LIMIT 1) "
            f"FROM {table} WHERE id >= ?",
            (taken, first, first),
        )[0]
        in_batches = self._fetch(
            f"SELECT count(*) FROM {table} AS t JOIN outbox_batches AS b "  # noqa: S608
            "ON b.stream = ? AND t.id BETWEEN b.first_id AND b.last_id",
            (stream.value,),
        )[0][0]
        oldest = None if made is None else _aware(datetime.fromisoformat(made))
        return StreamDepth(int(in_batches), int(waiting), oldest)

    # -- the outbox ------------------------------------------------------------------------

    def pending(self) -> list[PendingBatch]:
        """Open batches, oldest ``seq`` first (the order the uplink resends them in)."""
        if not self._has("outbox_batches"):
            return []
        self._fetch("BEGIN")
        try:
            rows = self._fetch(
                "SELECT seq, stream, first_id, last_id, records, created_us "
                "FROM outbox_batches ORDER BY seq"
            )
            out = []
            for seq, stream_text, first_id, last_id, records, created_us in rows:
                stream = Stream(stream_text)
                table, key = TABLES[stream], _KEY[stream]
                present = self._fetch(
                    f"SELECT count(*) FROM {table} WHERE id BETWEEN ? AND ?",  # noqa: S608
                    (first_id, last_id),
                )[0][0]
                out.append(
                    PendingBatch(
                        seq=int(seq),
                        stream=stream,
                        records=int(records),
                        present=int(present),
                        created=_EPOCH + timedelta(microseconds=int(created_us)),
                        first_key=self._key(table, key, first_id),
                        last_key=self._key(table, key, last_id),
                    )
                )
            return out
        finally:
            self._fetch("COMMIT")

    def _key(self, table: str, key: str, row_id: int) -> str | None:
        rows = self._fetch(f"SELECT {key} FROM {table} WHERE id = ?", (row_id,))  # noqa: S608
        return str(rows[0][0]) if rows else None

    # -- readings --------------------------------------------------------------------------

    def _reading_filter(
        self, meters: Sequence[str], first: date | None, last: date | None
    ) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if meters:
            where.append(f"meter IN ({', '.join('?' * len(meters))})")
            params += list(meters)
        # The local date of the data time is the date the meter stated: the text's first ten
        # characters (it keeps the meter's own offset).
        if first is not None:
            where.append("data_epoch >= ? AND substr(data_time, 1, 10) >= ?")
            params += [_midnight(first) - _BEFORE, first.isoformat()]
        if last is not None:
            where.append("data_epoch < ? AND substr(data_time, 1, 10) <= ?")
            params += [_midnight(last) + _AFTER, last.isoformat()]
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def count_readings(
        self, meters: Sequence[str] = (), first: date | None = None, last: date | None = None
    ) -> int:
        clause, params = self._reading_filter(meters, first, last)
        return int(self._fetch(f"SELECT count(*) FROM readings{clause}", params)[0][0])  # noqa: S608

    def readings(
        self, meters: Sequence[str] = (), first: date | None = None, last: date | None = None
    ) -> Iterator[Reading]:
        """Readings of these meters (all when empty) whose data time falls on a local date
        from ``first`` to ``last`` (both inclusive), by meter, DI and data time."""
        clause, params = self._reading_filter(meters, first, last)
        sql = (
            f"SELECT {_READING_COLUMNS} FROM readings{clause} "  # noqa: S608
            "ORDER BY meter, di, data_epoch"
        )
        try:
            cursor = self._conn.execute(sql, params)
            for row in cursor:
                yield codec.row_reading(row)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    # -- the collection ledger -------------------------------------------------------------

    def ledger(self, day: date) -> list[LedgerEntry]:
        rows = self._fetch(
            "SELECT meter, day, item, state, attempts, reason, next_attempt, updated "
            "FROM ledger WHERE day = ? ORDER BY meter, item",
            (day.isoformat(),),
        )
        return [codec.row_ledger(row) for row in rows]

    def ledger_days(self) -> list[date]:
        rows = self._fetch("SELECT DISTINCT day FROM ledger ORDER BY day")
        return [date.fromisoformat(str(r[0])) for r in rows]


def _version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {
            str(r[0]) for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        }
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc
    if version > SCHEMA_VERSION:
        raise SpoolVersionError(
            path,
            f"schema version {version} is newer than this amigw knows ({SCHEMA_VERSION}); "
            "inspect it with the amigw that wrote it",
        )
    if version < 1 or not {"readings", "ledger"} <= tables:
        raise SpoolError(path, f"not an amigw spool (schema version {version}, no readings table)")
    return version


def _midnight(day: date) -> int:
    return int((datetime(day.year, day.month, day.day, tzinfo=UTC) - _EPOCH).total_seconds())


def _aware(moment: datetime) -> datetime:
    # Ledger times are stored as UTC text with a "Z"; others carry their offset.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _directory_size(directory: Path) -> int:
    """Bytes of the files in ``directory`` (0 when it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    return sum(_size(str(directory / name)) for name in names)
