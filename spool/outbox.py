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

Batches are turned into JSON by :mod:`spool.render`; the streams and batch records are in
:mod:`spool.streams` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Self

import aiosqlite

from spool import codec
from spool.render import Renderer
from spool.store import Spool
from spool.streams import STREAM_ORDER, TABLES, Batch, BatchRef, Stream

__all__ = [
    "STREAM_ORDER",
    "TABLES",
    "Batch",
    "BatchRef",
    "Outbox",
    "OutboxStatistics",
    "Stream",
    "Take",
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
_SPAN: Final = (
    "SELECT (SELECT taken FROM outbox_cursor WHERE stream = ?), count(*), max(id) FROM ("
    "SELECT id FROM {table} WHERE id > (SELECT taken FROM outbox_cursor WHERE stream = ?) "
    "ORDER BY id LIMIT ?)"
)
_NEXT_IDS: Final = (
    "SELECT id FROM {table} WHERE id > (SELECT taken FROM outbox_cursor WHERE stream = ?) "
    "ORDER BY id LIMIT ?"
)
_BATCH_COLUMNS: Final = "seq, stream, first_id, last_id, records, created_us"
_WAITING: Final = " UNION ALL ".join(
    f"SELECT '{s.value}', (SELECT count(*) FROM (SELECT 1 FROM {TABLES[s]} WHERE id > "  # noqa: S608
    f"(SELECT taken FROM outbox_cursor WHERE stream = '{s.value}') LIMIT ?))"
    for s in STREAM_ORDER
)


@dataclass(frozen=True, slots=True)
class Take:
    """What :meth:`Outbox.take` did: the batches it cut (render them with
    :meth:`Outbox.render`), how many open batches it acknowledged on the way, and how many
    records each stream still has waiting (an estimate; a stream missing from it has none)."""

    cut: tuple[BatchRef, ...]
    acknowledged: int
    waiting: Mapping[Stream, int]


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

    @property
    def depth(self) -> int:
        return sum(self.unsent.values())


class Outbox:
    """The outbox of one :class:`~spool.store.Spool`.

    Cuts and acknowledgements are transactions on the spool's own connection (under its lock);
    rendering reads through a connection of its own (see :mod:`spool.render`), closed with the
    spool or by :meth:`close`.
    """

    def __init__(self, spool: Spool, *, names: Callable[[str], str | None] | None = None) -> None:
        self._spool = spool
        self._renderer = Renderer(spool, names)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the reader connection rendering uses (the spool's close does it too)."""
        await self._renderer.close()

    # -- cutting batches -------------------------------------------------------------------

    async def waiting(self, limit: int) -> dict[Stream, int]:
        """Records waiting per stream (above the cursor), each counted up to ``limit``."""
        rows = await self._spool._fetch(_WAITING, [limit] * len(STREAM_ORDER))
        return {Stream(s): int(n) for s, n in rows if n}

    async def take(
        self,
        *,
        max_batches: int,
        max_records: int,
        flush: Collection[Stream] = (),
        acknowledge: Collection[int] = (),
        now: datetime,
    ) -> Take:
        """Cut up to ``max_batches`` new batches of ``max_records`` records, in one transaction
        that also acknowledges the batches numbered in ``acknowledge`` (one commit for both).

        Streams are served in :data:`STREAM_ORDER`. A stream with fewer than ``max_records``
        waiting gets a (short) batch only if it is in ``flush`` (its oldest waiting record is
        old enough). The transaction commits before this returns.
        """
        if max_batches <= 0 or max_records <= 0:
            raise ValueError("max_batches and max_records must be positive")
        waiting = await self.waiting(max_records)
        wanted = [
            s
            for s in STREAM_ORDER
            if waiting.get(s, 0) >= max_records or (s in flush and s in waiting)
        ]
        if not wanted and not acknowledge:
            return Take((), 0, MappingProxyType(waiting))
        created = codec.epoch_micros(codec.require_aware("now", now))
        refs: list[BatchRef] = []
        # Records still waiting after the cut (up to max_records per stream): they decide when
        # a short batch becomes due.
        left = dict(waiting)
        async with self._spool._transaction() as conn:
            acknowledged = await _acknowledge(conn, acknowledge)
            for stream in wanted:
                room = max_batches - len(refs)
                if room <= 0:
                    break
                cut, left[stream] = await _cut(
                    conn, stream, room, max_records, flush=stream in flush, created_us=created
                )
                refs.extend(cut)
        waiting_now = {s: min(n, max_records) for s, n in left.items() if n > 0}
        return Take(tuple(refs), acknowledged, MappingProxyType(waiting_now))

    # -- open batches: rendering, resend and acknowledgement --------------------------------

    async def open_batches(self, *, limit: int | None = None) -> list[BatchRef]:
        """Batches cut but not acknowledged, oldest ``seq`` first (the resend order)."""
        rows = await self._spool._fetch(
            f"SELECT {_BATCH_COLUMNS} FROM outbox_batches ORDER BY seq LIMIT ?",  # noqa: S608
            (-1 if limit is None else limit,),
        )
        return [_ref(row) for row in rows]

    async def render(self, refs: Sequence[BatchRef]) -> list[Batch]:
        """The batches' records as JSON, read back by id range (for a first send or a resend),
        in the order of ``refs``. A batch no longer open renders with no records."""
        return await self._renderer.render(refs)

    async def acknowledge(self, seqs: Collection[int]) -> int:
        """Delete these batches from the outbox (one transaction); return how many were open.

        Unknown numbers (already acknowledged, or never cut) are ignored.
        """
        if not seqs:
            return 0
        async with self._spool._transaction() as conn:
            return await _acknowledge(conn, seqs)

    # -- statistics ------------------------------------------------------------------------

    async def statistics(self) -> OutboxStatistics:
        """Unsent records per stream, open batches, the oldest unsent record's time.

        Counting scans the unsent part of each table: poll at status cadence.
        """
        unsent: dict[Stream, int] = {}
        oldest: datetime | None = None
        for stream in STREAM_ORDER:
            table = TABLES[stream]
            first = await self._first_unsent(stream)
            rows = await self._spool._fetch(
                f"SELECT count(*), (SELECT {_MADE[stream]} FROM {table} WHERE id >= ? "  # noqa: S608
                f"ORDER BY id LIMIT 1) FROM {table} WHERE id >= ?",
                (first, first),
            )
            count, made = rows[0]
            unsent[stream] = int(count)
            if made is not None:
                moment = datetime.fromisoformat(made)
                if oldest is None or moment < oldest:
                    oldest = moment
        batches = await self._spool._fetch(
            "SELECT count(*), (SELECT seq FROM sqlite_sequence WHERE name = 'outbox_batches') "
            "FROM outbox_batches"
        )
        open_count, last_seq = batches[0]
        return OutboxStatistics(
            unsent=MappingProxyType(unsent),
            open_batches=int(open_count),
            oldest_unsent=oldest,
            last_seq=int(last_seq or 0),
        )

    async def empty(self) -> bool:
        """True when nothing is open and nothing is waiting."""
        if await self.open_batches(limit=1):
            return False
        return not await self.waiting(1)

    async def _first_unsent(self, stream: Stream) -> int:
        rows = await self._spool._fetch(
            "SELECT coalesce((SELECT min(first_id) FROM outbox_batches WHERE stream = ?), "
            "(SELECT taken FROM outbox_cursor WHERE stream = ?) + 1)",
            (stream.value, stream.value),
        )
        return int(rows[0][0])


async def _cut(
    conn: aiosqlite.Connection,
    stream: Stream,
    room: int,
    max_records: int,
    *,
    flush: bool,
    created_us: int,
) -> tuple[list[BatchRef], int]:
    # The ids are chunked here rather than in SQL: a window function over them costs more than
    # fetching a few thousand integers (ids have gaps after eviction, so they must be read).
    # One batch more than there is room for is looked at, to tell the caller what stays waiting.
    want = max_records * (room + 1)
    cursor = await conn.execute(
        _SPAN.format(table=TABLES[stream]), (stream.value, stream.value, want)
    )
    row = await cursor.fetchone()
    taken, count, top = (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2] or 0))
    if count and top - taken == count:
        # No gaps (the usual case): the ids are taken+1..top, no need to read them one by one.
        ids: Sequence[int] = range(taken + 1, top + 1)
    else:
        # Gaps after eviction or rolled-back writes: read the ids (chunking them in SQL with a
        # window function costs more than fetching a few thousand integers).
        rows = await conn.execute_fetchall(
            _NEXT_IDS.format(table=TABLES[stream]), (stream.value, want)
        )
        ids = [int(r[0]) for r in rows]
    chunks = [ids[i : i + max_records] for i in range(0, len(ids), max_records)][:room]
    if chunks and len(chunks[-1]) < max_records and not flush:
        chunks.pop()
    left = len(ids) - sum(len(c) for c in chunks)
    if not chunks:
        return [], left
    values = ", ".join("(?, ?, ?, ?, ?)" for _ in chunks)
    params: list[object] = []
    for chunk in chunks:
        params += [stream.value, chunk[0], chunk[-1], len(chunk), created_us]
    cursor = await conn.execute(
        "INSERT INTO outbox_batches (stream, first_id, last_id, records, created_us) "  # noqa: S608
        f"VALUES {values} RETURNING seq, first_id",
        params,
    )
    seq_of = {int(first): int(seq) for seq, first in await cursor.fetchall()}
    await conn.execute(
        "UPDATE outbox_cursor SET taken = ? WHERE stream = ?", (chunks[-1][-1], stream.value)
    )
    created = _from_micros(created_us)
    refs = [
        BatchRef(seq_of[chunk[0]], stream, chunk[0], chunk[-1], len(chunk), created)
        for chunk in chunks
    ]
    return refs, left


async def _acknowledge(conn: aiosqlite.Connection, seqs: Collection[int]) -> int:
    wanted = sorted(set(seqs))
    done = 0
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        cursor = await conn.execute(
            f"DELETE FROM outbox_batches WHERE seq IN ({marks}) "  # noqa: S608
            "RETURNING stream, first_id, last_id",
            chunk,
        )
        gone = list(await cursor.fetchall())
        done += len(gone)
        # Ledger change rows exist only to be sent: they go with their batch.
        ledger = [(f, last) for s, f, last in gone if s == Stream.LEDGER.value]
        if ledger:
            await conn.executemany("DELETE FROM ledger_changes WHERE id BETWEEN ? AND ?", ledger)
    return done


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _ref(row: Sequence[Any]) -> BatchRef:
    seq, stream, first, last, records, created_us = row
    return BatchRef(
        int(seq), Stream(stream), int(first), int(last), int(records), _from_micros(created_us)
    )
