"""The spool's schema as an ordered list of migrations, and the code that applies them.

``PRAGMA user_version`` is the number of migrations applied. Each migration is a list of SQL
statements run in ONE transaction together with the ``user_version`` bump, so a power cut in
the middle of a migration leaves the previous version intact and the next open retries it.
To extend the schema, append a :class:`Migration`; never edit or reorder one that has shipped.
Migration 2 adds alarms, the ledger change log and the uplink outbox (see :mod:`spool.outbox`);
migration 3 the edge checks' alarm state, prepaid balance ledger and line loss
(see :mod:`spool.checks_store`); the head-end commands' tables (audit log, replay cache, archive
overlay, commanded relay state: :mod:`spool.commands_store`) come in a migration of their own,
written with ``IF NOT EXISTS`` so it does not depend on its neighbours.

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
    Migration(
        "alarms, ledger change log, uplink outbox, counters",
        (
            f"""
            CREATE TABLE alarms (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                meter        TEXT    NOT NULL CHECK (meter = '' OR ({_METER_CHECK})),
                type         TEXT    NOT NULL CHECK (type <> ''),
                window_us    INTEGER NOT NULL,
                window_start TEXT    NOT NULL,
                window_end   TEXT    NOT NULL,
                raised       TEXT    NOT NULL,
                severity     TEXT    NOT NULL,
                details      TEXT    NOT NULL,
                UNIQUE (meter, type, window_us)
            ) STRICT
            """,
            # The ledger is updated in place (upserts), so the uplink cannot follow it by id:
            # triggers copy every inserted or changed entry into this log, in the writer's own
            # transaction, and the outbox drains the log like any other stream. Rows leave the
            # log once the batch that carried them is acknowledged.
            """
            CREATE TABLE ledger_changes (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                meter        TEXT    NOT NULL,
                day          TEXT    NOT NULL,
                item         TEXT    NOT NULL,
                state        TEXT    NOT NULL,
                attempts     INTEGER NOT NULL,
                reason       TEXT,
                next_attempt TEXT,
                updated      TEXT    NOT NULL
            ) STRICT
            """,
            """
            CREATE TRIGGER ledger_logged_insert AFTER INSERT ON ledger BEGIN
                INSERT INTO ledger_changes
                    (meter, day, item, state, attempts, reason, next_attempt, updated)
                VALUES (NEW.meter, NEW.day, NEW.item, NEW.state, NEW.attempts, NEW.reason,
                        NEW.next_attempt, NEW.updated);
            END
            """,
            """
            CREATE TRIGGER ledger_logged_update AFTER UPDATE ON ledger BEGIN
                INSERT INTO ledger_changes
                    (meter, day, item, state, attempts, reason, next_attempt, updated)
                VALUES (NEW.meter, NEW.day, NEW.item, NEW.state, NEW.attempts, NEW.reason,
                        NEW.next_attempt, NEW.updated);
            END
            """,
            # A spool upgraded from version 1 has never sent anything: its ledger as it stands
            # is the first thing the head-end hears about collection state.
            """
            INSERT INTO ledger_changes
                (meter, day, item, state, attempts, reason, next_attempt, updated)
            SELECT meter, day, item, state, attempts, reason, next_attempt, updated
            FROM ledger ORDER BY day, meter, item
            """,
            # How far each stream has been cut into batches (the highest id taken). Records
            # above it are waiting; records at or below it are in an open batch or were sent.
            """
            CREATE TABLE outbox_cursor (
                stream TEXT    PRIMARY KEY,
                taken  INTEGER NOT NULL CHECK (taken >= 0)
            ) STRICT, WITHOUT ROWID
            """,
            """
            INSERT INTO outbox_cursor (stream, taken)
            VALUES ('alarms', 0), ('events', 0), ('ledger', 0), ('readings', 0)
            """,
            # One row per batch not yet acknowledged. AUTOINCREMENT: a sequence number is never
            # reused, even after every batch was acknowledged and deleted, so a head-end that
            # acknowledges by number can never confirm one batch for another.
            """
            CREATE TABLE outbox_batches (
                seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                stream     TEXT    NOT NULL,
                first_id   INTEGER NOT NULL,
                last_id    INTEGER NOT NULL CHECK (last_id >= first_id),
                records    INTEGER NOT NULL CHECK (records > 0),
                created_us INTEGER NOT NULL
            ) STRICT
            """,
            "CREATE INDEX outbox_batches_by_stream ON outbox_batches (stream, first_id)",
            # Cumulative counts that must survive restarts (evictions per class).
            """
            CREATE TABLE spool_counters (
                name  TEXT    PRIMARY KEY,
                value INTEGER NOT NULL
            ) STRICT, WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "edge checks: alarm state, prepaid balance ledger, line loss, checks state",
        (
            # The life of each alarm the checks raised: active while cleared_us is NULL. Keyed
            # like the alarm record itself; first_us is its first abnormal observation.
            f"""
            CREATE TABLE alarm_state (
                meter        TEXT    NOT NULL CHECK (meter = '' OR ({_METER_CHECK})),
                type         TEXT    NOT NULL CHECK (type <> ''),
                start_us     INTEGER NOT NULL,
                first_us     INTEGER NOT NULL CHECK (first_us >= start_us),
                window_start TEXT    NOT NULL,
                severity     TEXT    NOT NULL,
                raised       TEXT    NOT NULL,
                cleared_us   INTEGER,
                cleared      TEXT,
                PRIMARY KEY (meter, type, start_us)
            ) STRICT, WITHOUT ROWID
            """,
            "CREATE INDEX alarm_state_active ON alarm_state (type, meter) WHERE cleared_us IS NULL",
            "CREATE INDEX alarm_state_by_clear ON alarm_state (cleared_us)",
            # Per prepaid account, a journal in the order entries were posted; balance is the
            # running balance after the entry, year_kwh the kWh of its tariff year so far.
            # Money and energy are Decimal text (STRICT keeps them from becoming REAL).
            f"""
            CREATE TABLE balance_ledger (
                id         INTEGER PRIMARY KEY AUTOINCREMENT,
                account    TEXT    NOT NULL CHECK (account <> ''),
                kind       TEXT    NOT NULL
                           CHECK (kind IN ('opening', 'anchor', 'top_up', 'consumption')),
                ref        TEXT    NOT NULL,
                meter      TEXT    NOT NULL CHECK (meter = '' OR ({_METER_CHECK})),
                entry_us   INTEGER NOT NULL,
                entry_time TEXT    NOT NULL,
                kwh        TEXT    NOT NULL,
                amount     TEXT    NOT NULL,
                balance    TEXT    NOT NULL,
                year_kwh   TEXT    NOT NULL,
                details    TEXT    NOT NULL,
                UNIQUE (account, kind, ref)
            ) STRICT
            """,
            "CREATE INDEX balance_ledger_by_account ON balance_ledger (account, id)",
            "CREATE INDEX balance_ledger_by_time ON balance_ledger (entry_us)",
            """
            CREATE TABLE line_loss (
                district    TEXT    NOT NULL,
                day         TEXT    NOT NULL
                            CHECK (day GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
                state       TEXT    NOT NULL CHECK (state IN ('complete', 'incomplete')),
                master      TEXT    NOT NULL
                            CHECK (length(master) = 12 AND master NOT GLOB '*[^0-9]*'),
                master_kwh  TEXT,
                users_kwh   TEXT,
                rate        TEXT,
                users_read  INTEGER NOT NULL CHECK (users_read >= 0),
                users_total INTEGER NOT NULL CHECK (users_total >= users_read),
                details     TEXT    NOT NULL,
                computed    TEXT    NOT NULL,
                PRIMARY KEY (district, day)
            ) STRICT, WITHOUT ROWID
            """,
            # Small facts the checks keep across restarts (when each meter was first watched).
            """
            CREATE TABLE checks_state (
                name  TEXT PRIMARY KEY,
                value TEXT NOT NULL
            ) STRICT, WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "head-end commands: audit log, replay cache, archive overlay, commanded relay state",
        (
            # Every command received, accepted or not, in arrival order (see spool.commands_store).
            """
            CREATE TABLE IF NOT EXISTS command_audit (
                id       INTEGER PRIMARY KEY AUTOINCREMENT,
                command  TEXT    NOT NULL,
                type     TEXT    NOT NULL,
                key_id   TEXT    NOT NULL,
                status   TEXT    NOT NULL CHECK (status <> ''),
                reason   TEXT,
                at_us    INTEGER NOT NULL,
                at       TEXT    NOT NULL,
                details  TEXT    NOT NULL
            ) STRICT
            """,
            "CREATE INDEX IF NOT EXISTS command_audit_by_command ON command_audit (command)",
            "CREATE INDEX IF NOT EXISTS command_audit_by_time ON command_audit (at_us)",
            # Ids of accepted commands, kept until keep_until_us (clock window + max lifetime).
            """
            CREATE TABLE IF NOT EXISTS command_replay (
                command       TEXT    PRIMARY KEY,
                key_id        TEXT    NOT NULL,
                seen_us       INTEGER NOT NULL,
                keep_until_us INTEGER NOT NULL
            ) STRICT, WITHOUT ROWID
            """,
            "CREATE INDEX IF NOT EXISTS command_replay_by_expiry ON command_replay (keep_until_us)",
            # Meters added, changed or removed by archive commands, over the TOML archive.
            f"""
            CREATE TABLE IF NOT EXISTS command_archive (
                meter    TEXT    PRIMARY KEY CHECK ({_METER_CHECK}),
                action   TEXT    NOT NULL CHECK (action IN ('set', 'remove')),
                config   TEXT    NOT NULL,
                command  TEXT    NOT NULL,
                changed  TEXT    NOT NULL
            ) STRICT, WITHOUT ROWID
            """,
            # The relay state last commanded and confirmed per meter (the relay check reads it).
            f"""
            CREATE TABLE IF NOT EXISTS command_relay (
                meter     TEXT    PRIMARY KEY CHECK ({_METER_CHECK}),
                open      INTEGER NOT NULL CHECK (open IN (0, 1)),
                command   TEXT    NOT NULL,
                changed   TEXT    NOT NULL
            ) STRICT, WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "prepared batches: where the JSON of batches cut while the broker was away is kept",
        (
            # One row per open batch whose JSON was written ahead into a segment file beside
            # the spool (see spool.prepared): which file, where in it, how long, how many
            # records. It goes with its batch: acknowledged or evicted.
            """
            CREATE TABLE outbox_prepared (
                seq      INTEGER PRIMARY KEY,
                segment  INTEGER NOT NULL,
                at       INTEGER NOT NULL CHECK (at >= 0),
                size     INTEGER NOT NULL CHECK (size > 0),
                records  INTEGER NOT NULL CHECK (records > 0)
            ) STRICT
            """,
            "CREATE INDEX outbox_prepared_by_segment ON outbox_prepared (segment)",
            """
            CREATE TRIGGER outbox_prepared_gone AFTER DELETE ON outbox_batches BEGIN
                DELETE FROM outbox_prepared WHERE seq = OLD.seq;
            END
            """,
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
