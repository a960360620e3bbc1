"""The command service: takes payloads from ``cmd``, decides, does, audits and answers.

* :meth:`CommandService.submit_nowait` is what the uplink's receive loop calls: it only puts
  the payload on a bounded queue (a full queue drops it, counted, and the drop is audited in
  one summary record), so a flood of junk never holds up the MQTT connection or collection.
* One worker takes payloads in order: envelope (:mod:`.envelope`), key, signature, type, the
  key's allowed types, a per-type token bucket (after authentication, so forged junk cannot
  use up a head-end's budget), clock window and expiry, parameters, then the replay cache and
  the ``accepted`` audit record in one spool transaction. Rejections are audited in batches
  (one transaction per batch), so junk costs the spool little.
* Accepted commands run one at a time; meter exchanges go through the bus channels the
  collector uses (one request in flight per bus), so a command and collection interleave.
* Every result goes to ``publish`` (the uplink's ``cmd/result``), and every command's audit
  record to the spool, whence it travels on ``events``. :meth:`statistics` counts per
  ``(type, result)``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from drivers.clock import Clock
from drivers.errors import DriverError
from drivers.plc import PlcDriver
from gateway import __version__
from gateway.checks.prepaid import Ledgers
from gateway.collector.collector import Collector, MeterAccess, MeterPlan
from gateway.collector.timesync import near_midnight
from gateway.config import Config
from gateway.uplink.reconnect import RealTimer, Timer
from protocols.dlt645 import BroadcastTime, ErrorResponse, ReadRequest, ReadResponse, find
from protocols.dlt645.describe import flat_values
from protocols.errors import ProtocolError
from protocols.render import plain
from spool import (
    AuditRecord,
    BalanceEntry,
    BalanceKind,
    ChecksStore,
    CommandsStore,
    Event,
    JSONValue,
    Outbox,
    Spool,
    SpoolUnavailableError,
)

from . import archive, resend, timeset
from .envelope import (
    ArchiveParams,
    CommandRejectedError,
    CommandType,
    Envelope,
    Reason,
    RelayParams,
    ResendParams,
    TimeSyncParams,
    TopUpParams,
    check_times,
    command_type,
    parse,
    parse_params,
    peek,
    verify,
)
from .keys import HeadEndKey, KeyRing
from .relay import RelayController, RelayRefusedError

log = logging.getLogger("amigw.commands")

RESULT_SCHEMA: Final = "amigw.cmd-result/1"
#: rejections written to the spool in one transaction at most
_AUDIT_BATCH: Final = 64
#: how often the replay cache and the audit log are pruned
_PRUNE_EVERY_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class CommandStatistics:
    """Counters per ``(type, result)``; ``result`` is ``accepted``, ``done``, ``failed`` or
    ``rejected_<reason>``; ``type`` is ``unknown`` when the payload named no known type."""

    by_result: Mapping[tuple[str, str], int]
    queued: int
    armed: int


class TokenBucket:
    def __init__(self, per_min: float, burst: int, timer: Timer) -> None:
        self.rate = per_min / 60.0
        self.burst = float(burst)
        self.timer = timer
        self.tokens = float(burst)
        self.at = timer.monotonic()

    def take(self) -> bool:
        now = self.timer.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True, slots=True)
class Done:
    """A command's end: ``done`` or ``failed``, a result body and a one-line detail."""

    status: str
    result: Mapping[str, Any]
    detail: str | None = None


def _utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_value(value: Any) -> JSONValue:
    """A plain value as the spool keeps it (Decimals exact)."""
    if value is None or isinstance(value, bool | int | str | Decimal):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)


def _wire(value: Any) -> Any:
    """Decimals as ``{"$dec": "..."}`` (as on every other topic)."""
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, Mapping):
        return {str(k): _wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value]
    return value


class CommandService:
    """See the module docstring. :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        config: Config,
        keys: KeyRing,
        spool: Spool,
        clock: Clock,
        *,
        collector: Collector,
        accesses: Mapping[str, MeterAccess] | None = None,
        ledgers: Ledgers | None = None,
        plc: PlcDriver | None = None,
        headend: Callable[[], bool] | None = None,
        publish: Callable[[bytes], None] | None = None,
        timer: Timer | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.config = config
        self.settings = config.commands
        self.gateway = config.gateway.id
        self.keys = keys
        self.spool = spool
        self.clock = clock
        self.collector = collector
        self.meters: MutableMapping[str, MeterPlan] = collector.meters
        self.accesses = dict(accesses if accesses is not None else collector.accesses)
        self.ledgers = ledgers
        self.plc = plc
        # The uplink's outbox, or one of the service's own (made at the first resend): either
        # way the uplink sends re-queued batches with its next cut.
        self.outbox = outbox
        self.timer: Timer = timer or RealTimer()
        self.store = CommandsStore(spool)
        self.publish: Callable[[bytes], None] = publish or (lambda _payload: None)
        self._headend = headend
        self._headend_ok: dt.datetime | None = None
        self._started = clock.now()
        self.relay = RelayController(
            config, self.meters, self.accesses, clock, timer=self.timer, store=self.store,
            headend_down_s=self.headend_down_s,
        )  # fmt: skip
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(self.settings.queue_size)
        self._buckets: dict[str, TokenBucket] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._pending: list[AuditRecord] = []
        self._dropped = 0
        self._stop = asyncio.Event()
        self._last_prune: float | None = None

    # -- outside view ----------------------------------------------------------------------

    def statistics(self) -> CommandStatistics:
        return CommandStatistics(
            MappingProxyType(dict(self._counts)), self._queue.qsize(), self.relay.armed
        )

    def headend_down_s(self) -> float | None:
        """Seconds the head-end has been unreachable (0 when reachable; ``None``: unknown)."""
        if self._headend is None:
            return None
        now = self.clock.now()
        if self._headend():
            self._headend_ok = now
            return 0.0
        since = self._headend_ok or self._started
        return max(0.0, (now - since).total_seconds())

    def submit_nowait(self, payload: bytes) -> bool:
        """Queue a payload from ``cmd``; False (counted) when the queue is full."""
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self._dropped += 1
            self._counts[("unknown", f"rejected_{Reason.QUEUE_FULL.value}")] += 1
            if self._dropped == 1:
                log.warning("command queue full: dropping commands (a flood?)")
            return False
        return True

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        stop = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                if self._queue.empty():
                    try:
                        await self._flush_audit()
                        await self._maybe_prune()
                    except SpoolUnavailableError as exc:
                        # Kept in memory and written with the next batch; nothing else waits.
                        log.warning("command audit delayed: %s", exc)
                    get = asyncio.create_task(self._queue.get())
                    await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        break
                    payload = get.result()
                else:
                    payload = self._queue.get_nowait()
                await self.handle(payload)
        finally:
            stop.cancel()
            try:
                await self._flush_audit()
            except SpoolUnavailableError as exc:
                log.warning("%d command audit record(s) not written: %s", len(self._pending), exc)

    # -- one command -----------------------------------------------------------------------

    async def handle(self, payload: bytes) -> None:
        """Decide about one payload, carry it out when accepted, audit and answer."""
        now = self.clock.now()
        try:
            envelope, key, kind, params = self._admissible(payload, now)
        except CommandRejectedError as rejection:
            self._reject(payload, rejection, now)
            return
        window = self.settings.clock_window_s + self.settings.max_lifetime_s
        replay = "this command id was already accepted"
        accepted = self._audit(
            envelope, key.id, "accepted", at=now, details=self._summary(envelope)
        )
        replayed = self._audit(
            envelope, key.id, "rejected", reason=Reason.REPLAYED.value, at=now,
            details={"detail": replay},
        )  # fmt: skip
        try:
            await self._flush_audit()
            admitted = await self.store.admit(
                envelope.id, key.id, seen=now, keep_until=now + dt.timedelta(seconds=window),
                accepted=accepted, replayed=replayed,
            )  # fmt: skip
        except SpoolUnavailableError as exc:
            # Not in the replay cache, so not done: the head-end may send it again.
            log.error("command %s not carried out, the spool is unavailable: %s", envelope.id, exc)
            self._counts[(kind.value, "failed")] += 1
            self._answer(
                envelope.id, kind.value, "failed",
                detail=f"not carried out: the spool is unavailable ({exc})",
            )  # fmt: skip
            return
        if not admitted:
            self._counts[(kind.value, f"rejected_{Reason.REPLAYED.value}")] += 1
            log.warning("command %s from key %s replayed: rejected", envelope.id, key.id)
            self._answer(
                envelope.id, kind.value, "rejected", reason=Reason.REPLAYED.value, detail=replay
            )
            return
        self._counts[(kind.value, "accepted")] += 1
        log.info("command %s (%s) from key %s accepted", envelope.id, kind.value, key.id)
        self._answer(envelope.id, kind.value, "accepted")
        try:
            done = await self._dispatch(kind, envelope, key, params)
        except DriverError as exc:
            done = Done("failed", {}, f"{exc.reason}: {exc}")
        self._counts[(kind.value, done.status)] += 1
        details = {"detail": done.detail, "result": _json_value(done.result)}
        record = self._audit(envelope, key.id, done.status, at=self.clock.now(), details=details)
        try:
            await self.store.audit([record])
        except SpoolUnavailableError as exc:
            log.error("command %s %s; its audit record waits: %s", envelope.id, done.status, exc)
            self._pending.append(record)
        self._answer(envelope.id, kind.value, done.status, detail=done.detail, result=done.result)

    def _admissible(
        self, payload: bytes, now: dt.datetime
    ) -> tuple[Envelope, HeadEndKey, CommandType, Any]:
        s = self.settings
        envelope = parse(payload, s.max_payload_bytes)
        if envelope.gateway != self.gateway:
            raise CommandRejectedError(Reason.WRONG_GATEWAY, f"addressed to {envelope.gateway!r}")
        key = self.keys.get(envelope.key)
        if key is None:
            raise CommandRejectedError(Reason.UNKNOWN_KEY, f"no key {envelope.key!r}")
        verify(envelope, key.secret)
        kind = command_type(envelope)
        if kind not in key.types:
            raise CommandRejectedError(
                Reason.NOT_ALLOWED, f"key {key.id!r} may not send {kind.value}"
            )
        bucket = self._buckets.get(kind.value)
        if bucket is None:
            rate = s.rates.get(kind.value, s.rate_per_min)
            bucket = self._buckets[kind.value] = TokenBucket(rate, s.rate_burst, self.timer)
        if not bucket.take():
            rate = s.rates.get(kind.value, s.rate_per_min)
            raise CommandRejectedError(
                Reason.RATE_LIMITED, f"more than {rate:g} {kind.value} commands a minute"
            )
        check_times(envelope, now, s.clock_window_s, s.max_lifetime_s)
        return envelope, key, kind, parse_params(kind, envelope.params)

    def _reject(self, payload: bytes, rejection: CommandRejectedError, now: dt.datetime) -> None:
        command, claimed, key = peek(payload)
        kind = claimed if claimed in CommandType._value2member_map_ else "unknown"
        reason = rejection.reason.value
        self._counts[(kind, f"rejected_{reason}")] += 1
        log.info("command %s rejected: %s", command or "(no id)", rejection)
        self._pending.append(
            AuditRecord(
                command, claimed, key, "rejected", reason, now,
                {"detail": rejection.detail, "bytes": len(payload)},
            )
        )  # fmt: skip
        self._answer(
            command or None, claimed or None, "rejected", reason=reason, detail=rejection.detail
        )

    def _audit(
        self,
        envelope: Envelope,
        key: str,
        status: str,
        *,
        at: dt.datetime,
        details: Mapping[str, JSONValue],
        reason: str | None = None,
    ) -> AuditRecord:
        return AuditRecord(envelope.id, envelope.type, key, status, reason, at, details)

    def _summary(self, envelope: Envelope) -> dict[str, JSONValue]:
        return {
            "issued": envelope.issued.isoformat(),
            "expires": envelope.expires.isoformat(),
            "params": _json_value(envelope.params),
        }

    async def _flush_audit(self) -> None:
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self._pending.append(
                AuditRecord("", "", "", "rejected", Reason.QUEUE_FULL.value, self.clock.now(),
                            {"dropped": dropped, "detail": "the command queue was full"})
            )  # fmt: skip
        while self._pending:
            batch = self._pending[:_AUDIT_BATCH]
            await self.store.audit(batch)
            del self._pending[: len(batch)]

    async def _maybe_prune(self) -> None:
        now = self.timer.monotonic()
        if self._last_prune is not None and now - self._last_prune < _PRUNE_EVERY_S:
            return
        self._last_prune = now
        at = self.clock.now()
        await self.store.prune(at, at - dt.timedelta(days=self.settings.audit_days))

    def _answer(
        self,
        command: str | None,
        kind: str | None,
        status: str,
        *,
        reason: str | None = None,
        detail: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "schema": RESULT_SCHEMA,
            "gateway": self.gateway,
            "id": command,
            "type": kind,
            "status": status,
            "reason": reason,
            "time": _utc_text(self.clock.now()),
            "detail": detail,
        }
        if result:
            body["result"] = _wire(result)
        self.publish(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())

    # -- the command types -----------------------------------------------------------------

    async def _dispatch(
        self, kind: CommandType, envelope: Envelope, key: HeadEndKey, params: Any
    ) -> Done:
        match kind:
            case CommandType.PING:
                return Done("done", self._pong())
            case CommandType.READ:
                return await self._read(params.meters, params.items)
            case CommandType.TIME_SYNC:
                assert isinstance(params, TimeSyncParams)
                return await self._time_sync(envelope, params)
            case CommandType.RELAY:
                assert isinstance(params, RelayParams)
                return await self._relay(envelope, key, params)
            case CommandType.TOP_UP:
                assert isinstance(params, TopUpParams)
                return await self._top_up(envelope, key, params)
            case CommandType.ARCHIVE:
                assert isinstance(params, ArchiveParams)
                return await archive.apply(self, envelope.id, params)
            case CommandType.RESEND:
                assert isinstance(params, ResendParams)
                if self.outbox is None:
                    self.outbox = Outbox(self.spool)
                return await resend.resend(self, self.outbox, params)
        raise AssertionError(kind)

    def _pong(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "time": _utc_text(self.clock.now()),
            "meters": len(self.meters),
            "buses": sorted(self.accesses),
        }

    async def _read(self, meters: list[str], items: list[str]) -> Done:
        out: list[dict[str, Any]] = []
        ok = 0
        for meter in meters:
            plan = self.meters.get(meter)
            for text in items:
                entry: dict[str, Any] = {"meter": meter, "item": text}
                out.append(entry)
                if plan is None:
                    entry["error"] = "unknown meter"
                    continue
                item = find(text, plan.edition)
                if item is None:
                    entry["error"] = f"unknown item for DL/T 645-{plan.edition.value}"
                    continue
                entry["di"] = item.di_text
                access = self.accesses.get(plan.bus)
                if access is None:
                    entry["error"] = f"bus {plan.bus} is not open"
                    continue
                try:
                    exchange = await access.request(
                        ReadRequest(plan.address, item.di, plan.edition)
                    )
                except DriverError as exc:
                    entry["error"] = f"{exc.reason}: {exc}"
                    continue
                reply = exchange.reply
                if isinstance(reply, ErrorResponse):
                    entry["error"] = "meter: " + ", ".join(reply.flag_names)
                    continue
                if not isinstance(reply, ReadResponse):
                    entry["error"] = "unexpected reply"
                    continue
                try:
                    decoded = item.decode(reply.payload)
                except ProtocolError as exc:
                    entry["error"] = f"undecodable reply: {exc}"
                    continue
                entry["values"] = {
                    name: {"v": plain(value), **({"u": unit} if unit else {})}
                    for name, value, unit in flat_values(decoded.values)
                }
                ok += 1
        status = "done" if ok else "failed"
        detail = None if ok == len(out) else f"{len(out) - ok} of {len(out)} item(s) not read"
        return Done(status, {"readings": out}, detail)

    async def _time_sync(self, envelope: Envelope, params: TimeSyncParams) -> Done:
        meters: dict[str, dict[str, Any]] = {}
        writes: list[MeterPlan] = []
        by_broadcast: dict[str, str] = {}  # meter -> its bus
        for address in params.meters or ():
            plan = self.meters.get(address)
            if plan is None:
                meters[address] = {"outcome": "failed", "detail": "unknown meter"}
            elif plan.config.time_set == "write":
                writes.append(plan)
            else:
                by_broadcast[address] = plan.bus
        if params.buses is not None:
            buses = list(dict.fromkeys([*params.buses, *sorted(by_broadcast.values())]))
        elif params.meters is not None:
            buses = sorted(set(by_broadcast.values()))
        else:
            buses = sorted(self.accesses)
        done = await self._broadcast_time(envelope, buses)
        for address, bus in by_broadcast.items():
            outcome = done.result["buses"].get(bus)
            meters[address] = {"method": "broadcast", "bus": bus,
                               "outcome": "sent" if outcome == "sent" else "not_sent",
                               **({} if outcome == "sent" else {"detail": outcome})}  # fmt: skip
        events: list[Event] = []
        for plan in writes:
            address = str(plan.address)
            meters[address] = outcome = await timeset.set_meter(self, plan)
            if outcome["outcome"] == "set":
                events.append(
                    Event(plan.bus, "time_sync", address, self.clock.now().replace(microsecond=0),
                          {"command": envelope.id, "method": "write",
                           "deviation_before_s": outcome["deviation_before_s"],
                           "deviation_after_s": outcome["deviation_after_s"]})
                )  # fmt: skip
        if events:
            await self.spool.write_events(events)
        if params.meters is None:
            return done
        oks = [m["outcome"] in ("set", "sent") for m in meters.values()]
        oks += [done.result["buses"].get(bus) == "sent" for bus in params.buses or ()]
        good, total = sum(oks), len(oks)
        result = {"buses": done.result["buses"], "meters": meters}
        detail = None if good == total else f"{total - good} of {total} not synchronised"
        return Done("done" if good else "failed", result, detail)

    async def _broadcast_time(self, envelope: Envelope, buses: list[str]) -> Done:
        quiet = self.config.time_sync.quiet_minutes_around_midnight
        results: dict[str, str] = {}
        events: list[Event] = []
        sent = 0
        for bus in buses:
            access = self.accesses.get(bus)
            now = self.clock.now()
            local = now.astimezone(self.config.gateway.zone)
            if access is None:
                results[bus] = "unknown bus"
            elif near_midnight(local, quiet):
                results[bus] = f"refused: within {quiet} min of midnight"
            elif self.collector.synced_on(bus) == local.date():
                results[bus] = "refused: already synced today (meters take one broadcast a day)"
            else:
                try:
                    await access.broadcast(BroadcastTime(local.replace(tzinfo=None, microsecond=0)))
                except DriverError as exc:
                    results[bus] = f"failed: {exc}"
                    continue
                self.collector.note_time_sync(bus, local.date())
                events.append(
                    Event(bus, "time_sync", "", now.replace(microsecond=0),
                          {"command": envelope.id, "meters": []})
                )  # fmt: skip
                results[bus] = "sent"
                sent += 1
        if events:
            await self.spool.write_events(events)
        return Done("done" if sent else "failed", {"buses": results})

    async def _relay(self, envelope: Envelope, key: HeadEndKey, params: RelayParams) -> Done:
        meter, action, stage = params.meter, params.action, params.stage
        relay = self.relay
        try:
            if action == "trip":
                if stage == "arm":
                    armed = relay.arm(meter, key.id, envelope.id)
                    return Done("done", {"outcome": "armed", "meter": meter, "action": action,
                                         "token": armed.token,
                                         "valid_until": _utc_text(armed.expires)})  # fmt: skip
                if stage == "execute":
                    relay.take(params.token, meter, key.id)
                elif not key.single_phase:
                    raise RelayRefusedError(
                        "two_phase", "a trip needs arm, then execute with the token"
                    )
                relay.plan_of(meter)
                relay.check_trip(meter)
            elif stage != "single":
                raise RelayRefusedError("two_phase", f"{action} is a single-stage command")
            outcome = await relay.carry_out(meter, action, envelope.id)
        except RelayRefusedError as exc:
            result = {"outcome": "refused", "meter": meter, "action": action,
                      "reason": exc.reason, "detail": exc.detail}  # fmt: skip
            return Done("failed", result, exc.detail)
        return Done(
            "done" if outcome.outcome == "confirmed" else "failed",
            outcome.as_result(),
            outcome.detail,
        )

    async def _top_up(self, envelope: Envelope, key: HeadEndKey, params: TopUpParams) -> Done:
        account = next((a for a in self.config.account if a.id == params.account), None)
        if account is None:
            return Done("failed", {"account": params.account}, "unknown account")
        checks = ChecksStore(self.spool)
        before = await checks.balance(account.id)
        book = None if self.ledgers is None else self.ledgers.books.get(account.id)
        year_kwh = book.year_kwh if book is not None else Decimal(0)
        entry = BalanceEntry(
            account=account.id, kind=BalanceKind.TOP_UP, ref=f"cmd:{envelope.id}", meter="",
            entry_time=self.clock.now(), kwh=Decimal(0), amount=params.value, year_kwh=year_kwh,
            details={"command": envelope.id, "key": key.id},
        )  # fmt: skip
        posted = await checks.post_balance([entry])
        if book is not None:
            for p in posted:
                book.apply(p)
        after = await checks.balance(account.id)
        result: dict[str, Any] = {
            "account": account.id,
            "amount": params.value,
            "balance_before": before,
            "balance": after,
        }
        ended_overdraft = before is not None and before < 0 and after is not None and after >= 0
        if ended_overdraft and self.settings.close_allowed_on_topup:
            closes = []
            for plan in self.meters.values():
                if plan.config.account == account.id and plan.config.prepaid == "remote":
                    try:
                        outcome = await self.relay.carry_out(
                            str(plan.address), "close_allowed", envelope.id
                        )
                    except RelayRefusedError as exc:
                        closes.append({"meter": str(plan.address), "outcome": "refused",
                                       "reason": exc.reason})  # fmt: skip
                    else:
                        closes.append(outcome.as_result())
            result["close_allowed"] = closes
        return Done("done", result)
