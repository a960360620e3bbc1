"""Prepared batches: the JSON of batches cut while the broker is away, written ahead into
segment files beside the spool, so that a backlog drains at the speed of publishing.

Rendering a batch is most of what a drain costs (:mod:`spool.render`). While the uplink is
disconnected the outbox cuts full batches as records arrive and renders them straight away
(:meth:`spool.outbox.Outbox.prepare`); each one's whole message (the uplink's envelope around
the records, exactly what will be published) goes here and an index row per batch goes into
``outbox_prepared`` (segment, offset, size, records). When the broker is back, those batches
are open batches like any other and are sent from here: a run of adjacent batches is read with
one ``preadv`` straight into a buffer per message, published as it is: no rendering, no copy.

Prepared payloads are a cache of what the records render to, never the only copy: the records
stay in their tables, and a batch with no index row (or whose bytes cannot be read back as
written) is rendered from them as before. That keeps the rules simple:

* **durability** — bytes are written and ``fsync``-ed (the directory too, for a new segment)
  before the transaction that records their index rows commits. A crash in between leaves
  bytes no row points at, never a row pointing at bytes not on disk;
* **lifetime** — an index row goes with its batch (a trigger on ``outbox_batches``, so an
  acknowledgement and eviction both remove it); a segment file no row points at is deleted by
  :meth:`Prepared.sweep`, which the outbox runs after it commits acknowledgements. A new
  process never appends to an old segment (its tail may be a crash's leftovers). Segments are
  named by a random 64-bit number, never reused: index rows restored from a backup cannot
  point into another history's file, they find no file and are rendered again;
* **space** — the spool's cap counts prepared bytes, and eviction drops every prepared batch
  before it evicts a single record (:mod:`spool.caps`); preparing stops short of the cap and
  leaves a share of the file system free (:data:`FREE_RESERVE`), so the cache can never be
  what fills the disk under the records it caches;
* **reads are checked** — a message read back must have its recorded size and the envelope
  this batch would get now (number, count, gateway and stream in its head; its tail); anything
  else (a damaged file, a changed gateway id or payload format) is counted, logged and
  rendered from the records.

Segment files are ``<16 hex digits>.json`` in ``<spool file>-prepared/``, at most about
:data:`SEGMENT_BYTES` each (a call that crosses it finishes in the segment it began in).
Everything here runs on the outbox's worker thread, with the worker's connection.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from spool.errors import SpoolFullError, SpoolUnavailableError
from spool.streams import Batch, BatchRef

log = logging.getLogger("amigw.spool.prepared")

#: a segment file is closed for appending once it holds this much
SEGMENT_BYTES: Final = 64 * 1024 * 1024
#: preparing stops while less than this share of the file system would be left free
FREE_RESERVE: Final = 0.2
_SUFFIX: Final = ".json"
#: buffers per preadv call (Linux's IOV_MAX is 1024)
_IOV: Final = 512
#: the head and tail a batch's message must have: the envelope around no records
Frame = Callable[[BatchRef, int], tuple[bytes, bytes]]

# One row for any number of batches (the worker's thread gives the interpreter back to the
# event loop between rows, so a row per batch would cost a hand-over per batch).
_INDEX: Final = (
    "SELECT group_concat(seq || ' ' || segment || ' ' || at || ' ' || size || ' ' || records, "
    "' ') FROM outbox_prepared WHERE seq IN (SELECT value FROM json_each(?))"
)
_INSERT: Final = (
    "INSERT OR REPLACE INTO outbox_prepared (seq, segment, at, size, records) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]') "
    "FROM json_each(?)"
)
#: prepared batches and bytes now (one row)
TOTALS: Final = "SELECT count(*), coalesce(sum(size), 0) FROM outbox_prepared"


def directory_of(spool_path: Path) -> Path:
    """Where the segment files of the spool at ``spool_path`` live."""
    return spool_path.with_name(spool_path.name + "-prepared")


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one prepared message lies: its batch, segment, offset, size and records."""

    seq: int
    segment: int
    at: int
    size: int
    records: int


class Prepared:
    """The segment files of one spool and their index rows (worker thread only)."""

    def __init__(self, spool_path: Path) -> None:
        self.directory = directory_of(spool_path)
        self._segment: int | None = None  # the one appended to, opened on first store
        self._fd: int | None = None
        self._size = 0
        #: whether files may exist that a sweep should look at
        self._dirty = True
        self.unreadable = 0

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._segment = None

    # -- writing -------------------------------------------------------------------------------

    def room(self, incoming: int) -> bool:
        """Whether ``incoming`` more bytes leave the file system its reserve."""
        try:
            self.directory.mkdir(exist_ok=True)
            fs = os.statvfs(self.directory)
        except OSError:
            return False
        total = fs.f_blocks * fs.f_frsize
        free = fs.f_bavail * fs.f_frsize
        return free - incoming >= FREE_RESERVE * total

    def store(self, conn: sqlite3.Connection, messages: Iterable[tuple[Batch, bytes]]) -> int:
        """Append the batches' messages to the current segment (each written as it comes, so
        only one is held at a time), ``fsync`` it and insert their index rows through ``conn``
        (inside the caller's transaction, which commits them). Return the bytes written. On a
        write error the segment is cut back and the error raised as a
        :class:`~spool.errors.SpoolUnavailableError` (``SpoolFullError`` for a full disk)."""
        fd: int | None = None
        segment = start = at = 0
        rows: list[tuple[int, int, int, int, int]] = []
        try:
            for batch, message in messages:
                if not batch.count:
                    continue
                if fd is None:
                    fd, segment, start = self._writable(len(message))
                    at = start
                _write_all(fd, [memoryview(message)])
                rows.append((batch.seq, segment, at, len(message), batch.count))
                at += len(message)
            if fd is None:
                return 0
            os.fsync(fd)
        except OSError as exc:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                self.close()  # a fresh segment next time: this one's end is uncertain
            raise _unavailable(self.directory, exc) from exc
        self._size = at
        self._dirty = True
        conn.execute(_INSERT, (json.dumps(rows),))
        return at - start

    def _writable(self, incoming: int) -> tuple[int, int, int]:
        if self._fd is not None and self._segment is not None:
            if self._size == 0 or self._size + incoming <= SEGMENT_BYTES:
                return self._fd, self._segment, self._size
            self.close()
        try:
            self.directory.mkdir(exist_ok=True)
            segment = secrets.randbits(63)  # SQLite's INTEGER is signed 64-bit
            path = self._path(segment)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
            _fsync_directory(self.directory)
        except OSError as exc:
            raise _unavailable(self.directory, exc) from exc
        self._fd, self._segment, self._size = fd, segment, 0
        return fd, segment, 0

    # -- reading -------------------------------------------------------------------------------

    def load(
        self, conn: sqlite3.Connection, refs: Sequence[BatchRef], frame: Frame
    ) -> dict[int, tuple[int, bytearray]]:
        """The prepared messages of those of ``refs`` that have one: ``seq -> (records,
        message)``. ``frame(ref, records)`` is the head and tail the message must have.

        A batch whose bytes are missing or not as expected loses its index row (counted in
        :attr:`unreadable`, logged) and is left out, to be rendered from its records."""
        ready, bad = self.read(refs, self.index(conn, refs), frame)
        self.forget(conn, bad)
        return ready

    def index(self, conn: sqlite3.Connection, refs: Sequence[BatchRef]) -> dict[int, Entry]:
        """Where the prepared messages of those of ``refs`` that have one lie (one query)."""
        if not refs:
            return {}
        (text,) = conn.execute(_INDEX, (json.dumps([r.seq for r in refs]),)).fetchone()
        numbers = [int(n) for n in str(text or "").split()]
        return {numbers[i]: Entry(*numbers[i : i + 5]) for i in range(0, len(numbers), 5)}

    def read(
        self, refs: Sequence[BatchRef], index: Mapping[int, Entry], frame: Frame
    ) -> tuple[dict[int, tuple[int, bytearray]], list[Entry]]:
        """The messages of those of ``refs`` in ``index``, and the entries that could not be
        read as expected. Only files are touched: any thread may call it."""
        by_seq = {r.seq: r for r in refs}
        out: dict[int, tuple[int, bytearray]] = {}
        bad: list[Entry] = []
        for run in _runs(index[seq] for seq in by_seq if seq in index):
            try:
                buffers = self._read(run)
            except OSError as exc:
                log.warning(
                    "prepared segment %x unreadable (%s): rendering again", run[0].segment, exc
                )
                bad.extend(run)
                continue
            for entry, message in zip(run, buffers, strict=True):
                head, tail = frame(by_seq[entry.seq], entry.records)
                if (
                    message is not None
                    and len(message) > len(head) + len(tail)
                    and message.startswith(head)
                    and message.endswith(tail)
                ):
                    out[entry.seq] = (entry.records, message)
                else:
                    bad.append(entry)
        return out, bad

    def forget(self, conn: sqlite3.Connection, bad: Sequence[Entry]) -> None:
        """Count, log and drop the index rows of messages that were not as expected (their
        batches are rendered from the records)."""
        if not bad:
            return
        self.unreadable += len(bad)
        log.warning(
            "%d prepared batch(es) not as written (first seq %d): rendering them again",
            len(bad), bad[0].seq,
        )  # fmt: skip
        conn.execute(
            "DELETE FROM outbox_prepared WHERE seq IN (SELECT value FROM json_each(?))",
            (json.dumps([e.seq for e in bad]),),
        )

    def _read(self, run: Sequence[Entry]) -> list[bytearray | None]:
        """The messages of a run of adjacent batches, each in a buffer of its own, read with
        as few ``preadv`` calls as the kernel allows; None for one the file ends inside."""
        buffers = [bytearray(e.size) for e in run]
        done: list[bytearray | None] = []
        fd = os.open(self._path(run[0].segment), os.O_RDONLY)
        try:
            at = run[0].at
            for start in range(0, len(buffers), _IOV):
                chunk = buffers[start : start + _IOV]
                got = os.preadv(fd, chunk, at)
                for buffer in chunk:
                    done.append(buffer if got >= len(buffer) else None)
                    got -= len(buffer)
                    at += len(buffer)
        finally:
            os.close(fd)
        return done

    # -- housekeeping --------------------------------------------------------------------------

    def sweep(self, conn: sqlite3.Connection) -> int:
        """Delete the segment files no index row points at (but the one being appended to);
        return how many went. Cheap when there is nothing to do."""
        if not self._dirty:
            return 0
        used = {int(s) for (s,) in conn.execute("SELECT DISTINCT segment FROM outbox_prepared")}
        removed = 0
        for number in self._numbers():
            if number in used or number == self._segment:
                continue
            with contextlib.suppress(FileNotFoundError):
                self._path(number).unlink()
                removed += 1
        if not used and self._segment is not None:
            # Everything the current segment held was sent: the next batch starts a new file.
            number = self._segment
            self.close()
            with contextlib.suppress(FileNotFoundError):
                self._path(number).unlink()
                removed += 1
        self._dirty = bool(used)
        return removed

    def _numbers(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        stems = [n[: -len(_SUFFIX)] for n in names if n.endswith(_SUFFIX)]
        return [int(stem, 16) for stem in stems if len(stem) == 16 and _is_hex(stem)]

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:016x}{_SUFFIX}"


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _runs(entries: Iterable[Entry]) -> list[list[Entry]]:
    """Entries grouped into runs that lie back to back in one segment (one read each)."""
    runs: list[list[Entry]] = []
    for entry in sorted(entries, key=lambda e: (e.segment, e.at)):
        if runs:
            last = runs[-1][-1]
            if last.segment == entry.segment and last.at + last.size == entry.at:
                runs[-1].append(entry)
                continue
        runs.append([entry])
    return runs


def _write_all(fd: int, pieces: Sequence[memoryview]) -> None:
    # writev takes at most IOV_MAX buffers and may write short: loop until all is out.
    pending = [p for p in pieces if len(p)]
    while pending:
        written = os.writev(fd, pending[:512])
        while written and pending:
            if written >= len(pending[0]):
                written -= len(pending[0])
                pending.pop(0)
            else:
                pending[0] = pending[0][written:]
                written = 0


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unavailable(directory: Path, exc: OSError) -> SpoolUnavailableError:
    detail = f"prepared batches in {directory}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFullError(directory, detail)
    return SpoolUnavailableError(directory, detail)
