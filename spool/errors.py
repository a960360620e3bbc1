"""The spool's exception tree, grouped by what the caller should do, and the one seam that maps
``sqlite3`` errors onto it.

* :class:`SpoolCorruptError` — the file is damaged (not a database, ``quick_check`` failed,
  "malformed"). Stop using it: move it aside, start a fresh spool, raise an alarm.
* :class:`SpoolVersionError` — the file was written by a newer amigw (or this SQLite is too old).
  Upgrade; never downgrade a spool.
* :class:`SpoolUnavailableError` — the environment refused: busy or locked past the busy
  timeout, disk full, I/O error, cannot open, read-only. Nothing was written; retry later.
  :class:`SpoolFullError` is its disk-full (``SQLITE_FULL``) case: the store evicts by value
  and retries once before raising it (see :mod:`spool.caps`).
* :class:`SpoolIntegrityError` — we handed the store a record its schema refuses (a bug on our
  side). The whole transaction was rolled back; nothing of it was written.
* :class:`SpoolClosedError` — the spool was used after :meth:`Spool.close` (a bug).

Every message names the database file, because on a box with several spools (or a spool copied
off a box for analysis) the file is the first thing an engineer needs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class SpoolError(Exception):
    """Base of every error raised by :mod:`spool`."""

    def __init__(self, path: Path | str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = str(path)
        self.detail = detail


class SpoolCorruptError(SpoolError):
    """The database file is damaged; it must be moved aside, not retried."""


class SpoolVersionError(SpoolError):
    """The file's schema (or the SQLite library) is outside what this amigw knows."""


class SpoolUnavailableError(SpoolError):
    """Busy, locked, full, unreadable or unwritable right now; nothing was written."""


class SpoolFullError(SpoolUnavailableError):
    """The disk (or the database's page limit) is full; nothing of the transaction was written."""


class SpoolIntegrityError(SpoolError):
    """A record violated a schema constraint; its transaction was rolled back."""


class SpoolClosedError(SpoolError):
    """The spool was used after it was closed."""


# Primary result codes (the low byte of the extended code), from sqlite3.h.
_BUSY = 5
_LOCKED = 6
_READONLY = 8
_IOERR = 10
_CORRUPT = 11
_FULL = 13
_CANTOPEN = 14
_CONSTRAINT = 19
_NOTADB = 26

_UNAVAILABLE = frozenset({_BUSY, _LOCKED, _READONLY, _IOERR, _CANTOPEN})
_CORRUPT_CODES = frozenset({_CORRUPT, _NOTADB})


def translate(exc: sqlite3.Error, path: Path | str) -> SpoolError:
    """Map a ``sqlite3`` exception to the spool's tree (the only place this happens)."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    detail = f"{exc} ({name})"
    primary = code & 0xFF if isinstance(code, int) else None
    if isinstance(exc, sqlite3.IntegrityError) or primary == _CONSTRAINT:
        return SpoolIntegrityError(path, f"record refused by the schema: {detail}")
    if primary in _CORRUPT_CODES:
        return SpoolCorruptError(path, f"database file is damaged: {detail}")
    if primary == _FULL:
        return SpoolFullError(path, f"database or disk is full: {detail}")
    if primary in _UNAVAILABLE:
        return SpoolUnavailableError(path, f"database unavailable: {detail}")
    return SpoolError(path, detail)
