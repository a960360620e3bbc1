"""What the uplink sends next on one connection, and the acknowledgements waiting to be committed.

:class:`Feed` hands out batches in ``seq`` order: first every batch still open in the outbox
(resends, listed before anything new is cut), then new batches as records arrive — a full
batch as soon as there is one, a short one when a stream's oldest waiting record has waited
``batch_max_age_s``. Two stages run ahead of the sender, each in its own task:

* **cut** on the spool's connection (one transaction per group of batches, which also commits
  the acknowledgements gathered since the previous group: one fsync for both), refilled once
  half of what was cut ahead has been taken, so groups stay large;
* **render** on the outbox's reader connection, so rendering never waits behind an fsync.

:class:`AckBook` holds acknowledged batches until a commit removes them from the outbox; they
are skipped if they come round again meanwhile. A late commit can only cause a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from gateway.config import UplinkConfig
from spool import Batch, BatchRef, Clock, Outbox, Spool, SpoolUnavailableError, Stream, Take

from .reconnect import Timer

log = logging.getLogger("amigw.uplink")

#: how often the cutter looks at the outbox when nothing wakes it (writes by another process)
IDLE_POLL_S: Final = 1.0
SPOOL_RETRY_S: Final = 1.0
RENDER_CHUNK: Final = 16


class AckBook:
    """Acknowledged, not yet committed: ``seq -> records``."""

    def __init__(self, on_committed: Callable[[Sequence[int]], None] | None = None) -> None:
        self.pending: dict[int, int] = {}
        self.arrived = asyncio.Event()
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
        self._out: asyncio.Queue[tuple[Batch, bool] | None] = asyncio.Queue(maxsize=size)
        self._cuts: asyncio.Queue[list[BatchRef] | None] = asyncio.Queue(maxsize=2)
        self._ahead = 0  # cut but not yet handed to the sender
        self._taken = asyncio.Event()

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        """List the open batches (resends), then start the cut and render stages."""
        try:
            resend = [r for r in await self.outbox.open_batches() if r.seq not in self.acks]
        except SpoolUnavailableError as exc:
            log.warning("uplink cannot read the outbox, resend postponed: %s", exc)
            resend = []
        tasks.create_task(self._render_stage(resend), name="uplink-render")
        tasks.create_task(self._cut_stage(), name="uplink-cut")

    async def get(self) -> tuple[Batch, bool] | None:
        """The next batch and whether it is a resend; None once stopping has drained it all."""
        item = await self._out.get()
        if item is not None and not item[1]:
            self._ahead -= 1
            self._taken.set()
        return item

    # -- stages --------------------------------------------------------------------------------

    async def _render_stage(self, resend: list[BatchRef]) -> None:
        for start in range(0, len(resend), self.size):
            for batch in await self._render(resend[start : start + self.size]):
                await self._out.put((batch, True))
        while (refs := await self._cuts.get()) is not None:
            # Small chunks: the sender gets the first batches of a group while the rest render.
            for start in range(0, len(refs), RENDER_CHUNK):
                for batch in await self._render(refs[start : start + RENDER_CHUNK]):
                    await self._out.put((batch, False))
        await self._out.put(None)

    async def _render(self, refs: list[BatchRef]) -> list[Batch]:
        while True:
            try:
                return await self.outbox.render(refs)
            except SpoolUnavailableError as exc:
                log.warning("uplink cannot read batches right now: %s", exc)
                await self.timer.sleep(SPOOL_RETRY_S)

    async def _cut_stage(self) -> None:
        max_age = self.config.batch_max_age_s
        partial_since: dict[Stream, float] = {}
        seen = self.spool.write_count
        while not self.stop.is_set():
            # Up to two windows cut ahead, refilled half a window at a time.
            room = 2 * self.size - self._ahead
            if room < max(1, self.size // 2):
                self._taken.clear()
                await first_of(self._taken.wait(), self.stop.wait())
                continue
            now = self.timer.monotonic()
            flush = {s for s, t in partial_since.items() if now - t >= max_age}
            take = await self._take(room, flush)
            for stream in list(partial_since):
                if stream not in take.waiting or stream in flush:
                    del partial_since[stream]
            for stream in take.waiting:
                partial_since.setdefault(stream, now)
            if take.cut:
                self._ahead += len(take.cut)
                await self._cuts.put(list(take.cut))
                continue
            timeout = IDLE_POLL_S
            if partial_since:
                due = min(partial_since.values()) + max_age
                timeout = min(timeout, max(0.0, due - self.timer.monotonic()))
            await first_of(
                self.spool.wait_written(seen), self.timer.sleep(timeout), self.stop.wait()
            )
            seen = self.spool.write_count
        # Let the render stage finish what was cut, then tell the sender to stop.
        await self._cuts.put(None)

    async def _take(self, room: int, flush: set[Stream]) -> Take:
        acks = self.acks.snapshot()
        try:
            take = await self.outbox.take(
                max_batches=max(1, room),
                max_records=self.config.batch_max_records,
                flush=flush,
                acknowledge=acks,
                now=self.clock.now(),
            )
        except SpoolUnavailableError as exc:
            # Busy past the timeout, or full: the records stay where they are; try again soon.
            log.warning("uplink cannot cut batches right now: %s", exc)
            await first_of(self.timer.sleep(SPOOL_RETRY_S), self.stop.wait())
            return Take((), 0, {})
        self.acks.committed(acks)
        return take


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
