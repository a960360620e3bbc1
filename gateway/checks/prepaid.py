"""Prepaid balance and cost control (费控): one balance ledger per ``[[account]]``.

The journal (:class:`spool.ChecksStore` ``balance_ledger``) holds, per account, in order:

* ``opening`` — ``initial_balance`` at ``opened`` (or at the first charge point);
* ``anchor`` — a meter's first charged registers (its first verified daily frozen value at or
  after ``opened``), amount 0; again when a register went back (it is not charged: the charge
  resumes from the lower value and the register rule raises the alarm);
* ``top_up`` — each configured top-up once its time has come (signed head-end top-ups later);
* ``consumption`` — between two verified daily frozen values of a meter, priced by the
  account's tariff (:mod:`.tariffs`), posted negative.

From the journal: the balance after every entry, days left at the average daily cost of the
last ``average_days``, warnings at ``warning_1`` / ``warning_2``, overdraft below 0, and — at
the time the checks run — a **cut-off recommendation** for an overdrawn account unless a
protection applies: night (``night_start``–``night_end``), a holiday, the account's own
protection (保电), or a head-end unreachable for longer than ``headend_unreachable_s``. A
recommendation is withdrawn (cleared) when protection begins and made again when it ends.
Meters that keep their own balance (``prepaid = "local"``) are cross-checked: their remaining
minus overdraft amount against the ledger's balance at that read.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial
from typing import Final

from gateway.config import (
    AccountConfig,
    ChecksConfig,
    Config,
    MeterConfig,
    TariffConfig,
    TopUpConfig,
)
from spool import (
    BalanceEntry,
    BalanceKind,
    ChecksStore,
    JSONValue,
    PostedEntry,
    Quality,
    ReadingKind,
)

from .context import settings_of
from .history import MeterHistory
from .model import Finding, Observation, State
from .series import FWD, changes, state_of
from .tariffs import PERIODS, Registers, price

log = logging.getLogger("amigw.checks.prepaid")

_DAY: Final = Decimal(86400)
_TENTH: Final = Decimal("0.1")


def registers_of(time: dt.datetime, values: Mapping[str, object]) -> Registers | None:
    total = values.get(FWD)
    if not isinstance(total, Decimal):
        return None
    periods = {p: v for p in PERIODS if isinstance(v := values.get(f"forward_active_{p}"), Decimal)}
    return Registers(time, total, periods)


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """An account now: balance after its last entry, days left, what protects it."""

    account: str
    meter: str | None
    balance: Decimal | None
    as_of: dt.datetime | None
    days_left: Decimal | None
    protections: tuple[str, ...]


_ZERO: Final = Decimal(0)
#: accounts posted per transaction by :meth:`Ledgers.update`
_BOOK_GROUP: Final = 25


@dataclass(frozen=True, slots=True)
class Line:
    """One journal entry as the checks keep it in memory: what balances, days left and the
    judgements read. Its details (registers, tariff parts) stay in the spool: with them, a
    month of entries of a few hundred accounts held tens of megabytes."""

    time: dt.datetime
    kind: BalanceKind
    ref: str
    balance: Decimal
    amount: Decimal
    #: the days a consumption entry spans (0 for other kinds)
    days: Decimal

    @classmethod
    def of(cls, posted: PostedEntry) -> Line:
        e = posted.entry
        days = e.details.get("days") if e.kind is BalanceKind.CONSUMPTION else None
        return cls(
            e.entry_time, e.kind, e.ref, posted.balance, e.amount,
            days if isinstance(days, Decimal) else _ZERO,
        )  # fmt: skip


@dataclass(slots=True)
class Book:
    """One account's ledger as the checks keep it in memory (recent entries, charge points)."""

    account: AccountConfig
    tariff: TariffConfig
    meters: list[MeterConfig]
    entries: list[Line] = field(default_factory=list)
    points: dict[str, Registers] = field(default_factory=dict)
    #: the opening and top-up refs posted (what :meth:`Ledgers.plan` must not post again)
    refs: set[tuple[BalanceKind, str]] = field(default_factory=set)
    year_start: dt.date | None = None
    year_kwh: Decimal = Decimal(0)

    @property
    def balance(self) -> Decimal | None:
        return self.entries[-1].balance if self.entries else None

    @property
    def opened(self) -> bool:
        return (BalanceKind.OPENING, "opening") in self.refs

    @property
    def alarm_meter(self) -> str | None:
        return min(m.address for m in self.meters) if self.meters else None

    def apply(self, posted: PostedEntry) -> None:
        e = posted.entry
        self.entries.append(Line.of(posted))
        if e.kind in (BalanceKind.OPENING, BalanceKind.TOP_UP):
            self.refs.add((e.kind, e.ref))
        if e.kind in (BalanceKind.ANCHOR, BalanceKind.CONSUMPTION):
            to = e.details.get("to")
            if isinstance(to, Mapping):
                self.points[e.meter] = Registers.from_details(to)
        if e.kind is BalanceKind.CONSUMPTION:
            start = e.details.get("year_start")
            if isinstance(start, str):
                self.year_start = dt.date.fromisoformat(start)
            self.year_kwh = e.year_kwh

    def average_daily_cost(self, at: dt.datetime, days: int) -> Decimal | None:
        cost = Decimal(0)
        spanned = Decimal(0)
        for line in self.entries:
            if (
                line.kind is not BalanceKind.CONSUMPTION
                or not at - dt.timedelta(days=days) < line.time <= at
            ):
                continue
            cost -= line.amount
            spanned += line.days
        return cost / spanned if spanned > 0 else None

    def days_left(self, balance: Decimal, at: dt.datetime, days: int) -> Decimal | None:
        if balance <= 0:
            return Decimal(0)
        average = self.average_daily_cost(at, days)
        if average is None or average <= 0:
            return None
        return (balance / average).quantize(_TENTH, ROUND_HALF_EVEN)

    def balance_at(self, at: dt.datetime) -> Line | None:
        """The last entry made for a time at or before ``at``."""
        found = None
        for line in self.entries:
            if line.time <= at:
                found = line
        return found


def _balance_evidence(book: Book, line: Line, at: dt.datetime, days: int) -> dict[str, JSONValue]:
    return {
        "balance": line.balance,
        "entry": line.kind.value,
        "ref": line.ref,
        "time": line.time.isoformat(),
        "days_left": book.days_left(line.balance, at, days),
    }


def _night(local: dt.time, start: dt.time, end: dt.time) -> bool:
    return (local >= start or local < end) if start > end else start <= local < end


class Ledgers:
    """Every account's book: loaded from the spool once, then advanced run by run."""

    def __init__(self, config: Config, store: ChecksStore) -> None:
        self._store = store
        self.zone = config.gateway.zone
        self.settings: ChecksConfig = config.checks
        tariffs = {t.name: t for t in config.tariff}
        self.books: dict[str, Book] = {}
        for account in config.account:
            meters = [m for m in config.meter if m.account == account.id and m.prepaid != "none"]
            self.books[account.id] = Book(account, tariffs[account.tariff], meters)
        self.loaded = False

    async def load(self, since: dt.datetime) -> None:
        """Rebuild each book from the journal (refs, charge points, tariff year), keeping the
        entries from ``since`` on in memory."""
        for book in self.books.values():
            for p in await self._store.balance_entries(book.account.id):
                book.apply(p)
        self.trim(since)
        self.loaded = True

    def trim(self, since: dt.datetime) -> None:
        for book in self.books.values():
            keep = [line for line in book.entries if line.time >= since]
            # The last entry carries the balance: always keep it.
            if book.entries and (not keep or keep[-1] is not book.entries[-1]):
                keep.append(book.entries[-1])
            book.entries = keep

    # -- posting ---------------------------------------------------------------------------

    def plan(
        self, book: Book, histories: Mapping[str, MeterHistory], now: dt.datetime
    ) -> list[BalanceEntry]:
        """The entries this run should post for ``book``, in time order."""
        a = book.account
        candidates: list[tuple[dt.datetime, str, Registers]] = []
        for m in book.meters:
            h = histories.get(m.address)
            if h is None:
                continue
            last = book.points.get(m.address)
            for s in h.frozen:
                if s.quality is not Quality.OK or (a.opened is not None and s.time < a.opened):
                    continue
                if last is not None and s.time <= last.time:
                    continue
                regs = registers_of(s.time, s.values)
                if regs is not None:
                    candidates.append((s.time, m.address, regs))
        candidates.sort(key=lambda c: (c[0], c[1]))
        out: list[BalanceEntry] = []
        if not book.opened:
            at = a.opened or (candidates[0][0] if candidates else None)
            if at is None:
                return []
            out.append(
                self._entry(book, BalanceKind.OPENING, "opening", "", at, amount=a.initial_balance)
            )
        # Top-ups sort before a read at the same instant: the read is charged on the new balance.
        timeline: list[tuple[dt.datetime, int, TopUpConfig | tuple[str, Registers]]] = [
            (at, 1, (m, r)) for at, m, r in candidates
        ]
        for top_up in a.top_ups:
            if top_up.at <= now and (BalanceKind.TOP_UP, top_up.id) not in book.refs:
                timeline.append((top_up.at, 0, top_up))
        timeline.sort(key=lambda x: (x[0], x[1]))
        points = dict(book.points)
        year_start, year_kwh = book.year_start, book.year_kwh
        for at, _, item in timeline:
            if isinstance(item, TopUpConfig):
                out.append(
                    self._entry(book, BalanceKind.TOP_UP, item.id, "", at, amount=item.amount)
                )
                continue
            meter, regs = item
            prev = points.get(meter)
            ref = f"{meter}@{int(at.timestamp())}"
            if prev is None or not regs.not_below(prev):
                reason = "first charge point" if prev is None else "registers went back"
                details: dict[str, JSONValue] = {"to": regs.as_details(), "reason": reason}
                if prev is not None:
                    details["from"] = prev.as_details()
                out.append(
                    self._entry(
                        book, BalanceKind.ANCHOR, ref, meter, at, details=details, year_kwh=year_kwh
                    )
                )
                points[meter] = regs
                continue
            charge = price(
                book.tariff, prev, regs, zone=self.zone, last_year_start=year_start,
                last_year_kwh=year_kwh,
            )  # fmt: skip
            year_start, year_kwh = charge.year_start, charge.year_kwh
            details = {
                "from": prev.as_details(),
                "to": regs.as_details(),
                "tariff": book.tariff.name,
                "parts": [dict(p) for p in charge.parts],
                "year_start": charge.year_start.isoformat(),
                "days": Decimal((regs.time - prev.time) // dt.timedelta(seconds=1)) / _DAY,
            }
            out.append(
                self._entry(
                    book, BalanceKind.CONSUMPTION, ref, meter, at, kwh=charge.kwh,
                    amount=-charge.amount, year_kwh=charge.year_kwh, details=details,
                )
            )  # fmt: skip
            points[meter] = regs
        return out

    def _entry(
        self,
        book: Book,
        kind: BalanceKind,
        ref: str,
        meter: str,
        at: dt.datetime,
        *,
        kwh: Decimal = Decimal(0),
        amount: Decimal = Decimal(0),
        year_kwh: Decimal | None = None,
        details: Mapping[str, JSONValue] | None = None,
    ) -> BalanceEntry:
        return BalanceEntry(
            account=book.account.id, kind=kind, ref=ref, meter=meter, entry_time=at, kwh=kwh,
            amount=amount, year_kwh=book.year_kwh if year_kwh is None else year_kwh,
            details=details or {},
        )  # fmt: skip

    async def update(self, histories: Mapping[str, MeterHistory], now: dt.datetime) -> int:
        """Plan and post every book's new entries, each account's in one transaction with
        those of a few other accounts; return how many were posted. Groups, not one
        transaction: a first run plans a month of entries per account, and their details held
        more memory than everything the checks keep."""
        count = 0
        books = list(self.books.values())
        for i in range(0, len(books), _BOOK_GROUP):
            planned: list[BalanceEntry] = []
            for book in books[i : i + _BOOK_GROUP]:
                planned.extend(self.plan(book, histories, now))
            if not planned:
                continue
            posted = await self._store.post_balance(planned)
            for p in posted:
                self.books[p.entry.account].apply(p)
            count += len(posted)
        return count

    # -- judging ---------------------------------------------------------------------------

    def protections(
        self, book: Book, now: dt.datetime, headend_down_s: float | None
    ) -> tuple[str, ...]:
        cut = self.settings.cutoff
        local = now.astimezone(self.zone)
        reasons = []
        start, end = dt.time.fromisoformat(cut.night_start), dt.time.fromisoformat(cut.night_end)
        if _night(local.time(), start, end):
            reasons.append("night")
        if local.date() in cut.holidays:
            reasons.append("holiday")
        if book.account.protected:
            reasons.append("protected")
        if headend_down_s is not None and headend_down_s > cut.headend_unreachable_s:
            reasons.append("headend_unreachable")
        return tuple(reasons)

    def status(self, now: dt.datetime, headend_down_s: float | None = None) -> list[AccountStatus]:
        out = []
        days = self.settings.prepaid.average_days
        for book in self.books.values():
            last = book.entries[-1] if book.entries else None
            balance = None if last is None else last.balance
            as_of = None if last is None else last.time
            left = (
                None if balance is None or as_of is None else book.days_left(balance, as_of, days)
            )
            out.append(
                AccountStatus(
                    book.account.id, book.alarm_meter, balance, as_of, left,
                    self.protections(book, now, headend_down_s),
                )
            )  # fmt: skip
        return out

    def findings(
        self,
        histories: Mapping[str, MeterHistory],
        now: dt.datetime,
        headend_down_s: float | None,
    ) -> list[Finding]:
        cfg = self.settings.prepaid
        settings = settings_of(cfg)
        out: list[Finding] = []
        for book in self.books.values():
            meter = book.alarm_meter
            if meter is None or not book.entries:
                continue
            context: dict[str, JSONValue] = {"account": book.account.id}
            levels: dict[str, list[Observation]] = {
                "balance_warning_1": [], "balance_warning_2": [], "overdraft": [],
            }  # fmt: skip
            at = book.entries[0].time
            for p in book.entries:
                at = max(at, p.time)
                b = p.balance
                evidence = partial(_balance_evidence, book, p, at, cfg.average_days)
                for type_, state in (
                    ("balance_warning_1", state_of(b <= cfg.warning_1, b > cfg.warning_1)),
                    ("balance_warning_2", state_of(b <= cfg.warning_2, b > cfg.warning_2)),
                    ("overdraft", state_of(b < 0, b >= 0)),
                ):
                    if changes(levels[type_], state):
                        levels[type_].append(Observation(at, state, evidence))
            for type_, obs in levels.items():
                out.append(Finding(meter, type_, obs, settings, context))
            balance = book.entries[-1].balance
            reasons = self.protections(book, now, headend_down_s)
            now_evidence: dict[str, JSONValue] = {"balance": balance, "protections": list(reasons)}
            recommend = balance < 0 and not reasons
            state = State.ABNORMAL if recommend else State.NORMAL
            out.append(
                Finding(
                    meter, "cutoff_recommended", [Observation(now, state, now_evidence)],
                    settings_of(self.settings.cutoff), context,
                )
            )  # fmt: skip
            out.extend(self._divergence(book, histories, context))
        return out

    def _divergence(
        self, book: Book, histories: Mapping[str, MeterHistory], context: Mapping[str, JSONValue]
    ) -> list[Finding]:
        cfg = self.settings.prepaid
        out = []
        for m in book.meters:
            h = histories.get(m.address)
            if m.prepaid != "local" or h is None:
                continue
            obs = []
            prev: dt.datetime | None = None
            for s in h.of(ReadingKind.PREPAID):
                remaining, overdraft = s.dec("remaining_amount"), s.dec("overdraft_amount")
                posted = book.balance_at(s.time)
                if remaining is None or posted is None:
                    continue
                own = remaining - (overdraft or Decimal(0))
                gap = own - posted.balance
                evidence: dict[str, JSONValue] = {
                    "meter_balance": own,
                    "ledger_balance": posted.balance,
                    "ledger_entry": posted.ref,
                    "difference": gap,
                    "read": s.time.isoformat(),
                }
                diverged = abs(gap) > cfg.divergence
                obs.append(Observation(s.time, state_of(diverged, not diverged), evidence, prev))
                prev = s.time
            if obs:
                out.append(Finding(m.address, "balance_divergence", obs, settings_of(cfg), context))
        return out


def posted_summary(posted: Sequence[PostedEntry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in posted:
        counts[p.entry.kind.value] = counts.get(p.entry.kind.value, 0) + 1
    return counts
