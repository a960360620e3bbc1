"""The uplink outbox: which records are unsent per stream, batches with persistent sequence
numbers, acknowledgement, and the order batches are (re)sent in.

Four streams, each a table with an ``AUTOINCREMENT`` id (ids only grow, never reused):
``alarms``, ``events``, ``ledger`` (the ``ledger_changes`` log filled by triggers) and
``readings``. A record moves through three states:

* **waiting** — its id is above the stream's cursor (``outbox_cursor.taken``);
* **open** — a row of ``outbox_batches`` covers it: ``seq`` (global, persistent, never reused),
  the stream, and the contiguous id range ``first_id..last_id``;
* **sent** — its batch row was deleted on acknowledgement. Readings, events and alarms stay in
  their tables as the local history (and are the first to go when the cap is reached, see
  :mod:`spool.caps`); ledger change rows are deleted with their batch.

Crash semantics: :meth:`Outbox.take` cuts batches and moves the cursor in one transaction that
commits *before* any batch is handed out, so every batch that can reach the broker has a durable
sequence number and a fixed id range. After a crash or a reconnect the open batches are sent
again, oldest ``seq`` first, with the same numbers and (unless evicted meanwhile) the same
records: duplicates are whole batches, and every duplicated record carries the same natural key.
Acknowledgements may be committed late (the uplink groups them); a late commit only risks a
duplicate, never a loss.

A head-end that lost data asks for it again (:meth:`Outbox.requeue`): records of a range of
data times that were already cut (sent or open) get new batches over their ids, new numbers,
same records. Such batches cover only runs of ids that all match, so rendering by id range
sends nothing else; the cursor and the drain's "dense ids" state are left alone. The drain
hands them out with its next cut (:meth:`Outbox.take` also returns open batches numbered above
any this outbox knew of), and after a restart they are open batches like any other. While
one is open, statistics count its records as unsent (and the oldest unsent record is its
first), and eviction keeps them with the unsent ones.

Batches are turned into JSON by :mod:`spool.render`; the streams and batch records are in
:mod:`spool.streams` (re-exported here).
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Self, TypeVar

from spool import codec
from spool.caps import LOW_WATER, USED_BYTES
from spool.prepared import TOTALS, Prepared
from spool.render import Renderer
from spool.store import DEFAULT_BUSY_TIMEOUT, Spool
from spool.streams import STREAM_ORDER, TABLES, Batch, BatchRef, Stream
from spool.worker import Worker

__all__ = [
    "STREAM_ORDER",
    "TABLES",
    "Batch",
    "BatchRef",
    "Outbox",
    "OutboxStatistics",
    "Prepare",
    "Requeued",
    "Stream",
    "Take",
    "Unheld",
]

# When each stream's first waiting record was made: what "oldest unsent" is measured from.
_MADE: Final[Mapping[Stream, str]] = MappingProxyType(
    {
        Stream.READINGS: "read_time",
        Stream.EVENTS: "event_time",
        Stream.ALARMS: "raised",
        Stream.LEDGER: "updated",
    }
)
# While a stream's ids are known to be dense, the next ones are taken+1..max(id): no count.
_SPAN_DENSE: Final = (
    "SELECT (SELECT taken FROM outbox_cursor WHERE stream = ?), (SELECT max(id) FROM {table})"
)
_SPAN: Final = (
    "SELECT (SELECT taken FROM outbox_cursor WHERE stream = ?), count(*), max(id) FROM ("
    "SELECT id FROM {table} WHERE id > (SELECT taken FROM outbox_cursor WHERE stream = ?) "
    "ORDER BY id LIMIT ?)"
)
# Ids with gaps (after eviction or rolled-back writes), chunked in SQL and returned as one row
# of "first last count" triples: one row, whatever the number of ids.
_CHUNKS: Final = (
    "SELECT group_concat(f || ' ' || l || ' ' || n, ' ') FROM ("
    "SELECT min(id) AS f, max(id) AS l, count(*) AS n FROM ("
    "SELECT id, (row_number() OVER (ORDER BY id) - 1) / ? AS k FROM ("
    "SELECT id FROM {table} WHERE id > (SELECT taken FROM outbox_cursor WHERE stream = ?) "
    "ORDER BY id LIMIT ?)) GROUP BY k ORDER BY k)"
)
_INSERT_BATCHES: Final = (
    "INSERT INTO outbox_batches (stream, first_id, last_id, records, created_us) "
    "SELECT ?, json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), ? FROM json_each(?) ORDER BY key"
)
# Ledger change rows exist only to be sent: they go with their batch, deleted by a trigger in
# the statement that acknowledges it. The trigger is TEMP, on the worker's connection only: not
# part of the schema, and the spool's own connection deletes a batch only once eviction has
# removed its records.
_SETUP: Final = (
    "CREATE TEMP TRIGGER IF NOT EXISTS outbox_ledger_sent AFTER DELETE ON main.outbox_batches "
    "WHEN OLD.stream = 'ledger' BEGIN "
    "DELETE FROM ledger_changes WHERE id BETWEEN OLD.first_id AND OLD.last_id; END",
)
_ACK: Final = "DELETE FROM outbox_batches WHERE seq IN (SELECT value FROM json_each(?))"
# Per stream: records waiting (from id ?1 = cursor + 1 on), records in open batches (as cut),
# and the time the first unsent record (from id ?2 on) was made. Ids only grow, so the id span
# on either side of ?1 tells which side is smaller; that side is scanned (only the needed branch
# runs). Open batches are counted, not the ids from the first of them: a resend reopens old
# records without making everything after them unsent.
_UNSENT: Final = (
    "SELECT CASE WHEN ?1 - coalesce((SELECT min(id) FROM {table}), ?1) "
    "<= coalesce((SELECT max(id) FROM {table}), ?1) - ?1 "
    "THEN (SELECT count(*) FROM {table}) - (SELECT count(*) FROM {table} WHERE id < ?1) "
    "ELSE (SELECT count(*) FROM {table} WHERE id >= ?1) END, "
    "(SELECT coalesce(sum(records), 0) FROM outbox_batches WHERE stream = ?3), "
    "(SELECT {made} FROM {table} WHERE id >= ?2 ORDER BY id LIMIT 1)"
)
_BATCH_COLUMNS: Final = "seq, stream, first_id, last_id, records, created_us"
# One row, one column per stream (in STREAM_ORDER).
_COUNT_WAITING: Final = (
    "(SELECT count(*) FROM (SELECT 1 FROM {table} WHERE id > "
    "(SELECT taken FROM outbox_cursor WHERE stream = '{stream}') LIMIT ?))"
)
_WAITING: Final = "SELECT " + ", ".join(
    _COUNT_WAITING.format(table=TABLES[s], stream=s.value) for s in STREAM_ORDER
)


# Resend by data time: per stream, the column that holds it (as an integer), its unit in
# microseconds, and the column a meter filter applies to (events name their meter as subject).
_DATA_TIME: Final[Mapping[Stream, tuple[str, int, str]]] = MappingProxyType(
    {
        Stream.READINGS: ("data_epoch", 1_000_000, "meter"),
        Stream.EVENTS: ("event_us", 1, "subject"),
        Stream.ALARMS: ("window_us", 1, "meter"),
    }
)
#: the streams a resend can cover (ledger change rows are gone once acknowledged)
RESENDABLE: Final = (Stream.ALARMS, Stream.EVENTS, Stream.READINGS)
# The kinds of record eviction takes in turns (spool.caps), each oldest id first: per stream,
# a name, the condition that picks that kind, and the eviction class of its unsent records.
_HELD_GROUPS: Final[Mapping[Stream, tuple[tuple[str, str, str], ...]]] = MappingProxyType(
    {
        Stream.READINGS: (
            ("frozen", "kind IN ('daily_frozen', 'billing')", "frozen"),
            ("event_counter", "kind = 'event_counter'", "event"),
            ("snapshot", "kind NOT IN ('daily_frozen', 'billing', 'event_counter')", "snapshot"),
        ),
        Stream.EVENTS: (("all", "1", "event"),),
        Stream.ALARMS: (("all", "1", "frozen"),),
    }
)
# Matching ids below the cursor, as runs with no other record between them, cut to at most
# ?batch records each: "first last count" per batch, in id order. A run is the ids whose
# overall rank and rank among matches differ by the same amount (gaps and islands).
_RUNS: Final = (
    "SELECT group_concat(f || ' ' || l || ' ' || n, ' ') FROM ("
    "SELECT min(id) AS f, max(id) AS l, count(*) AS n FROM ("
    "SELECT id, run, (row_number() OVER (PARTITION BY run ORDER BY id) - 1) / ? AS k FROM ("
    "SELECT id, hit, row_number() OVER (ORDER BY id) "
    "- row_number() OVER (PARTITION BY hit ORDER BY id) AS run FROM ("
    "SELECT id, ({match}) AS hit FROM {table} WHERE id BETWEEN ? AND ?)) WHERE hit) "
    "GROUP BY run, k ORDER BY f)"
)


@dataclass(frozen=True, slots=True)
class Unheld:
    """Part of a resend range the spool holds no ``records`` of (``all``, or a reading class)
    in ``stream`` because it evicted them: from ``start`` to ``end``."""

    stream: Stream
    records: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Requeued:
    """What :meth:`Outbox.requeue` did: records matching per stream, how many were queued
    (none when ``refused``: more matched than allowed), the batches, and what was evicted."""

    matched: Mapping[Stream, int]
    queued: Mapping[Stream, int]
    batches: tuple[BatchRef, ...]
    unheld: tuple[Unheld, ...]
    refused: bool


@dataclass(frozen=True, slots=True)
class Take:
    """What :meth:`Outbox.take` did: the batches it cut (``rendered`` too when asked, else
    render them with :meth:`Outbox.render`), how many open batches it acknowledged on the way,
    and how many records each stream still has waiting (an estimate; a stream missing from it
    has none)."""

    cut: tuple[BatchRef, ...]
    acknowledged: int
    waiting: Mapping[Stream, int]
    rendered: tuple[Batch, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Prepare:
    """What :meth:`Outbox.prepare` did: batches cut and written ahead, their records and JSON
    bytes, and ``held`` when it stopped short to leave room (``"cap"``: the spool's size cap;
    ``"disk"``: the file system's reserve)."""

    batches: int
    records: int
    bytes: int
    held: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxStatistics:
    """A snapshot for the status message and metrics.

    ``unsent`` counts records not yet acknowledged (open or waiting) per stream;
    ``oldest_unsent`` is when the oldest of them was made (read, raised, logged).
    """

    unsent: Mapping[Stream, int]
    open_batches: int
    oldest_unsent: datetime | None
    last_seq: int
    #: open batches whose JSON was written ahead (spool.prepared), and its bytes
    prepared_batches: int = 0
    prepared_bytes: int = 0

    @property
    def depth(self) -> int:
        return sum(self.unsent.values())


class Outbox:
    """The outbox of one :class:`~spool.store.Spool`.

    Cuts, acknowledgements and rendering run on a worker thread with a connection of its own
    (:mod:`spool.worker`; opened on first use, closed with the spool or by :meth:`close`), each
    call one job there: a cut and the rendering of what it cut cost one hand-over between the
    event loop and SQLite, not one per statement. (A second thread rendering half of each
    group is slower, not faster: SQLite's allocator takes one process-wide mutex, and
    rendering is mostly allocation.) Statistics read through the spool.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        names: Callable[[str], str | None] | None = None,
        envelope: Callable[[Batch], bytes] | None = None,
    ) -> None:
        self._spool = spool
        # The whole message a batch is published as (records included as they are): what
        # prepare() writes ahead. Without it there is nothing to prepare.
        self._envelope = envelope
        self._renderer = Renderer(names)
        # Per stream, whether the last batches rendered right after their cut had every id of
        # their range (read and written on the worker's thread only).
        self._dense: dict[Stream, bool] = {}
        # The highest batch number this outbox listed or cut: open batches above it were made
        # elsewhere (a resend) and go out with the next cut. None until the first list or cut.
        self._known: int | None = None
        # Found above it and not handed out yet (touched on the worker's thread only).
        self._requeued: deque[BatchRef] = deque()
        self._worker = Worker(
            spool.path, busy_timeout=DEFAULT_BUSY_TIMEOUT, name="amigw-outbox", setup=_SETUP
        )
        self._prepared = Prepared(spool.path)
        # Prepared messages are read on a thread of their own: a read is a file read (and an
        # index query), and must not wait behind an acknowledgement's fsync on the worker.
        self._reader = Worker(
            spool.path, busy_timeout=DEFAULT_BUSY_TIMEOUT, name="amigw-outbox-reader"
        )
        # Batches this outbox prepared and has not handed out: their first send is no resend.
        self._fresh: set[int] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the worker thread and close its connection (the spool's close does it too)."""
        await self._worker.close()
        await self._reader.close()
        self._prepared.close()

    async def _call(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` on the worker (started on first use)."""
        if not self._worker.running:
            self._spool._require()  # a closed spool is an error here too, not a fresh file
            if self.close not in self._spool._dependents:
                self._spool._dependents.append(self.close)
            if self.sweep not in self._spool._sweepers:
                self._spool._sweepers.append(self.sweep)
        return await self._worker.call(job)

    async def sweep(self) -> int:
        """Delete the prepared segment files no open batch needs any more (see
        :meth:`spool.prepared.Prepared.sweep`); return how many went."""
        return await self._call(self._prepared.sweep)

    # -- cutting batches -------------------------------------------------------------------

    async def waiting(self, limit: int) -> dict[Stream, int]:
        """Records waiting per stream (above the cursor), each counted up to ``limit``."""
        rows = await self._spool._fetch(_WAITING, [limit] * len(STREAM_ORDER))
        return _waiting(rows[0])

    async def take(
        self,
        *,
        max_batches: int,
        max_records: int,
        flush: Collection[Stream] = (),
        acknowledge: Collection[int] = (),
        now: datetime,
        render: bool = False,
    ) -> Take:
        """Cut up to ``max_batches`` new batches of ``max_records`` records, in one transaction
        that also acknowledges the batches numbered in ``acknowledge`` (one commit for both).

        Streams are served in :data:`STREAM_ORDER`. A stream with fewer than ``max_records``
        waiting gets a (short) batch only if it is in ``flush`` (its oldest waiting record is
        old enough). The transaction commits before this returns; with ``render`` the batches
        cut are rendered right after it, in the same call (``Take.rendered``).
        """
        if max_batches <= 0 or max_records <= 0:
            raise ValueError("max_batches and max_records must be positive")
        created = codec.epoch_micros(codec.require_aware("now", now))
        flushed = frozenset(flush)
        acks = sorted(set(acknowledge))
        renderer = self._renderer if render else None
        dense = self._dense

        def job(conn: sqlite3.Connection) -> Take:
            if self._known is None:
                self._known = _last_seq(conn)
            take = _take(
                conn,
                max_batches=max_batches,
                max_records=max_records,
                flush=flushed,
                acknowledge=acks,
                created_us=created,
                renderer=renderer,
                dense=dense,
            )
            if take.acknowledged:
                self._prepared.sweep(conn)
            return self._with_requeued(conn, take, max_batches, renderer)

        take = await self._call(job)
        if self._fresh:
            # Prepared batches cut into this take (made while a connection came up) are handed
            # out now, as first sends.
            self._fresh.difference_update(ref.seq for ref in take.cut)
        return take

    def _with_requeued(
        self, conn: sqlite3.Connection, take: Take, limit: int, renderer: Renderer | None
    ) -> Take:
        # Open batches numbered above everything this outbox knew, and not cut just now, were
        # made by a resend: they join this cut (after it; the dense state ignores them). Looked
        # for after the cut, so one made meanwhile is numbered above it and found next time.
        known = self._known or 0
        cut = [ref.seq for ref in take.cut]
        rows = conn.execute(
            f"SELECT {_BATCH_COLUMNS} FROM outbox_batches WHERE seq > ? "  # noqa: S608
            "AND seq NOT IN (SELECT value FROM json_each(?)) ORDER BY seq",
            (known, json.dumps(cut)),
        ).fetchall()
        self._requeued.extend(_ref(row) for row in rows)
        self._known = max([known, *cut, *(ref.seq for ref in self._requeued)])
        # A window's worth at a time, like a cut: a large resend does not flood the sender.
        extra = [self._requeued.popleft() for _ in range(min(limit, len(self._requeued)))]
        if not extra:
            return take
        rendered = take.rendered
        if renderer is not None and len(rendered) == len(take.cut):
            try:
                rendered = (*rendered, *self._render(conn, extra))
            except sqlite3.Error:
                rendered = ()
        else:
            rendered = ()
        return Take((*take.cut, *extra), take.acknowledged, take.waiting, rendered)

    # -- resend by data time ---------------------------------------------------------------

    async def requeue(
        self,
        *,
        start: datetime,
        end: datetime,
        streams: Collection[Stream] = RESENDABLE,
        meters: Collection[str] = (),
        max_records: int,
        batch_records: int,
        now: datetime,
    ) -> Requeued:
        """Queue again, as new batches, the records with a data time in ``[start, end)`` that
        were already cut (the rest is still waiting and goes out anyway): readings by data
        time, events by event time, alarms by window start; only ``meters`` when given (for
        events: the subject). All in one transaction; nothing when more than ``max_records``
        match (``refused``). Ranges of records evicted from the spool are reported."""
        if max_records <= 0 or batch_records <= 0:
            raise ValueError("max_records and batch_records must be positive")
        first = codec.epoch_micros(codec.require_aware("start", start))
        last = codec.epoch_micros(codec.require_aware("end", end))
        if last <= first:
            raise ValueError("end must be after start")
        created = codec.epoch_micros(codec.require_aware("now", now))
        wanted = [s for s in RESENDABLE if s in set(streams)]
        unknown = set(streams) - set(RESENDABLE)
        if unknown:
            raise ValueError(f"cannot resend {', '.join(sorted(unknown))}")
        chosen = json.dumps(sorted(set(meters)))

        def job(conn: sqlite3.Connection) -> Requeued:
            with _transaction(conn):
                return _requeue(
                    conn, wanted, first_us=first, last_us=last,
                    meters=chosen if meters else None, max_records=max_records,
                    batch_records=batch_records, created_us=created,
                )  # fmt: skip

        done = await self._call(job)
        if done.batches:
            # Wake a drain waiting for records: these batches go out with its next cut.
            self._spool._write_count += 1
            self._spool._written.set()
        return done

    # -- open batches: rendering, resend and acknowledgement --------------------------------

    async def open_batches(self, *, limit: int | None = None) -> list[BatchRef]:
        """Batches cut but not acknowledged, oldest ``seq`` first (the resend order)."""
        rows = await self._spool._fetch(
            f"SELECT {_BATCH_COLUMNS} FROM outbox_batches ORDER BY seq LIMIT ?",  # noqa: S608
            (-1 if limit is None else limit,),
        )
        refs = [_ref(row) for row in rows]
        if limit is None:
            # The whole list goes out as resends: none of it is handed out again by a cut.
            self._known = max([self._known or 0, *(ref.seq for ref in refs)])
            self._requeued.clear()
        return refs

    async def render(self, refs: Sequence[BatchRef]) -> list[Batch]:
        """The batches' records as JSON, read back by id range (for a first send or a resend),
        in the order of ``refs``. A batch no longer open renders with no records."""
        if not refs:
            return []
        wanted = list(refs)
        if self._envelope is None:
            return await self._call(lambda conn: self._render(conn, wanted))
        self._spool._require()
        if self.close not in self._spool._dependents:
            self._spool._dependents.append(self.close)
        prepared, frame = self._prepared, self._frame
        ready = await self._reader.call(lambda conn: prepared.load(conn, wanted, frame))
        rest = [r for r in wanted if r.seq not in ready]
        done: dict[int, Batch] = {}
        if rest:
            renderer = self._renderer
            done = {b.seq: b for b in await self._call(lambda conn: renderer.render(conn, rest))}
        return [
            Batch(r, ready[r.seq][0], _NO_RECORDS, ready[r.seq][1])
            if r.seq in ready
            else done[r.seq]
            for r in wanted
        ]

    def first_send(self, seq: int) -> bool:
        """Whether batch ``seq`` was prepared by this outbox and not handed out before (then
        sending it is its first send, not a resend); asking hands it out."""
        if seq in self._fresh:
            self._fresh.discard(seq)
            return True
        return False

    def _render(self, conn: sqlite3.Connection, refs: Sequence[BatchRef]) -> list[Batch]:
        """Prepared batches read back, the others rendered from their records (worker)."""
        ready = self._prepared.load(conn, refs, self._frame) if self._envelope else {}
        rest = [r for r in refs if r.seq not in ready]
        done = {b.seq: b for b in self._renderer.render(conn, rest)} if rest else {}
        return [
            Batch(r, ready[r.seq][0], _NO_RECORDS, ready[r.seq][1])
            if r.seq in ready
            else done[r.seq]
            for r in refs
        ]

    def _frame(self, ref: BatchRef, count: int) -> tuple[bytes, bytes]:
        """The head and tail of ``ref``'s message with ``count`` records, as the envelope
        makes it now (what a prepared message read back must start and end with)."""
        assert self._envelope is not None
        head, mark, tail = self._envelope(Batch(ref, count, _MARK)).partition(bytes(_MARK))
        if not mark:
            raise ValueError("the envelope does not carry the records as they are")
        return head, tail

    # -- preparing while the broker is away -------------------------------------------------

    async def prepare(self, *, max_batches: int, max_records: int, now: datetime) -> Prepare:
        """Cut up to ``max_batches`` *full* batches of ``max_records``, render them and write
        their JSON ahead (:mod:`spool.prepared`), all in one transaction: what the uplink does
        while the broker is away, so that the backlog is sent without rendering it then.

        Stops short (``Prepare.held``) while the spool is near its cap, counting prepared bytes,
        or the file system near its reserve: the records wait unprepared, as they would anyway.
        """
        if max_batches <= 0 or max_records <= 0:
            raise ValueError("max_batches and max_records must be positive")
        envelope = self._envelope
        if envelope is None:
            raise ValueError("an outbox without an envelope has nothing to prepare")
        created = codec.epoch_micros(codec.require_aware("now", now))
        # What a full prepare may add: ~0.5 kB a reading is a generous estimate.
        estimate = max_batches * max_records * 512
        cap = self._spool.caps.max_bytes
        dense = self._dense
        prepared = self._prepared
        renderer = self._renderer

        def job(conn: sqlite3.Connection) -> tuple[Prepare, list[int]]:
            prepared.sweep(conn)
            if cap is not None and _used_bytes(conn) + estimate > LOW_WATER * cap:
                return Prepare(0, 0, 0, held="cap"), []
            if not prepared.room(estimate):
                return Prepare(0, 0, 0, held="disk"), []
            with _transaction(conn):
                refs: list[BatchRef] = []
                for stream in STREAM_ORDER:
                    room = max_batches - len(refs)
                    if room <= 0:
                        break
                    cut, _ = _cut(
                        conn, stream, room, max_records,
                        flush=False, created_us=created, dense=dense.get(stream, False),
                    )  # fmt: skip
                    refs.extend(cut)
                if not refs:
                    return Prepare(0, 0, 0), []
                batches = renderer.render(conn, refs)
                _note_density(dense, batches)
                size = prepared.store(conn, ((b, envelope(b)) for b in batches))
            return Prepare(len(refs), sum(b.count for b in batches), size), [r.seq for r in refs]

        done, seqs = await self._call(job)
        self._fresh.update(seqs)
        return done

    async def acknowledge(self, seqs: Collection[int]) -> int:
        """Delete these batches from the outbox (one transaction); return how many were open.

        Unknown numbers (already acknowledged, or never cut) are ignored.
        """
        if not seqs:
            return 0
        wanted = sorted(set(seqs))

        def job(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                done = _acknowledge(conn, wanted)
            self._prepared.sweep(conn)
            return done

        return await self._call(job)

    # -- statistics ------------------------------------------------------------------------

    async def statistics(self) -> OutboxStatistics:
        """Unsent records per stream, open batches, the oldest unsent record's time.

        Counting scans the smaller of the unsent part and the rest of each table (a whole
        table is counted from its smallest index without reading rows): poll at status cadence.
        """
        unsent: dict[Stream, int] = {}
        oldest: datetime | None = None
        for stream in STREAM_ORDER:
            waiting_from, first = await self._first_unsent(stream)
            rows = await self._spool._fetch(
                _UNSENT.format(table=TABLES[stream], made=_MADE[stream]),
                (waiting_from, first, stream.value),
            )
            waiting, in_batches, made = rows[0]
            unsent[stream] = int(waiting) + int(in_batches)
            if made is not None:
                moment = datetime.fromisoformat(made)
                if oldest is None or moment < oldest:
                    oldest = moment
        batches = await self._spool._fetch(
            "SELECT count(*), (SELECT seq FROM sqlite_sequence WHERE name = 'outbox_batches') "
            "FROM outbox_batches"
        )
        open_count, last_seq = batches[0]
        prepared_count, prepared_bytes = (await self._spool._fetch(TOTALS))[0]
        return OutboxStatistics(
            unsent=MappingProxyType(unsent),
            open_batches=int(open_count),
            oldest_unsent=oldest,
            last_seq=int(last_seq or 0),
            prepared_batches=int(prepared_count),
            prepared_bytes=int(prepared_bytes),
        )

    async def empty(self) -> bool:
        """True when nothing is open and nothing is waiting."""
        if await self.open_batches(limit=1):
            return False
        return not await self.waiting(1)

    async def _first_unsent(self, stream: Stream) -> tuple[int, int]:
        """The first id waiting to be cut, and the first id not acknowledged."""
        rows = await self._spool._fetch(
            "SELECT (SELECT taken FROM outbox_cursor WHERE stream = ?1) + 1, "
            "min((SELECT taken FROM outbox_cursor WHERE stream = ?1) + 1, "
            "coalesce((SELECT min(first_id) FROM outbox_batches WHERE stream = ?1), 1 << 62))",
            (stream.value,),
        )
        return int(rows[0][0]), int(rows[0][1])


class _transaction:  # noqa: N801 - used like a function
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on a worker connection, rolled back on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _waiting(row: Sequence[Any]) -> dict[Stream, int]:
    return {s: int(n) for s, n in zip(STREAM_ORDER, row, strict=True) if n}


def _take(
    conn: sqlite3.Connection,
    *,
    max_batches: int,
    max_records: int,
    flush: frozenset[Stream],
    acknowledge: Sequence[int],
    created_us: int,
    renderer: Renderer | None,
    dense: dict[Stream, bool],
) -> Take:
    # Runs on the worker thread: every statement here is one step of SQLite, none returns rows
    # one by one, so the thread seldom needs the interpreter while the event loop is busy.
    waiting = _waiting(conn.execute(_WAITING, [max_records] * len(STREAM_ORDER)).fetchone())
    wanted = [
        s for s in STREAM_ORDER if waiting.get(s, 0) >= max_records or (s in flush and s in waiting)
    ]
    if not wanted and not acknowledge:
        return Take((), 0, MappingProxyType(waiting))
    refs: list[BatchRef] = []
    # Records still waiting after the cut (up to max_records per stream): they decide when a
    # short batch becomes due.
    left = dict(waiting)
    with _transaction(conn):
        acknowledged = _acknowledge(conn, acknowledge)
        for stream in wanted:
            room = max_batches - len(refs)
            if room <= 0:
                break
            cut, left[stream] = _cut(
                conn,
                stream,
                room,
                max_records,
                flush=stream in flush,
                created_us=created_us,
                dense=dense.get(stream, False),
            )
            refs.extend(cut)
    waiting_now = {s: min(n, max_records) for s, n in left.items() if n > 0}
    rendered: tuple[Batch, ...] = ()
    if renderer is not None:
        try:
            rendered = tuple(renderer.render(conn, refs))
        except sqlite3.Error:
            # The cut is committed and stands; Take.rendered stays short and the caller
            # renders the batches again (Outbox.render), which reports a lasting error.
            rendered = ()
        _note_density(dense, rendered)
    return Take(tuple(refs), acknowledged, MappingProxyType(waiting_now), rendered)


def _note_density(dense: dict[Stream, bool], rendered: Sequence[Batch]) -> None:
    """Whether the batches just rendered had every id of their range, per stream (see _cut)."""
    for stream in {b.stream for b in rendered}:
        dense[stream] = all(
            b.count == b.ref.last_id - b.ref.first_id + 1 for b in rendered if b.stream is stream
        )


def _used_bytes(conn: sqlite3.Connection) -> int:
    """What the spool uses, as its cap counts it: pages in use and prepared bytes."""
    (used,) = conn.execute(USED_BYTES).fetchone()
    return int(used)


def _cut(
    conn: sqlite3.Connection,
    stream: Stream,
    room: int,
    max_records: int,
    *,
    flush: bool,
    created_us: int,
    dense: bool,
) -> tuple[list[BatchRef], int]:
    # One batch more than there is room for is looked at, to tell the caller what stays waiting.
    want = max_records * (room + 1)
    table = TABLES[stream]
    if dense:
        # Counting the ids reads every row of the range (~10% of a drain): skipped while the
        # batches cut last had every id of their range. Ids skipped meanwhile (a duplicate
        # write uses one up, eviction deletes some) only make a batch short of records; the
        # render that shows it turns counting back on.
        row = conn.execute(_SPAN_DENSE.format(table=table), (stream.value,)).fetchone()
        taken, highest = int(row[0]), int(row[1] or 0)
        count = max(0, min(highest - taken, want))
        top = taken + count
    else:
        row = conn.execute(_SPAN.format(table=table), (stream.value, stream.value, want)).fetchone()
        taken, count, top = int(row[0]), int(row[1]), int(row[2] or 0)
    chunks: list[tuple[int, int, int]]
    if not count:
        return [], 0
    if top - taken == count:
        # No gaps (the usual case): the ids are taken+1..top, chunked by arithmetic.
        chunks = [
            (first, min(first + max_records - 1, top), min(max_records, top - first + 1))
            for first in range(taken + 1, top + 1, max_records)
        ]
    else:
        # Gaps after eviction or rolled-back writes: SQLite numbers the ids and chunks them.
        (text,) = conn.execute(
            _CHUNKS.format(table=table), (max_records, stream.value, want)
        ).fetchone()
        numbers = [int(n) for n in str(text or "").split()]
        chunks = [(numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3)]
    chunks = chunks[:room]
    if chunks and chunks[-1][2] < max_records and not flush:
        chunks.pop()
    left = count - sum(n for _, _, n in chunks)
    if not chunks:
        return [], left
    cursor = conn.execute(_INSERT_BATCHES, (stream.value, created_us, json.dumps(chunks)))
    # One INSERT numbers its rows consecutively (AUTOINCREMENT: one above the highest ever).
    last_seq = int(cursor.lastrowid or 0)
    if cursor.rowcount != len(chunks) or last_seq < len(chunks):
        raise sqlite3.OperationalError("outbox batches were not numbered as expected")
    conn.execute(
        "UPDATE outbox_cursor SET taken = ? WHERE stream = ?", (chunks[-1][1], stream.value)
    )
    created = _from_micros(created_us)
    first_seq = last_seq - len(chunks) + 1
    refs = [
        BatchRef(first_seq + i, stream, first, last, n, created)
        for i, (first, last, n) in enumerate(chunks)
    ]
    return refs, left


def _last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox_batches'").fetchone()
    return int(row[0]) if row is not None else 0


def _requeue(
    conn: sqlite3.Connection,
    streams: Sequence[Stream],
    *,
    first_us: int,
    last_us: int,
    meters: str | None,
    max_records: int,
    batch_records: int,
    created_us: int,
) -> Requeued:
    matched: dict[Stream, int] = {}
    plans: dict[Stream, tuple[str, list[object], int, int]] = {}
    for stream in streams:
        column, unit, who = _DATA_TIME[stream]
        # [start, end) in the column's unit: the lower bound rounded up, the upper one too.
        low, high = -(-first_us // unit), -(-last_us // unit)
        # Column names come from _DATA_TIME; every value is bound.
        match = f"{column} >= ? AND {column} < ? AND id <= ?"
        (taken,) = conn.execute(
            "SELECT taken FROM outbox_cursor WHERE stream = ?", (stream.value,)
        ).fetchone()
        params: list[object] = [low, high, int(taken)]
        if meters is not None:
            match += f" AND {who} IN (SELECT value FROM json_each(?))"  # noqa: S608
            params.append(meters)
        table = TABLES[stream]
        row = conn.execute(
            f"SELECT count(*), min(id), max(id) FROM {table} WHERE {match}",  # noqa: S608
            params,
        ).fetchone()
        matched[stream] = int(row[0])
        if row[0]:
            plans[stream] = (match, params, int(row[1]), int(row[2]))
    unheld = _unheld(conn, streams, first_us, last_us)
    if sum(matched.values()) > max_records:
        return Requeued(MappingProxyType(matched), MappingProxyType({}), (), unheld, refused=True)
    refs: list[BatchRef] = []
    queued: dict[Stream, int] = {}
    for stream, (match, params, low_id, high_id) in plans.items():
        (text,) = conn.execute(
            _RUNS.format(match=match, table=TABLES[stream]),
            [batch_records, *params, low_id, high_id],
        ).fetchone()
        numbers = [int(n) for n in str(text or "").split()]
        chunks = [(numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3)]
        cursor = conn.execute(_INSERT_BATCHES, (stream.value, created_us, json.dumps(chunks)))
        last_seq = int(cursor.lastrowid or 0)
        if cursor.rowcount != len(chunks) or last_seq < len(chunks):
            raise sqlite3.OperationalError("outbox batches were not numbered as expected")
        created = _from_micros(created_us)
        first_seq = last_seq - len(chunks) + 1
        refs.extend(
            BatchRef(first_seq + i, stream, f, last, n, created)
            for i, (f, last, n) in enumerate(chunks)
        )
        queued[stream] = sum(n for _, _, n in chunks)
    return Requeued(
        MappingProxyType(matched), MappingProxyType(queued), tuple(refs), unheld, refused=False
    )


def _unheld(
    conn: sqlite3.Connection, streams: Sequence[Stream], first_us: int, last_us: int
) -> tuple[Unheld, ...]:
    # Eviction takes each kind of record oldest id first, so what the spool still holds of a
    # kind starts at its oldest data time; before it, and only if anything was ever evicted,
    # records of the range are gone (the spool cannot tell them from records never held). A
    # kind with no record left is reported only when records of its class went unsent.
    evicted = dict(
        conn.execute("SELECT name, value FROM spool_counters WHERE name GLOB 'evicted.*'")
    )
    if not any(evicted.values()):
        return ()
    out: list[Unheld] = []
    for stream in streams:
        column, unit, _ = _DATA_TIME[stream]
        for name, where, klass in _HELD_GROUPS[stream]:
            (oldest,) = conn.execute(
                f"SELECT {column} FROM {TABLES[stream]} WHERE {where} "  # noqa: S608
                f"ORDER BY {column} LIMIT 1"
            ).fetchone() or (None,)
            if oldest is None and not evicted.get(f"evicted.{klass}"):
                continue
            held_us = last_us if oldest is None else min(last_us, int(oldest) * unit)
            if held_us > first_us:
                out.append(Unheld(stream, name, _from_micros(first_us), _from_micros(held_us)))
    return tuple(out)


def _acknowledge(conn: sqlite3.Connection, seqs: Sequence[int]) -> int:
    if not seqs:
        return 0
    return int(conn.execute(_ACK, (json.dumps(list(seqs)),)).rowcount)


T = TypeVar("T")

_NO_RECORDS: Final = memoryview(b"")
# Stands for the records when the envelope is asked for its head and tail.
_MARK: Final = memoryview(b"\x00records\x00")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _ref(row: Sequence[Any]) -> BatchRef:
    seq, stream, first, last, records, created_us = row
    return BatchRef(
        int(seq), Stream(stream), int(first), int(last), int(records), _from_micros(created_us)
    )
