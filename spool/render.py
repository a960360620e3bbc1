"""Batches to JSON: each record rendered by SQLite from the stored columns, on a connection of
its own.

Rendering is what a drain of a large backlog is bound by, so it is done by SQLite (``printf``
over the columns, ``group_concat`` per batch) rather than by decoding rows into Python objects:
with no Python callback per row, SQLite works without the GIL, beside the event loop that
publishes. It reads through a second connection (opened on first use): in WAL mode a reader
never waits for the writer, so the next batches render while the spool's own connection is
busy committing (an fsync each) and the collector keeps writing.

Each record is one JSON object; values and event details keep the spool codec's exact decimals
``{"$dec": "3911.88"}``. The forms are documented in ``docs/uplink.md`` and pinned by the JSON
Schemas under ``etc/schema/``. DI names come from a lookup the caller gives (the spool does not
know the DI registry): SQLite writes a marker ``\\x01<DI>\\x01`` where the name goes (a raw
control character cannot occur anywhere else in JSON text) and the marker is replaced once per
batch, which costs a fraction of a per-row join.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Final

import aiosqlite

from spool.errors import translate
from spool.store import DEFAULT_BUSY_TIMEOUT, Spool
from spool.streams import TABLES, Batch, BatchRef, Stream

_MARK: Final = "\x01"


def _printf(template: str, columns: str) -> str:
    return f"printf('{template}', {columns})"


# Natural keys are JSON arrays (unambiguous whatever the text holds); instants in a key are UTC
# epoch seconds (readings) or microseconds (events, alarms), so one instant written with two
# offsets has one key. Columns written from enums or validated by CHECKs go in unquoted.
_RECORD: Final[Mapping[Stream, str]] = MappingProxyType(
    {
        Stream.READINGS: _printf(
            '{"key":["%s","%s",%d],"meter":"%s","di":"%s","name":%s,"kind":"%s",'
            '"data_time":"%s","read_time":"%s","quality":"%s","source":%s,"values":%s}',
            "r.meter, r.di, r.data_epoch, r.meter, r.di, char(1) || r.di || char(1), r.kind,"
            " r.data_time, r.read_time, r.quality, json_quote(r.source), r.value_json",
        ),
        Stream.EVENTS: _printf(
            '{"key":[%s,%s,%d,%s],"source":%s,"type":%s,"subject":%s,'
            '"event_time":"%s","details":%s}',
            "json_quote(r.source), json_quote(r.type), r.event_us, json_quote(r.subject),"
            " json_quote(r.source), json_quote(r.type), json_quote(r.subject), r.event_time,"
            " r.details",
        ),
        Stream.ALARMS: _printf(
            '{"key":["%s",%s,%d],"meter":"%s","type":%s,"window_start":"%s",'
            '"window_end":"%s","raised":"%s","severity":"%s","details":%s}',
            "r.meter, json_quote(r.type), r.window_us, r.meter, json_quote(r.type),"
            " r.window_start, r.window_end, r.raised, r.severity, r.details",
        ),
        Stream.LEDGER: _printf(
            '{"key":["%s","%s",%s,%d],"meter":"%s","day":"%s","item":%s,"state":"%s",'
            '"attempts":%d,"reason":%s,"next_attempt":%s,"updated":"%s","rev":%d}',
            "r.meter, r.day, json_quote(r.item), r.id, r.meter, r.day, json_quote(r.item),"
            " r.state, r.attempts, json_quote(r.reason), json_quote(r.next_attempt), r.updated,"
            " r.id",
        ),
    }
)
# Several batches in one statement: batches are the outer loop (by seq; CROSS JOIN fixes the
# order, and "+b.stream" keeps the planner off the stream index) and each one's records the
# inner loop (by id), so GROUP BY needs no sort and each group_concat sees its records in
# id order. Outbox checks that plan once and renders batch by batch if SQLite ever picks another.
#
# The whole result comes back as one row (batches separated by \x03, fields by \x02: neither
# can occur in JSON text). Python's sqlite3 releases the GIL while SQLite works and takes it back
# for every row it returns; with the event loop busy publishing, each of those hand-overs can
# wait out the interpreter's switch interval, so one row per call is much faster than one per
# batch.
_RENDER_MANY: Final = (
    "SELECT group_concat(seq || char(2) || n || char(2) || records, char(3)) FROM ("
    "SELECT b.seq AS seq, count(r.id) AS n, group_concat({record}, ',') AS records "
    "FROM outbox_batches b CROSS JOIN {table} r ON r.id BETWEEN b.first_id AND b.last_id "
    "WHERE +b.stream = ? AND b.seq BETWEEN ? AND ? GROUP BY b.seq ORDER BY b.seq)"
)
_RENDER_ONE: Final = (
    "SELECT count(r.id), group_concat({record}, ',') FROM ("
    "SELECT * FROM {table} WHERE id BETWEEN ? AND ? ORDER BY id) r"
)


class Renderer:
    """Renders batches of one :class:`~spool.store.Spool` through its own reader connection,
    closed with the spool (or by :meth:`close`)."""

    def __init__(self, spool: Spool, names: Callable[[str], str | None] | None = None) -> None:
        self._spool = spool
        self._names: Callable[[str], str | None] = names or _no_name
        self._reader: aiosqlite.Connection | None = None
        self._reader_lock = asyncio.Lock()
        self._grouped: dict[Stream, bool] = {}
        self._name_json: dict[str, str] = {}

    async def close(self) -> None:
        async with self._reader_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                try:
                    await reader.close()
                except sqlite3.Error as exc:
                    raise translate(exc, self._spool.path) from exc

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The reader connection, opened on first use; sqlite3 errors mapped."""
        async with self._reader_lock:
            try:
                if self._reader is None:
                    self._reader = await self._open_reader()
                yield self._reader
            except sqlite3.Error as exc:
                raise translate(exc, self._spool.path) from exc

    async def _open_reader(self) -> aiosqlite.Connection:
        self._spool._require()  # a closed spool is an error here too, not a fresh file
        conn = await aiosqlite.connect(self._spool.path, isolation_level=None)
        if self.close not in self._spool._dependents:
            self._spool._dependents.append(self.close)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(DEFAULT_BUSY_TIMEOUT * 1000):d}")
            for stream in Stream:
                plan = await conn.execute_fetchall(
                    "EXPLAIN QUERY PLAN " + _render_many(stream), (stream.value, 0, 0)
                )
                steps = " | ".join(str(row[-1]) for row in plan)
                self._grouped[stream] = "TEMP B-TREE" not in steps and (
                    "SEARCH r USING INTEGER PRIMARY KEY" in steps
                )
        except BaseException:
            await conn.close()
            raise
        return conn

    async def render(self, refs: Sequence[BatchRef]) -> list[Batch]:
        """The batches' records as JSON, read back by id range (for a first send or a resend),
        in the order of ``refs``. A batch no longer open renders with no records."""
        if not refs:
            return []
        rendered: dict[int, tuple[int, str]] = {}
        async with self._read() as conn:
            for stream in Stream:
                mine = [r for r in refs if r.stream is stream]
                if not mine:
                    continue
                if self._grouped[stream]:
                    low, high = min(r.seq for r in mine), max(r.seq for r in mine)
                    rows = list(
                        await conn.execute_fetchall(_render_many(stream), (stream.value, low, high))
                    )
                    joined = str(rows[0][0] or "") if rows else ""
                    for part in filter(None, joined.split("\x03")):
                        seq, n, text = part.split("\x02", 2)
                        rendered[int(seq)] = (int(n), text)
                    continue
                for ref in mine:
                    cursor = await conn.execute(_render_one(stream), (ref.first_id, ref.last_id))
                    row = await cursor.fetchone()
                    if row is not None and row[0]:
                        rendered[ref.seq] = (int(row[0]), row[1])
        out = []
        for ref in refs:
            count, text = rendered.get(ref.seq, (0, ""))
            out.append(
                Batch(ref, count, self._named(text) if ref.stream is Stream.READINGS else text)
            )
        return out

    def _named(self, text: str) -> str:
        """Replace each ``\\x01<DI>\\x01`` marker by the DI's name as JSON (or ``null``)."""
        if _MARK not in text:
            return text
        parts = text.split(_MARK)
        names = self._name_json
        for i in range(1, len(parts), 2):
            di = parts[i]
            name = names.get(di)
            if name is None:
                name = names[di] = json.dumps(self._names(di), ensure_ascii=False)
            parts[i] = name
        return "".join(parts)


def _no_name(di: str) -> str | None:
    return None


def _render_many(stream: Stream) -> str:
    return _RENDER_MANY.format(record=_RECORD[stream], table=TABLES[stream])


def _render_one(stream: Stream) -> str:
    return _RENDER_ONE.format(record=_RECORD[stream], table=TABLES[stream])
