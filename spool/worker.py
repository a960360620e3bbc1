"""A thread of its own with its own connection to the spool file, for work that must not wait
behind the event loop between statements: the outbox's cuts, acknowledgements and rendering.

Each job is a plain function of the ``sqlite3`` connection and runs whole on the thread, so a
job of many statements costs one hand-over between the event loop and the thread instead of
one per statement (with the loop busy publishing, each hand-over waits for a turn of the loop).
Jobs run one at a time, in the order they were submitted; a job that writes opens and commits
its own transaction (``BEGIN IMMEDIATE``; another connection's writer makes it wait up to the
busy timeout, on this thread). A job whose caller was cancelled still runs to its end: a
cancelled write is committed or rolled back whole, as on the spool's own connection.

The connection is configured like the spool's (WAL is a property of the file;
``synchronous=FULL`` and the journal size limit are per connection, so they are set here too),
then the owner's ``setup`` statements (temporary triggers, say) run on it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from spool.errors import SpoolClosedError, translate

T = TypeVar("T")

#: what the journal is truncated back to after a checkpoint (as on the spool's connection)
JOURNAL_SIZE_LIMIT: Final = 16 * 1024 * 1024

_Done = Callable[[Any, BaseException | None], None]
_Job = tuple[Callable[[sqlite3.Connection], Any], _Done]


class Worker:
    """One thread, one connection; :meth:`call` a job there, :meth:`close` when done.

    The thread starts with the first call and opens the connection for its first job; a
    connection that fails to open fails that job, and the next job tries again.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float,
        name: str = "amigw-spool",
        setup: Sequence[str] = (),
    ) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._setup = tuple(setup)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._name = name
        self._closed = False

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def call(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job(connection)`` on the thread; its sqlite3 errors come back as SpoolErrors."""
        if self._closed:
            raise SpoolClosedError(self.path, "the spool is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            # A loop closed meanwhile has no one left waiting for the answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result, error)

        self._jobs.put((job, done))
        return await future

    async def close(self) -> None:
        """Finish the jobs already submitted, close the connection and join the thread."""
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000):d}")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT:d}")
            for statement in self._setup:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while (item := self._jobs.get()) is not None:
                job, done = item
                try:
                    if conn is None:
                        conn = self._open()
                    result = job(conn)
                except sqlite3.Error as exc:
                    done(None, translate(exc, self.path))
                except BaseException as exc:  # handed to the waiting caller
                    done(None, exc)
                else:
                    done(result, None)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
