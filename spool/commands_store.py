"""What head-end commands keep in the spool: the audit log, the replay cache, the archive
overlay (meters added, changed or removed by command) and the relay state last commanded.

* **Audit**: every command received, accepted or not, is one ``command_audit`` row and, in the
  same transaction, one event (source ``commands``, type ``command.<status>``) that the uplink
  forwards on ``events``. The event's subject is ``<command id>#<audit id>``: unique even for
  junk that arrives in the same microsecond, so no audit event is ever lost to a key clash.
* **Replay cache**: :meth:`CommandsStore.admit` inserts an accepted command's id and writes its
  audit record in one transaction; an id already there is a replay, audited as such instead.
  Rows are kept until ``keep_until`` (clock window + longest lifetime) and then pruned, so a
  replay after a restart is still recognised while the command could still be valid.
* **Archive overlay**: a meter set or removed by command, applied over the TOML archive at start.
* **Relay state**: what was last commanded and confirmed per meter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import aiosqlite

from spool import codec
from spool.records import Event, JSONValue, check_meter

if TYPE_CHECKING:
    from spool.store import Spool

#: the event source of every audit record
AUDIT_SOURCE: Final = "commands"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_INSERT_AUDIT: Final = (
    "INSERT INTO command_audit (command, type, key_id, status, reason, at_us, at, details)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (source, type, subject, event_us, event_time, details) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


def _us(moment: datetime) -> int:
    return (codec.require_aware("time", moment) - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the audit log: what arrived (``command`` is ``""`` when it had no usable
    id), what became of it, and why."""

    command: str
    type: str
    key_id: str
    status: str
    reason: str | None
    at: datetime
    details: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codec.require_aware("at", self.at)
        if not self.status:
            raise ValueError("status must be non-empty")
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    record: AuditRecord


@dataclass(frozen=True, slots=True)
class ArchiveChange:
    """A meter set (added or modified: ``config`` is its whole ``[[meter]]`` table) or removed."""

    meter: str
    action: str  # "set" | "remove"
    config: Mapping[str, Any]
    command: str
    changed: datetime

    def __post_init__(self) -> None:
        check_meter(self.meter)
        if self.action not in ("set", "remove"):
            raise ValueError(f"archive action must be set or remove, got {self.action!r}")
        codec.require_aware("changed", self.changed)


async def _append(conn: aiosqlite.Connection, records: Sequence[AuditRecord]) -> list[int]:
    ids: list[int] = []
    for r in records:
        details = codec.dumps(r.details)
        cursor = await conn.execute(
            _INSERT_AUDIT,
            (r.command, r.type, r.key_id, r.status, r.reason, _us(r.at), r.at.isoformat(), details),
        )
        audit_id = int(cursor.lastrowid or 0)
        ids.append(audit_id)
        event_details: dict[str, JSONValue] = {
            "id": r.command or None,
            "type": r.type,
            "key": r.key_id or None,
            "status": r.status,
            "reason": r.reason,
            "audit": audit_id,
            **dict(r.details),
        }
        event = Event(
            AUDIT_SOURCE, f"command.{r.status}", f"{r.command or '-'}#{audit_id}", r.at,
            event_details,
        )  # fmt: skip
        await conn.execute(_INSERT_EVENT, codec.event_row(event))
    return ids


class CommandsStore:
    """The commands' tables of one :class:`~spool.store.Spool` (same connection, same lock)."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    # -- audit and replay ------------------------------------------------------------------

    async def audit(self, records: Sequence[AuditRecord]) -> list[int]:
        """Append audit records (and their events) in one transaction; return their ids."""
        if not records:
            return []

        async def work(conn: aiosqlite.Connection) -> list[int]:
            return await _append(conn, records)

        return await self._spool._write(work)

    async def admit(
        self,
        command: str,
        key_id: str,
        *,
        seen: datetime,
        keep_until: datetime,
        accepted: AuditRecord,
        replayed: AuditRecord,
    ) -> bool:
        """Enter ``command`` in the replay cache and audit ``accepted``, or — when the id is
        already cached — audit ``replayed`` instead; one transaction. True when admitted."""

        async def work(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "INSERT INTO command_replay (command, key_id, seen_us, keep_until_us)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (command, key_id, _us(seen), _us(keep_until)),
            )
            fresh = cursor.rowcount == 1
            await _append(conn, [accepted if fresh else replayed])
            return fresh

        return await self._spool._write(work)

    async def seen(self, command: str) -> bool:
        rows = await self._spool._fetch(
            "SELECT 1 FROM command_replay WHERE command = ?", (command,)
        )
        return bool(rows)

    async def prune(self, now: datetime, audit_before: datetime | None = None) -> tuple[int, int]:
        """Drop replay ids past their keep time and audit rows older than ``audit_before``."""

        async def work(conn: aiosqlite.Connection) -> tuple[int, int]:
            replay = await conn.execute(
                "DELETE FROM command_replay WHERE keep_until_us < ?", (_us(now),)
            )
            audit = 0
            if audit_before is not None:
                cursor = await conn.execute(
                    "DELETE FROM command_audit WHERE at_us < ?", (_us(audit_before),)
                )
                audit = cursor.rowcount
            return replay.rowcount, audit

        return await self._spool._write(work)

    async def audit_log(self, command: str | None = None) -> list[AuditEntry]:
        sql = "SELECT id, command, type, key_id, status, reason, at, details FROM command_audit"
        params: tuple[Any, ...] = ()
        if command is not None:
            sql += " WHERE command = ?"
            params = (command,)
        rows = await self._spool._fetch(sql + " ORDER BY id", params)
        return [
            AuditEntry(
                int(i),
                AuditRecord(c, t, k, s, r, datetime.fromisoformat(at), codec.loads(d)),
            )
            for i, c, t, k, s, r, at, d in rows
        ]

    # -- archive overlay -------------------------------------------------------------------

    async def save_archive(self, changes: Sequence[ArchiveChange]) -> None:
        rows = [
            (c.meter, c.action, json.dumps(dict(c.config), sort_keys=True), c.command,
             c.changed.isoformat())
            for c in changes
        ]  # fmt: skip

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "INSERT INTO command_archive (meter, action, config, command, changed)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (meter) DO UPDATE SET"
                " action = excluded.action, config = excluded.config,"
                " command = excluded.command, changed = excluded.changed",
                rows,
            )

        await self._spool._write(work)

    async def archive(self) -> list[ArchiveChange]:
        rows = await self._spool._fetch(
            "SELECT meter, action, config, command, changed FROM command_archive ORDER BY meter"
        )
        return [
            ArchiveChange(m, a, json.loads(c), cmd, datetime.fromisoformat(t))
            for m, a, c, cmd, t in rows
        ]

    # -- relay state -----------------------------------------------------------------------

    async def set_relay(self, meter: str, is_open: bool, command: str, at: datetime) -> None:
        check_meter(meter)

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO command_relay (meter, open, command, changed) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (meter) DO UPDATE SET open = excluded.open,"
                " command = excluded.command, changed = excluded.changed",
                (meter, int(is_open), command, at.isoformat()),
            )

        await self._spool._write(work)

    async def forget_relay(self, meter: str) -> None:
        """No definite commanded state any more (close-allowed waits for the customer)."""

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM command_relay WHERE meter = ?", (meter,))

        await self._spool._write(work)

    async def relay_states(self) -> dict[str, bool]:
        return {m: is_open for m, (is_open, _) in (await self.relay_commands()).items()}

    async def relay_commands(self) -> dict[str, tuple[bool, datetime]]:
        """Per meter: the relay state last commanded and confirmed (open?), and when."""
        rows = await self._spool._fetch("SELECT meter, open, changed FROM command_relay")
        return {str(m): (bool(o), datetime.fromisoformat(t)) for m, o, t in rows}
