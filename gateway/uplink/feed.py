"""What the uplink sends next on one connection, and the acknowledgements waiting to be committed.

:class:`Feed` hands out batches in ``seq`` order: first every batch still open in the outbox
(resends, listed before anything new is cut), then new batches as records arrive — a full
batch as soon as there is one, a short one when a stream's oldest waiting record has waited
``batch_max_age_s``. One task keeps the outbox's worker busy ahead of the sender: each call
there cuts up to a window of batches in one transaction (which also commits the acknowledgements
gathered since the previous one: one fsync for both) and renders them, and while a backlog lasts
the next call is queued before the previous one returns, so the worker never waits for the event
loop. At most :data:`AHEAD` windows are cut (rendered, or being rendered) ahead of the sender:
about 9 MB a window of 100 batches of 200 readings. Open batches at the start of a connection
(resends, and batches prepared while the broker was away: see :mod:`spool.prepared`) are read
back a window at a time under the same limit.

:class:`AckBook` holds acknowledged batches until a commit removes them from the outbox; they
are skipped if they come round again meanwhile. A late commit can only cause a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.config import UplinkConfig
from spool import Batch, BatchRef, Clock, Outbox, Spool, SpoolUnavailableError, Stream, Take

from .reconnect import Timer

log = logging.getLogger("amigw.uplink")

#: how often the cutter looks at the outbox when nothing wakes it (writes by another process)
IDLE_POLL_S: Final = 1.0
SPOOL_RETRY_S: Final = 1.0
#: windows of batches cut (and rendered, or being rendered) ahead of the sender, at most: three
#: let a second call wait on the worker while the sender still holds a window it has not taken
AHEAD: Final = 3


class AckBook:
    """Acknowledged, not yet committed: ``seq -> records``."""

    def __init__(self, on_committed: Callable[[Sequence[int]], None] | None = None) -> None:
        self.pending: dict[int, int] = {}
        self.arrived = asyncio.Event()
        #: set when no cut will come along soon to take the acknowledgements: commit now
        self.due = asyncio.Event()
        #: whether the feed is cutting (False while it waits for records to arrive)
        self.cutting = False
        #: commits made so far (a flusher that sees it move leaves the rest to the next cut)
        self.commits = 0
        self.batches = 0
        self.records = 0
        self._on_committed = on_committed

    def __contains__(self, seq: int) -> bool:
        return seq in self.pending

    def add(self, seq: int, records: int) -> None:
        self.pending[seq] = records
        self.arrived.set()

    def snapshot(self) -> dict[int, int]:
        return dict(self.pending)

    def committed(self, done: dict[int, int]) -> None:
        """These acknowledgements are in the outbox now (each counted once)."""
        self.commits += 1
        gone = [seq for seq in done if self.pending.pop(seq, None) is not None]
        if not gone:
            return
        self.batches += len(gone)
        self.records += sum(done[seq] for seq in gone)
        if self._on_committed is not None:
            self._on_committed(sorted(gone))


class Feed:
    def __init__(
        self,
        outbox: Outbox,
        spool: Spool,
        config: UplinkConfig,
        *,
        size: int,
        acks: AckBook,
        clock: Clock,
        timer: Timer,
        stop: asyncio.Event,
    ) -> None:
        self.outbox = outbox
        self.spool = spool
        self.config = config
        self.size = size
        self.acks = acks
        self.clock = clock
        self.timer = timer
        self.stop = stop
        # Groups of rendered batches (a window or less each); None once stopping is done.
        self._out: asyncio.Queue[list[tuple[Batch, bool]] | None] = asyncio.Queue()
        self._current: deque[tuple[Batch, bool]] = deque()
        self._ended = False
        self._ahead = 0  # cut or read back, not yet handed to the sender
        self._taken = asyncio.Event()

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        """List the open batches (resends), then start cutting and rendering ahead."""
        try:
            resend = [r for r in await self.outbox.open_batches() if r.seq not in self.acks]
        except SpoolUnavailableError as exc:
            log.warning("uplink cannot read the outbox, resend postponed: %s", exc)
            resend = []
        tasks.create_task(self._produce(resend), name="uplink-feed")

    async def get(self) -> tuple[Batch, bool] | None:
        """The next batch and whether it is a resend; None once stopping has drained it all."""
        while not self._current:
            if self._ended:
                return None
            group = await self._out.get()
            if group is None:
                self._ended = True
                return None
            self._current.extend(group)
        item = self._current.popleft()
        self._ahead -= 1
        self._taken.set()
        return item

    # -- the producer --------------------------------------------------------------------------

    async def _produce(self, resend: list[BatchRef]) -> None:
        try:
            await self._read_ahead(resend)
            await self._cut_ahead()
        finally:
            self._out.put_nowait(None)

    async def _read_ahead(self, resend: list[BatchRef]) -> None:
        """Open batches first, a window at a time and no further ahead than cuts (a backlog
        prepared while the broker was away can be thousands), with the next read queued on the
        worker before the last one is back. A batch prepared by this outbox and never handed
        out is sent for the first time, not resent."""
        pending: deque[tuple[asyncio.Future[list[Batch]], int]] = deque()
        index = 0
        try:
            while index < len(resend) or pending:
                while index < len(resend) and len(pending) < 2 and not self.stop.is_set():
                    reading = sum(n for _, n in pending)
                    if self._ahead + reading >= AHEAD * self.size:
                        break
                    chunk = resend[index : index + self.size]
                    index += len(chunk)
                    pending.append((asyncio.ensure_future(self._render(chunk)), len(chunk)))
                if not pending:
                    if self.stop.is_set():
                        return
                    await self._wait_taken()
                    continue
                batches = await pending[0][0]
                pending.popleft()
                self._ahead += len(batches)
                first = self.outbox.first_send
                self._out.put_nowait([(batch, not first(batch.seq)) for batch in batches])
        finally:
            for task, _ in pending:
                task.cancel()

    async def _cut_ahead(self) -> None:
        max_age = self.config.batch_max_age_s
        partial_since: dict[Stream, float] = {}
        seen = self.spool.write_count
        # Calls queued on the outbox's worker and the batches each may cut.
        pending: deque[_Call] = deque()
        backlog = False
        self.acks.cutting = True
        try:
            while True:
                # Queue a second call only while a backlog lasts (the last one came back full).
                while not self.stop.is_set() and len(pending) < (2 if backlog else 1):
                    room = AHEAD * self.size - self._ahead - sum(c.room for c in pending)
                    room = min(room, self.size)
                    if room < max(1, self.size // 2):
                        break
                    now = self.timer.monotonic()
                    flush = {s for s, t in partial_since.items() if now - t >= max_age}
                    task = asyncio.ensure_future(self._take(room, flush))
                    pending.append(_Call(task, room, flush, now))
                if not pending:
                    if self.stop.is_set():
                        return
                    await self._wait_taken()
                    continue
                call = pending[0]
                take = await call.task
                pending.popleft()
                for stream in list(partial_since):
                    if stream not in take.waiting or stream in call.flush:
                        del partial_since[stream]
                for stream in take.waiting:
                    partial_since.setdefault(stream, call.at)
                if take.cut:
                    self._ahead += len(take.cut)
                    batches = list(take.rendered)
                    if len(batches) != len(take.cut):  # rendering failed after the cut
                        batches = await self._render(list(take.cut))
                    self._out.put_nowait([(batch, False) for batch in batches])
                    backlog = len(take.cut) >= call.room
                    continue
                backlog = False
                if pending or self.stop.is_set():
                    continue
                timeout = IDLE_POLL_S
                if partial_since:
                    due = min(partial_since.values()) + max_age
                    timeout = min(timeout, max(0.0, due - self.timer.monotonic()))
                self.acks.cutting = False
                if self.acks.pending:  # no cut will take them along: commit them now
                    self.acks.due.set()
                try:
                    await first_of(
                        self.spool.wait_written(seen), self.timer.sleep(timeout), self.stop.wait()
                    )
                finally:
                    self.acks.cutting = True
                seen = self.spool.write_count
        finally:
            self.acks.cutting = False
            for call in pending:
                call.task.cancel()

    async def _wait_taken(self) -> None:
        """Far enough ahead of the sender: wait until it takes some (or stopping)."""
        self._taken.clear()
        await first_of(self._taken.wait(), self.stop.wait())

    async def _render(self, refs: list[BatchRef]) -> list[Batch]:
        while True:
            try:
                return await self.outbox.render(refs)
            except SpoolUnavailableError as exc:
                log.warning("uplink cannot read batches right now: %s", exc)
                await self.timer.sleep(SPOOL_RETRY_S)

    async def _take(self, room: int, flush: set[Stream]) -> Take:
        acks = self.acks.snapshot()
        try:
            take = await self.outbox.take(
                max_batches=max(1, room),
                max_records=self.config.batch_max_records,
                flush=flush,
                acknowledge=acks,
                now=self.clock.now(),
                render=True,
            )
        except SpoolUnavailableError as exc:
            # Busy past the timeout, or full: the records stay where they are; try again soon.
            log.warning("uplink cannot cut batches right now: %s", exc)
            await first_of(self.timer.sleep(SPOOL_RETRY_S), self.stop.wait())
            return Take((), 0, {})
        self.acks.committed(acks)
        return take


@dataclass(frozen=True, slots=True)
class _Call:
    """A cut queued on the outbox's worker: at most ``room`` batches, ``flush`` due at ``at``."""

    task: asyncio.Task[Take]
    room: int
    flush: set[Stream]
    at: float


async def first_of(*waits: Awaitable[object]) -> None:
    """Wait until the first of ``waits`` finishes; cancel the others; re-raise its error."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled():
            task.result()
