"""The spool's schema as an ordered list of migrations, and the code that applies them.

``PRAGMA user_version`` is the number of migrations applied. Each migration is a list of SQL
statements run in ONE transaction together with the ``user_version`` bump, so a power cut in
the middle of a migration leaves the previous version intact and the next open retries it.
To extend the schema (the uplink outbox is next), append a :class:`Migration`; never edit or
reorder one that has shipped.

Tables are ``STRICT`` (SQLite >= 3.37), so a Decimal written as TEXT can never be silently
coerced to REAL. ``kind`` and ``quality`` carry no CHECK list on purpose: their StrEnums validate
them, and a new kind must not need a table rebuild.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiosqlite

from spool.errors import SpoolVersionError

MIN_SQLITE: Final = (3, 37, 0)


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    statements: tuple[str, ...]


_METER_CHECK = "length(meter) = 12 AND meter NOT GLOB '*[^0-9]*'"

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        "readings, collection ledger, events",
        (
            # AUTOINCREMENT: ids are never reused after rows are pruned, so a later outbox can
            # keep a high-water mark on readings.id without skipping a reused id.
            f"""
            CREATE TABLE readings (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                meter       TEXT    NOT NULL CHECK ({_METER_CHECK}),
                di          TEXT    NOT NULL
                            CHECK (length(di) IN (4, 8) AND di NOT GLOB '*[^0-9A-F]*'),
                data_epoch  INTEGER NOT NULL,
                data_time   TEXT    NOT NULL,
                read_time   TEXT    NOT NULL,
                kind        TEXT    NOT NULL,
                quality     TEXT    NOT NULL,
                source      TEXT    NOT NULL,
                value_json  TEXT    NOT NULL,
                UNIQUE (meter, di, data_epoch)
            ) STRICT
            """,
            "CREATE INDEX readings_by_time ON readings (data_epoch)",
            f"""
            CREATE TABLE ledger (
                meter        TEXT    NOT NULL CHECK ({_METER_CHECK}),
                day          TEXT    NOT NULL
                             CHECK (day GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
                item         TEXT    NOT NULL CHECK (item <> ''),
                state        TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
                attempts     INTEGER NOT NULL CHECK (attempts >= 0),
                reason       TEXT,
                next_attempt TEXT,
                updated      TEXT    NOT NULL,
                PRIMARY KEY (meter, day, item)
            ) STRICT, WITHOUT ROWID
            """,
            "CREATE INDEX ledger_by_day ON ledger (day, state)",
            # Partial: the open work is a small slice of a ledger that grows by the day.
            "CREATE INDEX ledger_open ON ledger (day, meter, item) WHERE state <> 'done'",
            """
            CREATE TABLE events (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                source      TEXT    NOT NULL,
                type        TEXT    NOT NULL CHECK (type <> ''),
                subject     TEXT    NOT NULL,
                event_us    INTEGER NOT NULL,
                event_time  TEXT    NOT NULL,
                details     TEXT    NOT NULL,
                UNIQUE (source, type, event_us, subject)
            ) STRICT
            """,
            "CREATE INDEX events_by_time ON events (event_us)",
        ),
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


def check_sqlite_version(path: Path | str) -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        need = ".".join(map(str, MIN_SQLITE))
        raise SpoolVersionError(
            path, f"SQLite {sqlite3.sqlite_version} is too old; the spool needs >= {need}"
        )


async def user_version(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def migrate(
    conn: aiosqlite.Connection,
    path: Path | str,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> int:
    """Bring the database up to ``len(migrations)``; return the resulting version.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Raises
    :class:`SpoolVersionError` for a file newer than ``migrations`` knows; sqlite3 errors
    propagate untranslated (the caller is the seam).
    """
    target = len(migrations)
    while True:
        # IMMEDIATE takes the write lock first, so two processes opening the same new file
        # cannot both apply a migration: the second sees the bumped version and stops.
        try:
            await conn.execute("BEGIN IMMEDIATE")
            current = await user_version(conn)
            if current > target:
                raise SpoolVersionError(
                    path,
                    f"schema version {current} is newer than this amigw knows ({target}); "
                    "upgrade amigw instead of downgrading the spool",
                )
            if current == target:
                await conn.rollback()
                return current
            for statement in migrations[current].statements:
                await conn.execute(statement)
            # PRAGMA takes no bound parameters; the value is our own int.
            await conn.execute(f"PRAGMA user_version = {current + 1:d}")
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
