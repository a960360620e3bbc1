"""Relay control (DL/T 645-2007 0x1C) as the head-end commands it, safely.

* **Two-phase trips.** ``arm`` checks everything a trip needs and returns a random token valid
  for ``arm_timeout_s`` (calendar clock); ``execute`` with that token, for the same meter and by
  the same key, does it. A token is used once; an unused one expires. Tokens live in memory, so
  a restart forgets armed trips (the safe way round). A key with ``single_phase = true`` may
  trip in one step (``stage = "single"``).
* **Refusals** (trips only; closing and protection never cut power): the night window and
  holidays of ``[checks.cutoff]``, an account marked ``protected`` (保电), and a head-end that has
  been unreachable longer than ``auto_protect_s``. They are checked at arm *and* at execute.
* **Confirmation.** After the meter acknowledges, status word 3 (DI 04000503) is read until
  it shows the expected state (trip: relay open; close: relay closed; close-allowed: the trip
  command bit cleared; protect on/off: the keep-power bit) or ``confirm_timeout_s`` passes; then
  the command is sent again, ``confirm_retries`` times at most. Polling runs on wall-clock time
  (a :class:`Timer`), like every other wire timeout. The outcome is ``confirmed``,
  ``not_confirmed`` or ``refused`` (by the meter, with its error word; or by the gateway).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from drivers.clock import Clock
from drivers.errors import DriverError
from gateway.collector.collector import MeterAccess, MeterPlan
from gateway.config import Config
from gateway.uplink.reconnect import Timer
from protocols.dlt645 import Edition, ErrorResponse, ReadRequest, ReadResponse
from protocols.dlt645.messages import RelayCommand, RelayControl
from protocols.errors import ProtocolError
from spool import CommandsStore

from .envelope import RelayAction

log = logging.getLogger("amigw.commands.relay")

STATUS_WORD_3: Final = 0x04000503

_COMMANDS: Final[Mapping[str, RelayCommand]] = {
    "trip": RelayCommand.TRIP,
    "close_allowed": RelayCommand.CLOSE_ALLOWED,
    "close": RelayCommand.CLOSE,
    "protect_on": RelayCommand.KEEP_POWER,
    "protect_off": RelayCommand.KEEP_POWER_RELEASE,
}
#: the status word 3 bit and value that show each action took
EXPECTED: Final[Mapping[str, tuple[str, bool]]] = {
    "trip": ("relay_open", True),
    "close_allowed": ("relay_trip_commanded", False),
    "close": ("relay_open", False),
    "protect_on": ("keep_power", True),
    "protect_off": ("keep_power", False),
}


class RelayRefusedError(Exception):
    """The gateway will not do this relay command; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a relay command, as published in the result."""

    outcome: str  # confirmed | not_confirmed | refused
    meter: str
    action: str
    reason: str | None = None
    detail: str | None = None
    error_word: int | None = None
    errors: tuple[str, ...] = ()
    attempts: int = 0
    status: Mapping[str, Any] = field(default_factory=dict)

    def as_result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "outcome": self.outcome,
            "meter": self.meter,
            "action": self.action,
            "attempts": self.attempts,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.detail is not None:
            out["detail"] = self.detail
        if self.error_word is not None:
            out["error_word"] = f"{self.error_word:02X}"
            out["errors"] = list(self.errors)
        if self.status:
            out["status_word_3"] = dict(self.status)
        return out


@dataclass(frozen=True, slots=True)
class Armed:
    token: str
    meter: str
    key: str
    command: str
    expires: dt.datetime


def _night(local: dt.time, start: dt.time, end: dt.time) -> bool:
    return (local >= start or local < end) if start > end else start <= local < end


class RelayController:
    """Arms, refuses, sends and confirms relay commands for the meters of one gateway."""

    def __init__(
        self,
        config: Config,
        meters: Mapping[str, MeterPlan],
        accesses: Mapping[str, MeterAccess],
        clock: Clock,
        *,
        timer: Timer,
        store: CommandsStore,
        headend_down_s: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.config = config
        self.settings = config.commands
        self.meters = meters
        self.accesses = accesses
        self.clock = clock
        self.timer = timer
        self.store = store
        self.headend_down_s = headend_down_s
        self.zone = config.gateway.zone
        self._armed: dict[str, Armed] = {}
        self._protected = {a.id for a in config.account if a.protected}

    # -- arming ----------------------------------------------------------------------------

    @property
    def armed(self) -> int:
        self._expire()
        return len(self._armed)

    def _expire(self) -> None:
        now = self.clock.now()
        for token in [t for t, a in self._armed.items() if a.expires <= now]:
            armed = self._armed.pop(token)
            log.info("relay trip of %s armed by %s expired unused", armed.meter, armed.command)

    def arm(self, meter: str, key: str, command: str) -> Armed:
        self.plan_of(meter)
        self.check_trip(meter)
        self._expire()
        expires = self.clock.now() + dt.timedelta(seconds=self.settings.arm_timeout_s)
        armed = Armed(secrets.token_hex(16), meter, key, command, expires)
        self._armed[armed.token] = armed
        return armed

    def take(self, token: str | None, meter: str, key: str) -> Armed:
        """The armed trip ``token`` stands for (used up), or :class:`RelayRefusedError`."""
        self._expire()
        armed = self._armed.get(token or "")
        if armed is None:
            raise RelayRefusedError(
                "not_armed", "no armed trip for this token (expired, used or unknown)"
            )
        if armed.meter != meter or armed.key != key:
            raise RelayRefusedError("not_armed", "the token was armed for another meter or key")
        del self._armed[armed.token]
        return armed

    # -- refusals --------------------------------------------------------------------------

    def plan_of(self, meter: str) -> MeterPlan:
        plan = self.meters.get(meter)
        if plan is None:
            raise RelayRefusedError("unknown_meter", f"meter {meter} is not in the archive")
        if plan.edition is not Edition.V2007:
            raise RelayRefusedError("unsupported", f"meter {meter} speaks DL/T 645-1997 (no 0x1C)")
        if plan.bus not in self.accesses:
            raise RelayRefusedError(
                "unsupported", f"meter {meter} is on bus {plan.bus}, which is not open"
            )
        return plan

    def check_trip(self, meter: str) -> None:
        """:class:`RelayRefusedError` when a trip of ``meter`` must not happen now."""
        cut = self.config.checks.cutoff
        local = self.clock.now().astimezone(self.zone)
        start, end = dt.time.fromisoformat(cut.night_start), dt.time.fromisoformat(cut.night_end)
        if self.settings.protect_night and _night(local.time(), start, end):
            raise RelayRefusedError(
                "protection_window", f"no trips between {cut.night_start} and {cut.night_end}"
            )
        if self.settings.protect_holidays and local.date() in cut.holidays:
            raise RelayRefusedError("protection_window", f"{local.date()} is a holiday")
        account = self.meters[meter].config.account
        if account is not None and account in self._protected:
            raise RelayRefusedError("protected_account", f"account {account} is protected (保电)")
        limit = self.settings.auto_protect_s or cut.headend_unreachable_s
        down = self.headend_down_s()
        if down is not None and down > limit:
            raise RelayRefusedError(
                "headend_unreachable",
                f"the head-end has been unreachable for {down:.0f} s (limit {limit} s)",
            )

    # -- carrying out ----------------------------------------------------------------------

    async def carry_out(self, meter: str, action: RelayAction, command: str) -> Outcome:
        """Send the 0x1C command and confirm it by read-back; retried within limits."""
        plan = self.plan_of(meter)
        access = self.accesses[plan.bus]
        s = self.settings
        attempts = 0
        last: Outcome | None = None
        for _ in range(s.confirm_retries + 1):
            attempts += 1
            local = self.clock.now().astimezone(self.zone).replace(tzinfo=None, microsecond=0)
            message = RelayControl(
                plan.address,
                _COMMANDS[action],
                valid_until=local + dt.timedelta(minutes=s.validity_min),
                password_level=s.password_level,
                password=s.password.get_secret_value(),
                operator=s.operator,
            )
            try:
                exchange = await access.request(message)
            except DriverError as exc:
                last = Outcome("not_confirmed", meter, action, "no_reply", str(exc))
                continue
            reply = exchange.reply
            if isinstance(reply, ErrorResponse):
                return Outcome(
                    "refused", meter, action, "meter_refused",
                    f"the meter refused: {', '.join(reply.flag_names)}",
                    reply.error, tuple(reply.flag_names), attempts,
                )  # fmt: skip
            status = await self._confirm(access, plan, action)
            if status is not None and status.get(EXPECTED[action][0]) is EXPECTED[action][1]:
                await self._remember(meter, action, command)
                return Outcome("confirmed", meter, action, attempts=attempts, status=status)
            last = Outcome(
                "not_confirmed", meter, action, "state_unchanged",
                f"status word 3 did not show {EXPECTED[action][0]} = "
                f"{str(EXPECTED[action][1]).lower()} within {s.confirm_timeout_s:g} s",
                status=status or {},
            )  # fmt: skip
        assert last is not None
        return Outcome(
            last.outcome, meter, action, last.reason, last.detail, attempts=attempts,
            status=last.status,
        )  # fmt: skip

    async def _confirm(
        self, access: MeterAccess, plan: MeterPlan, action: str
    ) -> dict[str, Any] | None:
        """Status word 3 as last read, once it shows the expected state or the time is up."""
        name, want = EXPECTED[action]
        deadline = self.timer.monotonic() + self.settings.confirm_timeout_s
        last: dict[str, Any] | None = None
        while True:
            state = await read_status_word_3(access, plan)
            if state is not None:
                last = state
                if state.get(name) is want:
                    return state
            left = deadline - self.timer.monotonic()
            if left <= 0:
                return last
            await self.timer.sleep(min(self.settings.confirm_interval_s, left))

    async def _remember(self, meter: str, action: str, command: str) -> None:
        # What the relay rule compares with: only trip and close leave a definite state.
        if action in ("trip", "close"):
            await self.store.set_relay(meter, action == "trip", command, self.clock.now())
        elif action == "close_allowed":
            await self.store.forget_relay(meter)


async def read_status_word_3(access: MeterAccess, plan: MeterPlan) -> dict[str, Any] | None:
    """The named bits of status word 3, or ``None`` when the meter did not give them."""
    try:
        exchange = await access.request(ReadRequest(plan.address, STATUS_WORD_3, plan.edition))
    except DriverError:
        return None
    reply = exchange.reply
    if not isinstance(reply, ReadResponse):
        return None
    try:
        decoded = reply.decode()
    except ProtocolError:
        return None
    if decoded is None or not decoded.values:
        return None
    word = decoded.values[0].value
    bits = getattr(word, "bits", None)
    return dict(bits) if isinstance(bits, Mapping) else None
