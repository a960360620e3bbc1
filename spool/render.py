"""Batches to JSON: records rendered by SQLite from the stored columns, on the outbox's worker.

Rendering is what a drain of a large backlog is bound by, so it is done by SQLite (``printf``
over the columns, ``group_concat`` per batch) rather than by decoding rows into Python objects:
with no Python callback per row, SQLite works without the GIL, beside the event loop that
publishes. It runs on the outbox's worker thread and connection (:mod:`spool.worker`), right
after the cut that made the batches, so a window of batches costs one hand-over; in WAL mode
its reads never wait for the collector's writes on the spool's own connection.

Each record is one JSON object; values and event details keep the spool codec's exact decimals
``{"$dec": "3911.88"}``. The forms are documented in ``docs/uplink.md`` and pinned by the JSON
Schemas under ``etc/schema/``.

Readings are most of the volume, and most of a reading's JSON depends on four columns with few
distinct values (DI, kind, quality, source). So each such combination gets a printf format of
its own with those parts, the DI's name included, written in as literal text; a temporary table
on the worker's connection holds the formats, a primary-key lookup per row finds them, and
printf only fills in the six columns that vary. A combination seen for the first time (no
format yet) is counted by the render; the formats are then made in Python (the DI registry is
not the spool's) and the batches rendered again. The output is the same either way.

A whole group of batches comes back as one row: the batches' records as one UTF-8 blob and a
list of ``seq count bytes`` for each. Python's sqlite3 releases the GIL while SQLite works and
takes it back for every row it returns; with the event loop busy publishing, each of those
hand-overs can wait out the interpreter's switch interval, so one row per call is much faster
than one per batch. Batches are views into the blob: nothing is copied until the payload is
built.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from spool.streams import TABLES, Batch, BatchRef, Stream


def _printf(template: str, columns: str) -> str:
    return f"printf('{template}', {columns})"


# Natural keys are JSON arrays (unambiguous whatever the text holds); instants in a key are UTC
# epoch seconds (readings) or microseconds (events, alarms), so one instant written with two
# offsets has one key. Columns written from enums or validated by CHECKs go in unquoted.
_RECORD: Final[Mapping[Stream, str]] = MappingProxyType(
    {
        # The format comes from temp.reading_forms (see _reading_form); NULL when none exists.
        Stream.READINGS: "printf(f.form, r.meter, r.data_epoch, r.meter, r.data_time,"
        " r.read_time, r.value_json)",
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
# Per stream: the join that finds each record's format, and how many records had none.
_FORM_JOIN: Final[Mapping[Stream, str]] = MappingProxyType(
    {
        Stream.READINGS: "LEFT JOIN temp.reading_forms f "
        "ON (f.di, f.kind, f.quality, f.source) = (r.di, r.kind, r.quality, r.source)",
    }
)
_UNFORMED: Final[Mapping[Stream, str]] = MappingProxyType({Stream.READINGS: "sum(f.form IS NULL)"})
_CREATE_FORMS: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS reading_forms (di TEXT NOT NULL, kind TEXT NOT NULL,"
    " quality TEXT NOT NULL, source TEXT NOT NULL, form TEXT NOT NULL,"
    " PRIMARY KEY (di, kind, quality, source)) WITHOUT ROWID"
)
# The combinations of a group of batches that have no format yet.
_UNFORMED_KEYS: Final = (
    "SELECT DISTINCT r.di, r.kind, r.quality, r.source, json_quote(r.source) "  # noqa: S608
    "FROM outbox_batches b CROSS JOIN readings r ON r.id BETWEEN b.first_id AND b.last_id "
    f"{_FORM_JOIN[Stream.READINGS]} "
    "WHERE +b.stream = 'readings' AND b.seq BETWEEN ? AND ? AND f.form IS NULL"
)
#: formats kept at most (the table is emptied and refilled beyond it)
MAX_FORMS: Final = 4096
# Several batches in one statement: batches are the outer loop (by seq; CROSS JOIN fixes the
# order, and "+b.stream" keeps the planner off the stream index) and each one's records the
# inner loop (by id), so GROUP BY needs no sort and each group_concat sees its records in
# id order. Outbox checks that plan once and renders batch by batch if SQLite ever picks another.
# ``length(CAST(... AS BLOB))`` counts bytes, not characters.
_RENDER_MANY: Final = (
    "SELECT group_concat(seq || ' ' || n || ' ' || length(CAST(records AS BLOB)), ' '), "
    "CAST(group_concat(records, '') AS BLOB), sum(unformed) FROM ("
    "SELECT b.seq AS seq, count(r.id) AS n, {unformed} AS unformed, "
    "coalesce(group_concat({record}, ','), '') AS records "
    "FROM outbox_batches b CROSS JOIN {table} r ON r.id BETWEEN b.first_id AND b.last_id "
    "{join} WHERE +b.stream = ? AND b.seq BETWEEN ? AND ? GROUP BY b.seq ORDER BY b.seq)"
)
_RENDER_ONE: Final = (
    "SELECT count(r.id), CAST(group_concat({record}, ',') AS BLOB), {unformed} FROM ("
    "SELECT * FROM {table} WHERE id BETWEEN ? AND ? ORDER BY id) r {join}"
)


class Renderer:
    """Renders batches through a connection it is given (the outbox's worker connection; its
    methods run on that connection's thread). Each connection is prepared once: the formats
    table is created and the plan of the grouped statement checked."""

    def __init__(self, names: Callable[[str], str | None] | None = None) -> None:
        self._names: Callable[[str], str | None] = names or _no_name
        self._conn: sqlite3.Connection | None = None
        self._grouped: dict[Stream, bool] = {}
        self._forms = 0

    def prepare(self, conn: sqlite3.Connection) -> None:
        if conn is self._conn:
            return
        conn.execute(_CREATE_FORMS)
        conn.execute("DELETE FROM temp.reading_forms")
        self._forms = 0
        for stream in Stream:
            plan = conn.execute(
                "EXPLAIN QUERY PLAN " + _render_many(stream), (stream.value, 0, 0)
            ).fetchall()
            steps = " | ".join(str(row[-1]) for row in plan)
            self._grouped[stream] = "TEMP B-TREE" not in steps and (
                "SEARCH r USING INTEGER PRIMARY KEY" in steps
            )
        self._conn = conn

    def render(self, conn: sqlite3.Connection, refs: Sequence[BatchRef]) -> list[Batch]:
        """The batches' records as JSON, read back by id range (for a first send or a resend),
        in the order of ``refs``. A batch no longer open renders with no records."""
        if not refs:
            return []
        self.prepare(conn)
        rendered: dict[int, tuple[int, memoryview]] = {}
        for stream in Stream:
            mine = [r for r in refs if r.stream is stream]
            if not mine:
                continue
            # A new combination is formatted and the group rendered again: the second pass
            # finds every format (the first only ever misses formats, never rows).
            for _ in range(3):
                if not self._render_stream(conn, stream, mine, rendered):
                    break
                self._add_forms(conn, mine)
            else:
                raise sqlite3.OperationalError("reading formats could not be made")
        empty = memoryview(b"")
        out = []
        for ref in refs:
            count, records = rendered.get(ref.seq, (0, empty))
            out.append(Batch(ref, count, records))
        return out

    def _render_stream(
        self,
        conn: sqlite3.Connection,
        stream: Stream,
        refs: Sequence[BatchRef],
        rendered: dict[int, tuple[int, memoryview]],
    ) -> int:
        """Render ``refs`` (all of ``stream``) into ``rendered``; return how many records had
        no format yet (their batches are then incomplete and must be rendered again)."""
        if self._grouped[stream]:
            low, high = min(r.seq for r in refs), max(r.seq for r in refs)
            row = conn.execute(_render_many(stream), (stream.value, low, high)).fetchone()
            if row is None or row[0] is None:
                return 0
            index, blob, unformed = row
            view = memoryview(blob)
            numbers = [int(n) for n in str(index).split()]
            at = 0
            for i in range(0, len(numbers), 3):
                seq, count, size = numbers[i : i + 3]
                rendered[seq] = (count, view[at : at + size])
                at += size
            return int(unformed or 0)
        missing = 0
        for ref in refs:
            row = conn.execute(_render_one(stream), (ref.first_id, ref.last_id)).fetchone()
            if row is not None and row[0]:
                rendered[ref.seq] = (int(row[0]), memoryview(row[1] or b""))
                missing += int(row[2] or 0)
        return missing

    def _add_forms(self, conn: sqlite3.Connection, refs: Sequence[BatchRef]) -> None:
        low, high = min(r.seq for r in refs), max(r.seq for r in refs)
        keys = conn.execute(_UNFORMED_KEYS, (low, high)).fetchall()
        if self._forms + len(keys) > MAX_FORMS:
            conn.execute("DELETE FROM temp.reading_forms")
            self._forms = 0
            keys = conn.execute(_UNFORMED_KEYS, (low, high)).fetchall()
        rows = [(di, kind, quality, source, self._reading_form(di, kind, quality, source_json))
                for di, kind, quality, source, source_json in keys]  # fmt: skip
        conn.executemany("INSERT OR REPLACE INTO temp.reading_forms VALUES (?, ?, ?, ?, ?)", rows)
        self._forms += len(rows)

    def _reading_form(self, di: str, kind: str, quality: str, source_json: str) -> str:
        """The printf format of one (DI, kind, quality, source): fills in meter, data epoch,
        meter, data time, read time and values, in that order."""

        def lit(text: str) -> str:
            return text.replace("%", "%%")

        name = lit(json.dumps(self._names(di), ensure_ascii=False))
        di_text, kind_json = lit(json.dumps(di)), lit(json.dumps(kind, ensure_ascii=False))
        quality_json = lit(json.dumps(quality, ensure_ascii=False))
        return (
            f'{{"key":["%s",{di_text},%d],"meter":"%s","di":{di_text},"name":{name},'
            f'"kind":{kind_json},"data_time":"%s","read_time":"%s","quality":{quality_json},'
            f'"source":{lit(source_json)},"values":%s}}'
        )


def _no_name(di: str) -> str | None:
    return None


def _render_many(stream: Stream) -> str:
    return _RENDER_MANY.format(
        record=_RECORD[stream],
        table=TABLES[stream],
        join=_FORM_JOIN.get(stream, ""),
        unformed=_UNFORMED.get(stream, "0"),
    )


def _render_one(stream: Stream) -> str:
    return _RENDER_ONE.format(
        record=_RECORD[stream],
        table=TABLES[stream],
        join=_FORM_JOIN.get(stream, ""),
        unformed=_UNFORMED.get(stream, "0"),
    )
