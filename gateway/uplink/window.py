"""The publish window of one connection: which batches are in flight, and waiting for room.

A batch takes a slot when it is handed to the broker and gives it back when it is acknowledged:
at its PUBACK in ``broker`` mode, at the head-end's ack in ``headend`` mode (so a head-end that
stops confirming holds the gateway to ``size`` unconfirmed batches instead of a flood). The
window belongs to one connection; when it breaks, every batch still in it stays open in the
outbox and is sent again, in ``seq`` order, on the next connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from spool import Batch


@dataclass(slots=True)
class InFlight:
    batch: Batch
    payload: bytes | bytearray
    sent_at: float
    published: bool = False  # the broker's PUBACK arrived
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Window:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window must be >= 1, got {size}")
        self.size = size
        self.inflight: dict[int, InFlight] = {}
        self._changed = asyncio.Event()
        # The sender waiting for a slot (one waiter at most: batches go out one at a time).
        self._room: asyncio.Future[None] | None = None
        self._woken = False

    @property
    def free(self) -> int:
        return self.size - len(self.inflight)

    def add(self, entry: InFlight) -> None:
        self.inflight[entry.batch.seq] = entry
        self._changed.set()

    def release(self, seq: int) -> InFlight | None:
        """Give the slot of ``seq`` back (idempotent); return its entry if it was in flight."""
        entry = self.inflight.pop(seq, None)
        self._changed.set()
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        return entry

    def published(self, entry: InFlight) -> None:
        entry.published = True
        self._changed.set()

    async def wait_free(self) -> None:
        """Until a slot is free, or :meth:`wake` was called (the uplink is stopping)."""
        while self.free <= 0 and not self._woken:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    def wake(self) -> None:
        """Let :meth:`wait_free` return now and from now on, free slot or not."""
        self._woken = True
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    async def wait_settled(self, *, keep_published: bool) -> None:
        """Until nothing waits for a PUBACK (``keep_published``: published entries may stay,
        as they do in head-end mode until the head-end answers), or the window is empty."""
        while any(not e.published for e in self.inflight.values()) or (
            self.inflight and not keep_published
        ):
            self._changed.clear()
            await self._changed.wait()

    def cancel_all(self) -> None:
        for entry in self.inflight.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
