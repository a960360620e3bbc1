"""What the edge checks keep in the spool: alarm life (raise, clear), the prepaid balance
ledger, line-loss results, and a few facts that must survive restarts.

Alarm life: a raise writes the :class:`~spool.records.Alarm` (the uplink's ``alarms`` stream)
and an ``alarm_state`` row with the same natural key ``(meter, type, window start)``; a clear
writes a second alarm record, of type ``"<type>.cleared"`` with the same meter and window start
(its own natural key, so a rewrite is a no-op) and ``window_end`` = the clear time, and marks the
state row cleared. Both happen in the transaction that decides them, so after a crash an alarm is
either raised (and published) or not, and cleared at most once.

The balance ledger is a journal per account in posting order: each entry carries the running
balance after it, computed here inside the writing transaction from the account's previous
entry, so concurrent writers (the checks now, signed head-end top-ups later) cannot
interleave a balance. ``(account, kind, ref)`` is the natural key; posting it again is a no-op.

Readings are handed to the checks undecoded into records (``id``, key columns and a plain
``{name: value}`` map) because the checks scan tens of thousands per run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import aiosqlite

from spool import codec
from spool.records import Alarm, JSONValue, Quality, ReadingKind, Severity, check_meter

if TYPE_CHECKING:
    from spool.store import Spool

#: a clear is published as an alarm record of this type suffix, same meter and window start
CLEARED_SUFFIX: Final = ".cleared"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_INSERT_ALARM: Final = (
    "INSERT INTO alarms "
    "(meter, type, window_us, window_start, window_end, raised, severity, details) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INSERT_STATE: Final = (
    "INSERT INTO alarm_state "
    "(meter, type, start_us, first_us, window_start, severity, raised, cleared_us, cleared) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT DO NOTHING"
)
_SELECT_STATE: Final = (
    "SELECT meter, type, start_us, first_us, window_start, severity, raised, cleared "
    "FROM alarm_state"
)
_SELECT_ENTRY: Final = (
    "SELECT id, account, kind, ref, meter, entry_time, kwh, amount, balance, year_kwh, details "
    "FROM balance_ledger"
)
_SELECT_LOSS: Final = (
    "SELECT district, day, state, master, master_kwh, users_kwh, rate, users_read, "
    "users_total, details, computed FROM line_loss"
)
# The same columns, details left unread (NULL).
_SELECT_LOSS_SUMMARY: Final = _SELECT_LOSS.replace("details,", "NULL,")


def _us(moment: datetime) -> int:
    return (codec.require_aware("time", moment) - _EPOCH) // timedelta(microseconds=1)


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


# -- alarm life ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlarmState:
    """One raised alarm: its key, its first abnormal observation, and when it cleared."""

    meter: str
    type: str
    window_start: datetime
    first: datetime
    severity: Severity
    raised: datetime
    cleared: datetime | None

    @property
    def active(self) -> bool:
        return self.cleared is None

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.meter, self.type, self.window_start)


@dataclass(frozen=True, slots=True)
class AlarmClear:
    """Clear the active alarm ``(meter, type, window_start)`` at ``cleared``."""

    meter: str
    type: str
    window_start: datetime
    cleared: datetime
    details: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codec.require_aware("window_start", self.window_start)
        codec.require_aware("cleared", self.cleared)
        if self.cleared < self.window_start:
            raise ValueError("an alarm cannot clear before its window starts")


# -- balance ledger --------------------------------------------------------------------------


class BalanceKind(StrEnum):
    OPENING = "opening"  # the account's opening balance
    ANCHOR = "anchor"  # a meter's first charged register values (amount 0)
    TOP_UP = "top_up"
    CONSUMPTION = "consumption"


@dataclass(frozen=True, slots=True)
class BalanceEntry:
    """A journal entry to post: ``amount`` is signed (credit +, charge -), ``year_kwh`` the
    account's kWh in the tariff year after this entry (the caller prices by it)."""

    account: str
    kind: BalanceKind
    ref: str
    meter: str
    entry_time: datetime
    kwh: Decimal
    amount: Decimal
    year_kwh: Decimal
    details: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.account or not self.ref:
            raise ValueError("account and ref must be non-empty")
        if self.meter:
            check_meter(self.meter)
        codec.require_aware("entry_time", self.entry_time)
        for name in ("kwh", "amount", "year_kwh"):
            if not isinstance(getattr(self, name), Decimal):
                raise TypeError(f"{name} must be a Decimal, got {getattr(self, name)!r}")
        object.__setattr__(self, "kind", BalanceKind(self.kind))
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.account, self.kind.value, self.ref)


@dataclass(frozen=True, slots=True)
class PostedEntry:
    """An entry as the journal holds it, with its id and the running balance after it."""

    id: int
    entry: BalanceEntry
    balance: Decimal


# -- line loss -------------------------------------------------------------------------------


class LineLossState(StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True, slots=True)
class LineLossResult:
    """One district's line loss for one day (``rate`` is a fraction, ``None`` if incomplete)."""

    district: str
    day: date
    state: LineLossState
    master: str
    master_kwh: Decimal | None
    users_kwh: Decimal | None
    rate: Decimal | None
    users_read: int
    users_total: int
    computed: datetime
    details: Mapping[str, JSONValue] = field(default_factory=dict)

    def summary(self) -> LineLossResult:
        """The result without its details (every user's register pair): what a checker keeps
        of a month of results; the details stay in the spool and in the published event."""
        return replace(self, details=_NO_DETAILS)


_NO_DETAILS: Final[Mapping[str, JSONValue]] = MappingProxyType({})


# -- readings, as the checks scan them --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanRow:
    """A stored reading in the form the checks scan: values as plain scalars."""

    id: int
    meter: str
    di: str
    kind: ReadingKind
    data_time: datetime
    read_time: datetime
    quality: Quality
    values: Mapping[str, Any]


def _scan_values(text: str, names: Collection[str] | None = None) -> dict[str, Any]:
    raw: dict[str, dict[str, Any]] = json.loads(text)
    out: dict[str, Any] = {}
    for name, item in raw.items():
        if names is not None and name not in names:
            continue
        value = item["v"]
        if isinstance(value, dict):
            value = Decimal(value[codec.DECIMAL_TAG])
        # Value names repeat in every row; one shared string each, not one per row.
        out[sys.intern(name)] = value
    return out


class _Times:
    """Stored times parsed once per distinct text within one scan, with one offset object per
    distinct offset: most meters' daily values share a midnight, and every parsed time would
    otherwise carry its own ``timezone``."""

    __slots__ = ("_offsets", "_seen")

    def __init__(self) -> None:
        self._seen: dict[str, datetime] = {}
        self._offsets: dict[tzinfo | None, tzinfo | None] = {}

    def parse(self, text: str) -> datetime:
        moment = self._seen.get(text)
        if moment is None:
            moment = datetime.fromisoformat(text)
            zone = self._offsets.setdefault(moment.tzinfo, moment.tzinfo)
            if zone is not moment.tzinfo:
                moment = moment.replace(tzinfo=zone)
            self._seen[text] = moment
        return moment


_KINDS: Final = {k.value: k for k in ReadingKind}
#: the columns a ScanRow is made of, in its order
_SCAN: Final = "SELECT id, meter, di, kind, data_time, read_time, quality, value_json FROM readings"


def _marks(values: Sequence[object]) -> str:
    """One bound parameter per value, for an ``IN (...)`` list."""
    return ", ".join("?" * len(values))


_QUALITIES: Final = {q.value: q for q in Quality}


def _scan_rows(
    rows: Sequence[Sequence[Any]], names: Collection[str] | None = None
) -> list[ScanRow]:
    times = _Times()
    return [
        ScanRow(
            int(r[0]), r[1], r[2], _KINDS[r[3]], times.parse(r[4]), times.parse(r[5]),
            _QUALITIES[r[6]], _scan_values(r[7], names),
        )
        for r in rows
    ]  # fmt: skip


class ChecksStore:
    """The checks' tables of one :class:`~spool.store.Spool` (same connection, same lock)."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    # -- alarm life ------------------------------------------------------------------------

    async def apply_alarms(
        self, raises: Sequence[Alarm], clears: Sequence[AlarmClear]
    ) -> tuple[int, int]:
        """Raise and clear in one transaction; return ``(raised, cleared)`` actually done.

        A raise whose key is already known, or a clear of an alarm that is not active, is
        skipped; each raise's ``window_end`` is recorded as its first abnormal observation.
        """
        if not raises and not clears:
            return (0, 0)
        raise_rows = [
            (codec.alarm_row(a), _us(a.window_end), a.window_start.isoformat()) for a in raises
        ]

        async def work(conn: aiosqlite.Connection) -> tuple[int, int]:
            cleared = 0
            known = await _known_keys(conn, [(r[0], r[1], r[2]) for r, _, _ in raise_rows])
            fresh = [x for x in raise_rows if (x[0][0], x[0][1], x[0][2]) not in known]
            if fresh:
                await conn.executemany(
                    _INSERT_STATE,
                    [(r[0], r[1], r[2], first, start, r[6], r[5]) for r, first, start in fresh],
                )
                await conn.executemany(_INSERT_ALARM, [r for r, _, _ in fresh])
            for c in clears:
                cursor = await conn.execute(
                    "UPDATE alarm_state SET cleared_us = ?, cleared = ? WHERE meter = ? AND "
                    "type = ? AND start_us = ? AND cleared_us IS NULL RETURNING severity",
                    (_us(c.cleared), c.cleared.isoformat(), c.meter, c.type, _us(c.window_start)),
                )
                state = await cursor.fetchone()
                if state is None:
                    continue
                record = Alarm(
                    meter=c.meter,
                    type=c.type + CLEARED_SUFFIX,
                    window_start=c.window_start,
                    window_end=c.cleared,
                    raised=c.cleared,
                    severity=Severity(state[0]),
                    details=c.details,
                )
                await conn.execute(_INSERT_ALARM, codec.alarm_row(record))
                cleared += 1
            return len(fresh), cleared

        return await self._spool._write(work)

    async def alarm_states(
        self,
        *,
        cleared_since: datetime | None = None,
        types: Collection[str] | None = None,
        meter: str | None = None,
        active_only: bool = False,
    ) -> list[AlarmState]:
        """Active alarms, plus (unless ``active_only``) those cleared at or after
        ``cleared_since`` (all cleared ones when it is ``None``); by meter, type, start."""
        where: list[str] = []
        params: list[Any] = []
        if active_only:
            where.append("cleared_us IS NULL")
        elif cleared_since is not None:
            where.append("(cleared_us IS NULL OR cleared_us >= ?)")
            params.append(_us(cleared_since))
        if meter is not None:
            where.append("meter = ?")
            params.append(meter)
        if types is not None:
            wanted = sorted(set(types))
            if not wanted:
                return []
            where.append(f"type IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._spool._fetch(
            f"{_SELECT_STATE}{clause} ORDER BY meter, type, start_us", params
        )
        return [_row_state(r) for r in rows]

    async def active_alarms(
        self, *, meter: str | None = None, types: Collection[str] | None = None
    ) -> list[AlarmState]:
        return await self.alarm_states(meter=meter, types=types, active_only=True)

    # -- balance ledger ----------------------------------------------------------------------

    async def post_balance(self, entries: Sequence[BalanceEntry]) -> list[PostedEntry]:
        """Append the entries not yet in the journal, in order, in one transaction; return
        them as posted (with ids and running balances)."""
        if not entries:
            return []

        async def work(conn: aiosqlite.Connection) -> list[PostedEntry]:
            known = await _known_refs(conn, [e.key for e in entries])
            accounts = sorted({e.account for e in entries})
            balances = await _last_balances(conn, accounts)
            seen: set[tuple[str, str, str]] = set()
            rows: list[tuple[object, ...]] = []
            todo: list[tuple[BalanceEntry, Decimal]] = []
            for e in entries:
                if e.key in known or e.key in seen:
                    continue
                seen.add(e.key)
                balance = balances.get(e.account, Decimal(0)) + e.amount
                balances[e.account] = balance
                todo.append((e, balance))
                rows.append(
                    (
                        e.account, e.kind.value, e.ref, e.meter, _us(e.entry_time),
                        e.entry_time.isoformat(), str(e.kwh), str(e.amount), str(balance),
                        str(e.year_kwh), codec.dumps(e.details),
                    )
                )  # fmt: skip
            if not rows:
                return []
            cursor = await conn.execute("SELECT coalesce(max(id), 0) FROM balance_ledger")
            top = await cursor.fetchone()
            await conn.executemany(
                "INSERT INTO balance_ledger (account, kind, ref, meter, entry_us, entry_time,"
                " kwh, amount, balance, year_kwh, details)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            cursor = await conn.execute(
                "SELECT account, kind, ref, id FROM balance_ledger WHERE id > ?",
                (int(top[0]) if top is not None else 0,),
            )
            ids = {(a, k, r): int(i) for a, k, r, i in await cursor.fetchall()}
            return [PostedEntry(ids[e.key], e, balance) for e, balance in todo]

        return await self._spool._write(work)

    async def balance_entries(
        self,
        account: str | None = None,
        *,
        after_id: int = 0,
        since: datetime | None = None,
    ) -> list[PostedEntry]:
        """Journal entries in posting order; ``since`` filters on the entry time."""
        where = ["id > ?"]
        params: list[Any] = [after_id]
        if account is not None:
            where.append("account = ?")
            params.append(account)
        if since is not None:
            where.append("entry_us >= ?")
            params.append(_us(since))
        rows = await self._spool._fetch(
            f"{_SELECT_ENTRY} WHERE {' AND '.join(where)} ORDER BY id", params
        )
        return [_row_entry(r) for r in rows]

    async def latest_balance_entries(self) -> dict[str, PostedEntry]:
        """Each account's last journal entry (its current balance)."""
        latest = "WHERE id IN (SELECT max(id) FROM balance_ledger GROUP BY account)"
        rows = await self._spool._fetch(f"{_SELECT_ENTRY} {latest}")
        return {r[1]: _row_entry(r) for r in rows}

    async def balance(self, account: str) -> Decimal | None:
        """The account's balance after its last entry, or ``None`` before its first."""
        rows = await self._spool._fetch(
            "SELECT balance FROM balance_ledger WHERE account = ? ORDER BY id DESC LIMIT 1",
            (account,),
        )
        return Decimal(rows[0][0]) if rows else None

    # -- line loss ---------------------------------------------------------------------------

    async def save_line_loss(self, results: Sequence[LineLossResult]) -> int:
        """Store results by ``(district, day)``; a complete result is final (never replaced),
        an incomplete one is replaced by a later one. Return how many rows changed."""
        rows = [
            (
                r.district, r.day.isoformat(), r.state.value, r.master,
                None if r.master_kwh is None else str(r.master_kwh),
                None if r.users_kwh is None else str(r.users_kwh),
                None if r.rate is None else str(r.rate),
                r.users_read, r.users_total, codec.dumps(r.details), r.computed.isoformat(),
            )
            for r in results
        ]  # fmt: skip
        if not rows:
            return 0

        async def work(conn: aiosqlite.Connection) -> int:
            changed = 0
            for row in rows:
                cursor = await conn.execute(
                    "INSERT INTO line_loss (district, day, state, master, master_kwh, users_kwh,"
                    " rate, users_read, users_total, details, computed)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (district, day) DO UPDATE SET state = excluded.state,"
                    " master = excluded.master, master_kwh = excluded.master_kwh,"
                    " users_kwh = excluded.users_kwh, rate = excluded.rate,"
                    " users_read = excluded.users_read, users_total = excluded.users_total,"
                    " details = excluded.details, computed = excluded.computed"
                    " WHERE line_loss.state = 'incomplete' AND (excluded.state = 'complete'"
                    " OR excluded.users_read <> line_loss.users_read)",
                    row,
                )
                changed += cursor.rowcount
            return changed

        return await self._spool._write(work)

    async def line_losses(
        self, *, district: str | None = None, since: date | None = None, details: bool = True
    ) -> list[LineLossResult]:
        """Results by day and district; ``details=False``: their :meth:`~LineLossResult.summary`
        (the details neither read nor decoded)."""
        where: list[str] = []
        params: list[Any] = []
        if district is not None:
            where.append("district = ?")
            params.append(district)
        if since is not None:
            where.append("day >= ?")
            params.append(since.isoformat())
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        select = _SELECT_LOSS if details else _SELECT_LOSS_SUMMARY
        rows = await self._spool._fetch(f"{select}{clause} ORDER BY day, district", params)
        return [_row_loss(r) for r in rows]

    # -- state that survives restarts ----------------------------------------------------------

    async def state(self, prefix: str = "") -> dict[str, str]:
        rows = await self._spool._fetch(
            "SELECT name, value FROM checks_state WHERE substr(name, 1, ?) = ?",
            (len(prefix), prefix),
        )
        return {str(n): str(v) for n, v in rows}

    async def remember(self, items: Mapping[str, str]) -> int:
        """Store facts that are not known yet (a known name keeps its first value)."""
        rows = list(items.items())
        if not rows:
            return 0

        async def work(conn: aiosqlite.Connection) -> int:
            cursor = await conn.executemany(
                "INSERT INTO checks_state (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING", rows
            )
            return cursor.rowcount

        return await self._spool._write(work)

    # -- readings ------------------------------------------------------------------------------

    async def scan_readings(
        self,
        *,
        after_id: int,
        kinds: Collection[ReadingKind],
        since: datetime,
        until_id: int | None = None,
        limit: int = 50_000,
    ) -> list[ScanRow]:
        """Readings of ``kinds`` with an id above ``after_id`` (and at most ``until_id``) and a
        data time at or after ``since``, in id order, at most ``limit`` (page on with the last
        id)."""
        wanted = sorted(ReadingKind(k).value for k in kinds)
        if not wanted:
            return []
        # Only "?" marks are joined into the statement; every value is bound.
        sql = (
            f"{_SCAN} WHERE id > ? AND id <= ? AND data_epoch >= ? AND kind IN ({_marks(wanted)})"
            " ORDER BY id LIMIT ?"
        )
        top = (1 << 62) if until_id is None else until_id
        rows = await self._spool._fetch(
            sql, (after_id, top, codec.epoch_seconds_ceil(since), *wanted, limit)
        )
        return _scan_rows(rows)

    async def scan_meters(
        self,
        meters: Collection[str],
        *,
        kinds: Collection[ReadingKind],
        since: datetime,
        until_id: int,
        names: Collection[str] | None = None,
    ) -> list[ScanRow]:
        """Readings of ``meters`` of ``kinds`` with a data time at or after ``since`` and an id
        at most ``until_id``, in id order (the ``(meter, di, data_epoch)`` key finds them);
        with ``names``, only those values are decoded (the rest are left out)."""
        wanted = sorted(ReadingKind(k).value for k in kinds)
        chosen = sorted(meters)
        if not wanted or not chosen:
            return []
        # Only "?" marks are joined into the statement; every value is bound.
        sql = (
            f"{_SCAN} WHERE meter IN ({_marks(chosen)}) AND data_epoch >= ? AND id <= ?"
            f" AND kind IN ({_marks(wanted)}) ORDER BY id"
        )
        rows = await self._spool._fetch(
            sql, (*chosen, codec.epoch_seconds_ceil(since), until_id, *wanted)
        )
        return _scan_rows(rows, names)

    async def scan_touched(
        self,
        *,
        after_id: int,
        until_id: int,
        kinds: Collection[ReadingKind],
        since: datetime,
        limit: int = 50_000,
    ) -> list[tuple[int, str, datetime, datetime]]:
        """``(id, meter, data time, read time)`` of the readings :meth:`scan_readings` would
        return, values left unread: what tells the checks which meters' history changed."""
        wanted = sorted(ReadingKind(k).value for k in kinds)
        if not wanted:
            return []
        sql = (
            "SELECT id, meter, data_time, read_time FROM readings"  # noqa: S608
            f" WHERE id > ? AND id <= ? AND data_epoch >= ? AND kind IN ({_marks(wanted)})"
            " ORDER BY id LIMIT ?"
        )
        rows = await self._spool._fetch(
            sql, (after_id, until_id, codec.epoch_seconds_ceil(since), *wanted, limit)
        )
        times = _Times()
        return [(int(r[0]), r[1], times.parse(r[2]), times.parse(r[3])) for r in rows]

    async def last_reading_id(self) -> int:
        rows = await self._spool._fetch("SELECT coalesce(max(id), 0) FROM readings")
        return int(rows[0][0])


_CHUNK: Final = 250


async def _known_keys(
    conn: aiosqlite.Connection, keys: Sequence[tuple[str, str, int]]
) -> set[tuple[str, str, int]]:
    """Which of these ``(meter, type, start_us)`` alarm keys are already in ``alarm_state``."""
    found: set[tuple[str, str, int]] = set()
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        marks = ", ".join(["(?, ?, ?)"] * len(chunk))
        cursor = await conn.execute(
            f"SELECT meter, type, start_us FROM alarm_state WHERE (meter, type, start_us) IN "  # noqa: S608
            f"(VALUES {marks})",
            [v for key in chunk for v in key],
        )
        found.update((m, t, int(s)) for m, t, s in await cursor.fetchall())
    return found


async def _known_refs(
    conn: aiosqlite.Connection, keys: Sequence[tuple[str, str, str]]
) -> set[tuple[str, str, str]]:
    """Which of these ``(account, kind, ref)`` journal keys are already posted."""
    found: set[tuple[str, str, str]] = set()
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        marks = ", ".join(["(?, ?, ?)"] * len(chunk))
        cursor = await conn.execute(
            f"SELECT account, kind, ref FROM balance_ledger WHERE (account, kind, ref) IN "  # noqa: S608
            f"(VALUES {marks})",
            [v for key in chunk for v in key],
        )
        found.update((a, k, r) for a, k, r in await cursor.fetchall())
    return found


async def _last_balances(conn: aiosqlite.Connection, accounts: Sequence[str]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for i in range(0, len(accounts), _CHUNK):
        chunk = accounts[i : i + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        cursor = await conn.execute(
            "SELECT account, balance FROM balance_ledger WHERE id IN (SELECT max(id) FROM "  # noqa: S608
            f"balance_ledger WHERE account IN ({marks}) GROUP BY account)",
            chunk,
        )
        out.update((a, Decimal(b)) for a, b in await cursor.fetchall())
    return out


def _row_state(row: Sequence[Any]) -> AlarmState:
    meter, type_, _start_us, first_us, window_start, severity, raised, cleared = row
    return AlarmState(
        meter=meter,
        type=type_,
        window_start=datetime.fromisoformat(window_start),
        first=_EPOCH + timedelta(microseconds=int(first_us)),
        severity=Severity(severity),
        raised=datetime.fromisoformat(raised),
        cleared=None if cleared is None else datetime.fromisoformat(cleared),
    )


def _row_entry(row: Sequence[Any]) -> PostedEntry:
    id_, account, kind, ref, meter, entry_time, kwh, amount, balance, year_kwh, details = row
    entry = BalanceEntry(
        account=account,
        kind=BalanceKind(kind),
        ref=ref,
        meter=meter,
        entry_time=datetime.fromisoformat(entry_time),
        kwh=Decimal(kwh),
        amount=Decimal(amount),
        year_kwh=Decimal(year_kwh),
        details=codec.loads(details),
    )
    return PostedEntry(int(id_), entry, Decimal(balance))


def _row_loss(row: Sequence[Any]) -> LineLossResult:
    district, day, state, master, master_kwh, users_kwh, rate, read, total, details, computed = row
    return LineLossResult(
        district=district,
        day=date.fromisoformat(day),
        state=LineLossState(state),
        master=master,
        master_kwh=_dec(master_kwh),
        users_kwh=_dec(users_kwh),
        rate=_dec(rate),
        users_read=int(read),
        users_total=int(total),
        computed=datetime.fromisoformat(computed),
        details=_NO_DETAILS if details is None else codec.loads(details),
    )
