"""Reading plans, declared as data and run as sans-IO sessions.

A :class:`Session` hands out the next request and takes the reply; it never touches a port.
The RS-485 worker drives it request by request; in router-led PLC mode the router asks for
the next frame of a meter and reports its reply, and drives the very same session.

Plans (ledger items):

* ``daily_frozen`` — read ``050600NN`` (freeze time) and accept the energies only when it is
  00:00 of the expected day, then ``050601NN`` (forward, total + tariffs) and ``050602NN``
  (reverse). ``NN`` is days ago + 1; when the slot holds another day (a meter that was off at a
  midnight skips a freeze) the session moves to the slot that should hold the wanted day and
  checks again. A meter that cannot say when it froze gives energies flagged ``unverified``;
  one without frozen data (ERR 02) read on the day itself gives its current register flagged
  ``not_frozen``. 1997 meters keep no daily history: their register is read on the day.
* ``settlement`` — the last settlement-day energies (``0001FF01``, ``0002FF01``).
* ``clock`` — date and time, and the drift against the gateway.
* ``status`` — run status words 1 and 3 (battery, power direction, relay).
* ``events`` — meter cover, terminal cover, power-down and loss-of-voltage counters.
* ``prepaid`` — remaining and overdraft amount/energy.
* ``realtime`` — energy, voltage, current, power and power factor (blocks, single DIs on ERR).

Frozen readings are filed under the freeze time with the DI of the most recent record
(``05060101``), so re-reading the same freeze on a later day is a harmless duplicate.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from protocols.bcd import Address
from protocols.dlt645 import (
    ABSENT,
    Edition,
    ErrorResponse,
    Message,
    ReadRequest,
    ReadResponse,
    Value,
    lookup,
)
from protocols.dlt645.messages import ErrorWord, ErrorWord1997
from protocols.errors import RemoteProtocolError
from spool.records import Quality, ReadingKind


class Item(enum.StrEnum):
    DAILY_FROZEN = "daily_frozen"
    SETTLEMENT = "settlement"
    CLOCK = "clock"
    STATUS = "status"
    EVENTS = "events"
    PREPAID = "prepaid"
    REALTIME = "realtime"


@dataclass(frozen=True, slots=True)
class Collected:
    """One data item read from a meter, ready to be spooled."""

    di: str
    data_time: dt.datetime  # aware, the meter's local time
    values: tuple[Value, ...]
    quality: Quality
    kind: ReadingKind


@dataclass(slots=True)
class SessionResult:
    ok: bool = False
    reason: str | None = None
    final: bool = False  # no retry can succeed (e.g. history a 1997 meter does not keep)
    collected: list[Collected] = field(default_factory=list)
    clock_drift_s: float | None = None
    interrupted: bool = False  # cut short by a shutdown: not an attempt, nothing to record


def _no_data(reply: Message) -> bool:
    if not isinstance(reply, ErrorResponse):
        return False
    return bool(
        reply.error
        & (ErrorWord.NO_DATA if reply.edition is Edition.V2007 else ErrorWord1997.DI_ERROR)
    )


class Session:
    """Base of the plans: a queue of requests and what to do with each reply."""

    item: Item

    def __init__(
        self, address: Address, edition: Edition, zone: ZoneInfo, now: dt.datetime
    ) -> None:
        self.address = address
        self.edition = edition
        self.zone = zone
        self.now = now
        self.result = SessionResult()
        self._pending: ReadRequest | None = None
        self.requests = 0

    @property
    def finished(self) -> bool:
        return self._pending is None

    def next_request(self) -> ReadRequest | None:
        """The request to send now, or ``None`` when the session is over."""
        if self._pending is not None:
            self.requests += 1
        return self._pending

    def _ask(self, di: int) -> None:
        self._pending = ReadRequest(self.address, di, self.edition)

    def _finish(self, ok: bool, reason: str | None = None, *, final: bool = False) -> None:
        self._pending = None
        self.result.ok = ok
        self.result.reason = reason
        self.result.final = final

    def on_failure(self, reason: str) -> None:
        """The request got no usable reply (timeout, garbled, link down): give up this round."""
        self._finish(False, reason)

    def on_reply(self, reply: Message) -> None:
        raise NotImplementedError

    def _decode(self, reply: ReadResponse) -> tuple[Value, ...] | None:
        decoded = reply.decode()
        if decoded is None:
            self._finish(False, f"DI {reply.edition.format_di(reply.di)} is not in the registry")
            return None
        return decoded.values

    def local_now(self) -> dt.datetime:
        return self.now.astimezone(self.zone).replace(microsecond=0)


_FREEZE_TIME, _FROZEN_FORWARD, _FROZEN_REVERSE = 0x05060000, 0x05060100, 0x05060200
MAX_SLOT = 62


class DailyFrozenSession(Session):
    """The zero-hour frozen energies of ``day`` (freeze at ``day`` 00:00 meter time)."""

    item = Item.DAILY_FROZEN

    def __init__(
        self, address: Address, edition: Edition, zone: ZoneInfo, now: dt.datetime, day: dt.date
    ) -> None:
        super().__init__(address, edition, zone, now)
        self.day = day
        self.freeze = dt.datetime.combine(day, dt.time(), zone)
        today = self.local_now().date()
        self.slot = (today - day).days + 1
        self._moves = 0
        self._quality = Quality.OK
        self._step = "freeze_time"
        if edition is Edition.V1997:
            if day != today:
                self._finish(
                    False, "a DL/T 645-1997 meter keeps no daily frozen history", final=True
                )
            else:
                self._step = "register_block"
                self._ask(0x901F)
        elif not 1 <= self.slot <= MAX_SLOT:
            self._finish(
                False, f"{day} is outside the meter's {MAX_SLOT}-day frozen history", final=True
            )
        else:
            self._ask(_FREEZE_TIME | self.slot)

    def on_reply(self, reply: Message) -> None:
        try:
            self._on_reply(reply)
        except RemoteProtocolError as exc:
            self._finish(False, f"{exc.reason}: {exc.detail}")

    def _on_reply(self, reply: Message) -> None:
        step = self._step
        if step == "register_block":
            if isinstance(reply, ReadResponse):
                self._collect(reply, f"{reply.di:04X}", self.local_now(), Quality.NOT_FROZEN)
                self._finish(True)
            elif _no_data(reply):
                self._step = "register_total"
                self._ask(0x9010)
            else:
                self._finish(False, "abnormal reply to 901F")
            return
        if step == "register_total":
            if isinstance(reply, ReadResponse):
                self._collect(reply, "9010", self.local_now(), Quality.NOT_FROZEN)
                self._finish(True)
            else:
                self._finish(False, "abnormal reply to 9010")
            return
        if step == "freeze_time":
            self._on_freeze_time(reply)
            return
        if step == "forward":
            if isinstance(reply, ReadResponse):
                self._collect(reply, "05060101", self.freeze, self._quality)
                self._step = "reverse"
                self._ask(_FROZEN_REVERSE | self.slot)
            else:
                self._finish(False, "no frozen forward energy for the verified freeze")
            return
        if step == "reverse":
            if isinstance(reply, ReadResponse):
                self._collect(reply, "05060201", self.freeze, self._quality)
            self._finish(True)  # reverse energy is optional: many single-phase meters lack it
            return
        if step == "current":
            if isinstance(reply, ReadResponse):
                self._collect(reply, "00010000", self.local_now(), Quality.NOT_FROZEN)
                self._finish(True)
            else:
                self._finish(False, "no frozen data and no current register")

    def _on_freeze_time(self, reply: Message) -> None:
        if _no_data(reply):
            if self.day == self.local_now().date():
                # No frozen record on the day itself: current register, flagged not frozen.
                self._step = "current"
                self._ask(0x00010000)
            else:
                self._finish(False, f"no frozen record in slot {self.slot}")
            return
        try:
            values = self._decode(reply) if isinstance(reply, ReadResponse) else None
        except RemoteProtocolError:
            values = None
        if values is None:
            if self.finished:
                return
            # The meter will not say when it froze: take the energies, flagged unverified.
            self._quality = Quality.UNVERIFIED
            self._step = "forward"
            self._ask(_FROZEN_FORWARD | self.slot)
            return
        stamp = values[0].value
        if stamp is ABSENT:
            self._finish(False, f"frozen slot {self.slot} is empty")
            return
        assert isinstance(stamp, dt.datetime)
        if stamp == self.freeze.replace(tzinfo=None):
            self._step = "forward"
            self._ask(_FROZEN_FORWARD | self.slot)
            return
        # The slot holds another day: move to where the wanted day should be, twice at most.
        shift = (stamp.date() - self.day).days
        if stamp.time() != dt.time() or shift == 0 or self._moves >= 2:
            self._finish(
                False,
                f"slot {self.slot} froze at {stamp:%Y-%m-%d %H:%M},"
                f" expected {self.freeze:%Y-%m-%d} 00:00",
            )
            return
        self._moves += 1
        self.slot += shift
        if not 1 <= self.slot <= MAX_SLOT:
            self._finish(
                False, f"{self.day} is no longer in the meter's frozen history", final=True
            )
            return
        self._ask(_FREEZE_TIME | self.slot)

    def _collect(self, reply: ReadResponse, di: str, when: dt.datetime, quality: Quality) -> None:
        values = self._decode(reply)
        if values is not None:
            self.result.collected.append(
                Collected(di, when, values, quality, ReadingKind.DAILY_FROZEN)
            )


@dataclass(frozen=True, slots=True)
class Group:
    """Read ``block`` if the meter answers it, else each of ``singles`` (ERR 02 skipped)."""

    block: int | None
    singles: tuple[int, ...]
    kind: ReadingKind


class SnapshotSession(Session):
    """Instant values (status, counters, prepaid, real-time): filed under the read time."""

    def __init__(
        self, address: Address, edition: Edition, zone: ZoneInfo, now: dt.datetime,
        *, item: Item, groups: Sequence[Group],
    ) -> None:  # fmt: skip
        super().__init__(address, edition, zone, now)
        self.item = item
        self._queue: list[tuple[int, bool, Group]] = []
        for g in groups:
            if g.block is not None:
                self._queue.append((g.block, True, g))
            else:
                self._queue.extend((di, False, g) for di in g.singles)
        self._answered = 0
        self._advance()

    def _advance(self) -> None:
        if not self._queue:
            if self._answered:
                self._finish(True)
            else:
                self._finish(False, "the meter answered none of the items", final=False)
            return
        self._ask(self._queue[0][0])

    def on_reply(self, reply: Message) -> None:
        di, is_block, group = self._queue.pop(0)
        if isinstance(reply, ReadResponse):
            try:
                decoded = reply.decode()
            except RemoteProtocolError as exc:
                self._finish(False, f"{exc.reason}: {exc.detail}")
                return
            if decoded is not None:
                self._answered += 1
                self.result.collected.append(
                    Collected(
                        self.edition.format_di(di),
                        self.local_now(),
                        decoded.values,
                        Quality.OK,
                        group.kind,
                    )
                )
        elif is_block and _no_data(reply):
            self._queue[0:0] = [(s, False, group) for s in group.singles]
        self._advance()


class ClockSession(Session):
    """The meter's date and time, and how far it is from the gateway's clock."""

    item = Item.CLOCK

    def __init__(
        self, address: Address, edition: Edition, zone: ZoneInfo, now: dt.datetime
    ) -> None:
        super().__init__(address, edition, zone, now)
        self._date: dt.date | None = None
        self._ask(0x04000101 if edition is Edition.V2007 else 0xC010)

    def set_exchange_times(self, sent: dt.datetime, received: dt.datetime) -> None:
        """When the request left and the reply arrived, by the gateway's clock. The meter read
        its clock somewhere in between: drift is measured against the midpoint, so the wire
        time of the exchange does not count as drift."""
        self.now = sent + (received - sent) / 2

    def on_reply(self, reply: Message) -> None:
        if not isinstance(reply, ReadResponse):
            self._finish(False, "abnormal reply to a clock read")
            return
        try:
            values = {v.name: v.value for v in self._decode(reply) or ()}
        except RemoteProtocolError as exc:
            self._finish(False, f"{exc.reason}: {exc.detail}")
            return
        if self._date is None:
            date = values.get("date")
            if not isinstance(date, dt.date):
                self._finish(False, "the meter's date is not readable")
                return
            self._date = date
            self._ask(0x04000102 if self.edition is Edition.V2007 else 0xC011)
            return
        time = values.get("time")
        if not isinstance(time, dt.time):
            self._finish(False, "the meter's time is not readable")
            return
        meter_time = dt.datetime.combine(self._date, time, self.zone)
        local = self.local_now()
        # Date read before midnight, time after it: the date is a day behind.
        if meter_time < local - dt.timedelta(hours=12) and time < dt.time(0, 1):
            meter_time += dt.timedelta(days=1)
        drift = (meter_time - local).total_seconds()
        self.result.clock_drift_s = drift
        self.result.collected.append(
            Collected(
                "04000101",
                local,
                (
                    Value("meter_time", meter_time.replace(tzinfo=None), None),
                    Value("gateway_time", local.replace(tzinfo=None), None),
                    Value("drift", round(drift), "s"),
                ),
                Quality.OK,
                ReadingKind.CLOCK,
            )
        )
        self._finish(True)


STATUS_2007 = (Group(None, (0x04000501, 0x04000503), ReadingKind.STATUS),)
EVENTS_2007 = (
    Group(None, (0x03300D00, 0x03300E00, 0x03110000, 0x03010000), ReadingKind.EVENT_COUNTER),
)
PREPAID_2007 = (Group(None, (0x00900200, 0x00900201, 0x00900100, 0x00900101), ReadingKind.PREPAID),)
REALTIME_2007 = (
    Group(0x0001FF00, (0x00010000,), ReadingKind.REALTIME),
    Group(0x0002FF00, (0x00020000,), ReadingKind.REALTIME),
    Group(0x0201FF00, (0x02010100, 0x02010200, 0x02010300), ReadingKind.REALTIME),
    Group(0x0202FF00, (0x02020100, 0x02020200, 0x02020300), ReadingKind.REALTIME),
    Group(0x0203FF00, (0x02030000,), ReadingKind.REALTIME),
    Group(0x0206FF00, (0x02060000,), ReadingKind.REALTIME),
)
REALTIME_1997 = (
    Group(0x901F, (0x9010,), ReadingKind.REALTIME),
    Group(0xB61F, (0xB611, 0xB612, 0xB613), ReadingKind.REALTIME),
    Group(0xB62F, (0xB621, 0xB622, 0xB623), ReadingKind.REALTIME),
    Group(0xB63F, (0xB630,), ReadingKind.REALTIME),
)
SETTLEMENT_2007 = (
    Group(0x0001FF01, (0x00010001,), ReadingKind.BILLING),
    Group(0x0002FF01, (0x00020001,), ReadingKind.BILLING),
)
SETTLEMENT_1997 = (Group(0x941F, (0x9410,), ReadingKind.BILLING),)


def groups_for(item: Item, edition: Edition) -> tuple[Group, ...]:
    if edition is Edition.V1997:
        return {Item.REALTIME: REALTIME_1997, Item.SETTLEMENT: SETTLEMENT_1997}.get(item, ())
    return {
        Item.STATUS: STATUS_2007,
        Item.EVENTS: EVENTS_2007,
        Item.PREPAID: PREPAID_2007,
        Item.REALTIME: REALTIME_2007,
        Item.SETTLEMENT: SETTLEMENT_2007,
    }.get(item, ())


def start_session(
    item: Item,
    address: Address,
    edition: Edition,
    zone: ZoneInfo,
    *,
    now: dt.datetime,
    day: dt.date,
) -> Session:
    """The session that collects ``item`` of ``day`` from a meter."""
    if item is Item.DAILY_FROZEN:
        return DailyFrozenSession(address, edition, zone, now, day)
    if item is Item.CLOCK:
        return ClockSession(address, edition, zone, now)
    groups = groups_for(item, edition)
    session = SnapshotSession(address, edition, zone, now, item=item, groups=groups)
    if not groups:
        session._finish(
            False, f"{item} is not read from DL/T 645-{edition.value[-4:]} meters", final=True
        )
    return session


def registry_has(edition: Edition, di: int) -> bool:
    return lookup(edition, di) is not None
