"""The virtual meter: a model of one DL/T 645 meter, advanced lazily by an injected clock.

Whenever it is asked anything (or told :meth:`VirtualMeter.advance_to`), the meter catches up to
the clock: it integrates its load over time, exactly, into energy registers split by the
time-of-use table, and on the way it crosses every boundary that happened while nobody asked —
midnight freezes (daily records, and settlement records on the settlement day), tariff switches
and the start and end of anomalies — each at its exact instant. Advancing over three days in
one step therefore leaves three daily records with the same values as advancing minute by minute.

The meter keeps its own clock (offset and drift, set by broadcast time sync), freezes and bills
by it, and carries out relay commands, time sync and 0x14 writes of its date and time (checked
against its password). Decoding requests and building replies
lives in :mod:`simulator.wire`, what each DI returns in :mod:`simulator.answers`; this module
owns the state and how it evolves.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Final

from drivers.clock import Clock
from protocols.bcd import Address
from protocols.dlt645.formats import StatusBits
from protocols.dlt645.frame import Frame, decode_frame, encode_frame
from protocols.dlt645.messages import (
    Acknowledge,
    ErrorWord,
    Function,
    RelayCommand,
    RelayControl,
    WriteRequest,
    decode_message,
)
from protocols.dlt645.registry import STATUS_WORDS, Edition, lookup
from protocols.errors import ProtocolError

from . import wire
from .config import EventCounters, MeterConfig, PrepaidConfig, PrepaidState, RelayEvent
from .faults import (
    Anomaly,
    BalanceOut,
    BatteryLow,
    ClockDrift,
    CoverOpened,
    FastMeter,
    LossOfVoltage,
    PowerDown,
    RegisterBackwards,
    RelayStuck,
    ReverseEnergy,
    StoppedMeter,
)
from .measure import Instantaneous, measure, split_phases
from .profile import LoadSource, slot_random
from .registers import (
    DAILY_RECORDS,
    UNITS_PER_KWH,
    FrozenRecord,
    RegisterBank,
    Registers,
    RegisterView,
    kwh_to_units,
    local_minute,
)
from .timebase import DAY_US, MINUTE_US, MeterClock, seconds_to_us, to_us

#: the parameters a 0x14 write may set: date and weekday (YYMMDDWW), time (hhmmss)
_DATE_DI: Final = 0x04000101
_TIME_DI: Final = 0x04000102

POWER_DOWN_RECORDS: Final = 10
_CENT: Final = Decimal("0.01")


class VirtualMeter:
    """One simulated meter; see the module docstring. Not thread-safe; one event loop drives it."""

    def __init__(
        self,
        config: MeterConfig,
        clock: Clock,
        load: LoadSource,
        anomalies: Sequence[Anomaly] = (),
        start: dt.datetime | None = None,
    ) -> None:
        self.config = config
        self.address = config.address
        self.edition = config.edition
        self.zone = config.zone
        self._source_clock = clock
        self._load = load
        t0 = to_us(start if start is not None else clock.now())
        self._t = t0
        self._start_us = t0
        self._clock = MeterClock(
            t0, seconds_to_us(config.clock_offset_s), seconds_to_us(config.clock_drift_s_per_day)
        )
        self._bank = RegisterBank(
            initial_kwh=config.initial_kwh,
            initial_reverse_kwh=config.initial_reverse_kwh,
            phases=config.phases,
            power_factor=config.power_factor,
        )
        first = self._meter_local(t0)
        self._next_freeze_day = (
            first.date() if first.time() == dt.time(0) else first.date() + dt.timedelta(days=1)
        )
        self._freeze_at = 0
        self._tariff = 3
        self._tariff_until = 0
        self._recompute_clock_boundaries()
        # Anomaly boundaries, ends before starts at the same instant.
        events: list[tuple[int, int, int, Anomaly]] = []
        for i, a in enumerate(anomalies):
            events.append((a.window.start_us, 1, i, a))
            if a.window.end_us is not None:
                events.append((a.window.end_us, 0, i, a))
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        self._events = events
        self._event_i = 0
        self._power_down_windows = tuple(a.window for a in anomalies if isinstance(a, PowerDown))
        self._active: list[Anomaly] = []
        self._distorted = False
        self._powered = True
        self._reverse = False
        # Relay and commands.
        self._relay_open = False
        self._trip_commanded = False
        self._keep_power = False
        self._alarm = False
        self._relay_log: list[tuple[int, bool]] = []
        self.last_relay_command: RelayEvent | None = None
        self.last_broadcast_sync: dt.date | None = None  # meter-local day of the last one
        self._listeners: list[Callable[[int], None]] = []
        # Events.
        self._meter_cover = 0
        self._terminal_cover = 0
        self._power_down_count = 0
        self._power_down_started: dt.datetime | None = None
        self._power_down_records: deque[tuple[dt.datetime, dt.datetime]] = deque(
            maxlen=POWER_DOWN_RECORDS
        )
        self._lov_count = [0, 0, 0]
        self._lov_us = [0, 0, 0]
        # Prepaid: what was consumed since the balance was last set.
        self._balance = config.prepaid.balance if config.prepaid else Decimal(0)
        self._prepaid_used = 0

    # --- time ---------------------------------------------------------------------------------

    def _meter_local(self, true_us: int) -> dt.datetime:
        return self.zone.local(self._clock.read(true_us))

    def now_local(self) -> dt.datetime:
        """What the meter's clock shows now (naive local time)."""
        self._catch_up()
        return self._meter_local(self._t)

    def clock_error(self) -> dt.timedelta:
        """How far the meter's clock is ahead of true time now."""
        self._catch_up()
        return dt.timedelta(microseconds=self._clock.error_us(self._t))

    def _recompute_clock_boundaries(self) -> None:
        self._freeze_at = self._clock.true_of(self.zone.midnight_us(self._next_freeze_day))
        self._tariff_until = 0

    def _update_tariff(self, t: int) -> None:
        m = self._clock.read(t)
        pos = self.zone.local_us(m) % DAY_US
        tariff, left = self.config.tou.at(pos)
        self._tariff = int(tariff)
        self._tariff_until = max(t + 1, self._clock.true_of(m + left))

    # --- catching up ---------------------------------------------------------------------------

    def _catch_up(self) -> None:
        self._advance(to_us(self._source_clock.now()))

    def advance_to(self, instant: dt.datetime) -> None:
        """Integrate up to ``instant`` (no-op if the meter is already there or later)."""
        self._advance(to_us(instant))

    def _advance(self, target: int) -> None:
        events = self._events
        while True:
            t = self._t
            if self._freeze_at <= t:
                self._freeze()
                continue
            if self._event_i < len(events) and events[self._event_i][0] <= t:
                _, starting, _, anomaly = events[self._event_i]
                self._event_i += 1
                if starting:
                    self._on_start(anomaly)
                else:
                    self._on_end(anomaly)
                continue
            if t >= target:
                return
            if self._tariff_until <= t:
                self._update_tariff(t)
            end = min(target, self._load.next_change(t), self._tariff_until, self._freeze_at)
            if self._event_i < len(events):
                end = min(end, events[self._event_i][0])
            self._integrate(t, end)
            self._t = end

    def _integrate(self, a: int, b: int) -> None:
        span = b - a
        if not self._powered or self._relay_open:
            return
        load = self._load.power(a)
        if self.config.ct_ratio != 1:
            load //= self.config.ct_ratio
        if load <= 0:
            return
        tariff = self._tariff
        reverse = False
        if self._distorted:
            parts = split_phases(load, self.config.phases)
            factor_num, factor_den = 1, 1
            for anomaly in self._active:
                if isinstance(anomaly, LossOfVoltage):
                    i = "abc".index(anomaly.phase)
                    self._lov_us[i] += span
                    if i < len(parts):
                        parts[i] = int(parts[i] * anomaly.voltage_ratio)
                elif isinstance(anomaly, StoppedMeter):
                    factor_num = 0
                elif isinstance(anomaly, FastMeter):
                    num, den = anomaly.factor.as_integer_ratio()
                    factor_num, factor_den = factor_num * num, factor_den * den
            parts = [p * factor_num // factor_den for p in parts]
            load = sum(parts)
            reverse = self._reverse
            if load <= 0:
                return
        else:
            parts = split_phases(load, self.config.phases) if self.config.phases == 3 else [load]
        energy = self._bank.add(parts, span, tariff, reverse=reverse)
        if not reverse and self.config.prepaid is not None:
            self._prepaid_used += energy
        self._bank.note_demand(
            load, tariff, lambda: local_minute(self._meter_local(a)), reverse=reverse
        )

    def _freeze(self) -> None:
        day = self._next_freeze_day
        self._bank.freeze(day, self._t, settlement=day.day == self.config.settlement_day)
        self._next_freeze_day = day + dt.timedelta(days=1)
        self._recompute_clock_boundaries()

    def _on_start(self, anomaly: Anomaly) -> None:
        t = self._t
        match anomaly:
            case RegisterBackwards(kwh=kwh):
                if self._tariff_until <= t:
                    self._update_tariff(t)
                self._bank.step_down(kwh_to_units(kwh), self._tariff)
            case ClockDrift(offset_s=offset, drift_s_per_day=drift):
                self._clock.step(t, seconds_to_us(offset))
                if drift is not None:
                    self._clock.set_drift(t, seconds_to_us(drift))
                self._recompute_clock_boundaries()
            case CoverOpened(cover=cover):
                if cover == "meter":
                    self._meter_cover += 1
                else:
                    self._terminal_cover += 1
            case BalanceOut(remaining=remaining):
                self._balance = remaining
                self._prepaid_used = 0
            case LossOfVoltage(phase=phase):
                self._lov_count["abc".index(phase)] += 1
            case PowerDown():
                self._power_down_count += 1
                self._power_down_started = self._meter_local(t)
            case _:
                pass
        if anomaly.window.end_us is None or anomaly.window.end_us > t:
            self._active.append(anomaly)
            self._refresh_flags()

    def _on_end(self, anomaly: Anomaly) -> None:
        if anomaly in self._active:
            self._active.remove(anomaly)
            self._refresh_flags()
        if isinstance(anomaly, PowerDown) and self._power_down_started is not None:
            self._power_down_records.appendleft(
                (self._power_down_started, self._meter_local(self._t))
            )
            self._power_down_started = None

    def _refresh_flags(self) -> None:
        active = self._active
        self._distorted = any(
            isinstance(a, LossOfVoltage | StoppedMeter | FastMeter | ReverseEnergy) for a in active
        )
        self._powered = not any(isinstance(a, PowerDown) for a in active)
        self._reverse = any(isinstance(a, ReverseEnergy) for a in active)

    # --- what the district and the master meter need --------------------------------------------

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """``callback(t_us)`` whenever the load this meter delivers changes outside its profile."""
        self._listeners.append(callback)

    def delivered_power(self, t_us: int) -> int:
        """Power the customer actually draws at ``t_us`` (0 while tripped or without supply)."""
        for w in self._power_down_windows:
            if w.active(t_us):
                return 0
        log = self._relay_log
        if log:
            i = bisect_right(log, (t_us, True)) - 1
            if i >= 0 and log[i][1]:
                return 0
        elif self._relay_open:
            return 0
        return self._load.power(t_us)

    def load_changes(self) -> Iterable[int]:
        """Instants at which :meth:`delivered_power` changes for reasons other than the profile."""
        for w in self._power_down_windows:
            yield w.start_us
            if w.end_us is not None:
                yield w.end_us
        for t, _ in self._relay_log:
            yield t

    # --- observable state (ground truth for tests) ---------------------------------------------

    def registers(self) -> Registers:
        """The registers as the meter shows them now."""
        self._catch_up()
        return self._bank.shown()

    def exact_forward_kwh(self) -> Decimal:
        """The forward active total with every digit the accumulator holds."""
        self._catch_up()
        return Decimal(self._bank.forward_units) / UNITS_PER_KWH

    def frozen_record(self, day: dt.date) -> FrozenRecord | None:
        """The daily record frozen at 00:00 (meter-local) of ``day``, if still kept."""
        self._catch_up()
        return self._bank.daily_of(day)

    def daily_record(self, n: int) -> FrozenRecord | None:
        """The ``n``-th most recent daily record (1 = the last freeze), as ``050600nn`` reads it."""
        self._catch_up()
        return self._bank.daily(n)

    def register_view(self, period: int = 0) -> RegisterView | None:
        """Registers now (``period`` 0) or at the ``period``-th last settlement, one at a time."""
        self._catch_up()
        return self._bank.view() if period == 0 else self._bank.settlement_view(period)

    def daily_view(self, n: int) -> tuple[dt.date, RegisterView] | None:
        """The ``n``-th most recent daily record's day and registers, one at a time."""
        self._catch_up()
        return self._bank.daily_view(n)

    def settlement_record(self, n: int) -> FrozenRecord | None:
        """The ``n``-th most recent settlement record (DI0 = n in class 00/01)."""
        self._catch_up()
        return self._bank.settlement(n)

    @property
    def relay_open(self) -> bool:
        self._catch_up()
        return self._relay_open

    @property
    def trip_commanded(self) -> bool:
        return self._trip_commanded

    @property
    def keep_power(self) -> bool:
        return self._keep_power

    @property
    def powered(self) -> bool:
        self._catch_up()
        return self._powered

    def active_anomalies(self) -> tuple[Anomaly, ...]:
        self._catch_up()
        return tuple(self._active)

    def counters(self) -> EventCounters:
        self._catch_up()
        return EventCounters(
            meter_cover_open=self._meter_cover,
            terminal_cover_open=self._terminal_cover,
            power_down=self._power_down_count,
            loss_of_voltage_count=(self._lov_count[0], self._lov_count[1], self._lov_count[2]),
            loss_of_voltage_minutes=(
                self._lov_us[0] // MINUTE_US,
                self._lov_us[1] // MINUTE_US,
                self._lov_us[2] // MINUTE_US,
            ),
            power_down_records=tuple(self._power_down_records),
        )

    def prepaid(self) -> PrepaidState | None:
        """Balance and overdraft now, or ``None`` for a post-paid meter."""
        cfg = self.config.prepaid
        if cfg is None:
            return None
        self._catch_up()
        used_kwh = Decimal(self._prepaid_used) / UNITS_PER_KWH
        if cfg.kind == "money":
            left = self._balance - (used_kwh * cfg.price).quantize(_CENT, ROUND_HALF_UP)
            amount, over = max(left, Decimal(0)), max(-left, Decimal(0))
            return PrepaidState(
                amount.quantize(_CENT),
                over.quantize(_CENT),
                (amount / cfg.price).quantize(_CENT, ROUND_DOWN),
                (over / cfg.price).quantize(_CENT, ROUND_DOWN),
            )
        left = self._balance - used_kwh.quantize(_CENT, ROUND_DOWN)
        energy, over = max(left, Decimal(0)), max(-left, Decimal(0))
        return PrepaidState(
            (energy * cfg.price).quantize(_CENT),
            (over * cfg.price).quantize(_CENT),
            energy.quantize(_CENT),
            over.quantize(_CENT),
        )

    def top_up(self, amount: Decimal) -> None:
        """A purchase: add ``amount`` (CNY, or kWh for energy prepaid) to what is left."""
        state = self.prepaid()
        if state is None:
            raise ValueError(f"meter {self.address} is not prepaid")
        money = self.config.prepaid is not None and self.config.prepaid.kind == "money"
        left = (
            (state.remaining_amount - state.overdraft_amount)
            if money
            else (state.remaining_energy - state.overdraft_energy)
        )
        self._balance = left + amount
        self._prepaid_used = 0

    def status_word(self, n: int) -> StatusBits:
        self._catch_up()
        fmt = STATUS_WORDS[n][1]
        if n == 1:
            battery = self.config.battery_low or any(
                isinstance(a, BatteryLow) for a in self._active
            )
            return fmt.compose(clock_battery_low=battery, active_power_reverse=self._reverse)
        if n == 2:
            phases = "abc"[: self.config.phases]
            return fmt.compose(**{f"{p}_active_reverse": self._reverse for p in phases})
        if n == 3:
            prepaid = self.config.prepaid
            kind = "not_prepaid" if prepaid is None else f"{prepaid.kind}_prepaid"
            return fmt.compose(
                relay_open=self._relay_open,
                relay_trip_commanded=self._trip_commanded,
                pre_trip_alarm=self._alarm,
                meter_type=kind,
                keep_power=self._keep_power,
            )
        if n in (4, 5, 6):
            phase = "abc"[n - 4]
            lost = any(isinstance(a, LossOfVoltage) and a.phase == phase for a in self._active)
            return fmt.compose(loss_of_voltage=lost)
        return fmt.compose()

    def instant(self) -> Instantaneous:
        """Voltage, current, power... as the meter measures them now."""
        self._catch_up()
        t = self._t
        load = 0 if self._relay_open or not self._powered else self._load.power(t)
        load //= self.config.ct_ratio
        slot = 15 * MINUTE_US
        rng = slot_random(self.config.seed, t, slot, 1)
        district = slot_random(0, t, slot, 2)
        low = {
            "abc".index(a.phase): a.voltage_ratio
            for a in self._active
            if isinstance(a, LossOfVoltage)
        }
        return measure(
            load_units=load,
            phases=self.config.phases,
            nominal_voltage=self.config.nominal_voltage,
            power_factor=self.config.power_factor,
            voltage_jitter=(rng.randint(-15, 15), rng.randint(-15, 15), rng.randint(-15, 15)),
            frequency_jitter=district.randint(-5, 5),
            temperature_jitter=rng.randint(-30, 60),
            low_voltage=low,
            reverse=self._reverse,
        )

    def battery_minutes(self) -> int:
        self._catch_up()
        return (self._t - self._start_us) // MINUTE_US

    # --- the wire (request decoding and replies live in simulator.wire) ---------------------

    def hears(self, address: Address) -> bool:
        """Whether a frame sent to ``address`` is for this meter (own, broadcast or wildcard)."""
        if address == self.address or address.is_broadcast:
            return True
        if not address.is_wildcard:
            return False
        return all(a in ("A", m) for a, m in zip(address.digits, self.address.digits, strict=True))

    def handle(self, frame: Frame) -> Frame | None:
        """A request -> the meter's reply, or ``None`` when it stays silent."""
        if frame.control.direction or not self.hears(frame.address):
            return None
        self._catch_up()
        if not self._powered:
            return None
        if (
            frame.control.function == Function.WRITE
            and self.edition is Edition.V2007
            and not frame.address.is_broadcast
        ):
            return self._write_frame(frame)
        return wire.handle_frame(self, frame)

    def _write_frame(self, frame: Frame) -> Frame:
        try:
            message = decode_message(frame)
        except ProtocolError:
            return wire.error(self, Function.WRITE, ErrorWord.OTHER)
        if not isinstance(message, WriteRequest):
            return wire.error(self, Function.WRITE, ErrorWord.OTHER)
        refused = self.write(message)
        if refused is not None:
            return wire.error(self, Function.WRITE, refused)
        return Acknowledge(self.address, Function.WRITE).to_frame()

    def write(self, request: WriteRequest) -> ErrorWord | None:
        """Carry out a 0x14 write; the meter models date (04000101) and time (04000102).

        The password level and password must be the meter's (else ``ERR 04``, password /
        unauthorised); another DI, or a value that is not a valid date or time, is ``ERR 01``.
        """
        self._catch_up()
        cfg = self.config
        if request.password_level != cfg.password_level or request.password != cfg.password:
            return ErrorWord.PASSWORD
        if request.di not in (_DATE_DI, _TIME_DI):
            return ErrorWord.OTHER
        item = lookup(Edition.V2007, request.di)
        if item is None:  # pragma: no cover - both are in the registry
            return ErrorWord.OTHER
        try:
            values = {v.name: v.value for v in item.decode(request.value).values}
        except ProtocolError:
            return ErrorWord.OTHER
        now = self.now_local()
        if request.di == _DATE_DI:
            day = values.get("date")
            if not isinstance(day, dt.date):
                return ErrorWord.OTHER
            self.set_clock(dt.datetime.combine(day, now.time()))
        else:
            moment = values.get("time")
            if not isinstance(moment, dt.time):
                return ErrorWord.OTHER
            self.set_clock(dt.datetime.combine(now.date(), moment))
        return None

    def handle_bytes(self, raw: bytes) -> bytes | None:
        """Convenience: a request frame's wire bytes -> the reply's wire bytes, or ``None``."""
        try:
            frame = decode_frame(raw)
        except ProtocolError:
            return None
        reply = self.handle(frame)
        return None if reply is None else encode_frame(reply, preamble=self.config.reply_preamble)

    def set_clock(self, local: dt.datetime) -> None:
        """Broadcast time sync: the meter's clock reads ``local`` (naive local time) from now."""
        self._catch_up()
        self._clock.set(self._t, self.zone.utc_us(local))
        self._recompute_clock_boundaries()

    def execute_relay(self, command: RelayControl) -> ErrorWord | None:
        """Carry out a 0x1C command; the error word of a refusal, or ``None`` when done."""
        self._catch_up()
        cfg = self.config
        if command.password_level != cfg.password_level or command.password != cfg.password:
            return ErrorWord.PASSWORD
        now_local = self._meter_local(self._t)
        deadline: object = command.valid_until  # ABSENT when the deadline bytes are all 00/FF
        if not isinstance(deadline, dt.datetime) or deadline < now_local:
            return ErrorWord.OTHER  # expired; the 2007 error word has no bit of its own for it
        if any(isinstance(a, RelayStuck) for a in self._active):
            # Acknowledged, but nothing moves: only a read-back of status word 3 can tell.
            self.last_relay_command = RelayEvent(command.command, now_local)
            return None
        match command.command:
            case RelayCommand.TRIP:
                if self._keep_power:
                    return ErrorWord.OTHER
                self._trip_commanded = True
                self._set_relay(True)
            case RelayCommand.CLOSE | RelayCommand.CLOSE_ALLOWED:
                # CLOSE_ALLOWED waits for the customer's button; modelled as pressed at once.
                self._trip_commanded = False
                self._set_relay(False)
            case RelayCommand.ALARM:
                self._alarm = True
            case RelayCommand.ALARM_RELEASE:
                self._alarm = False
            case RelayCommand.KEEP_POWER:
                # A meter under keep-power (保电) is held closed.
                self._keep_power = True
                self._trip_commanded = False
                self._set_relay(False)
            case RelayCommand.KEEP_POWER_RELEASE:
                self._keep_power = False
        self.last_relay_command = RelayEvent(command.command, now_local)
        return None

    def add_anomaly(self, anomaly: Anomaly) -> None:
        """Schedule one more anomaly (tests, the demo); a window already begun starts now."""
        self._catch_up()
        n = len(self._events)
        start = max(anomaly.window.start_us, self._t)
        new = [(start, 1, n, anomaly)]
        if anomaly.window.end_us is not None:
            new.append((max(anomaly.window.end_us, start), 0, n, anomaly))
        pending = self._events[self._event_i :] + new
        pending.sort(key=lambda e: (e[0], e[1], e[2]))
        self._events = self._events[: self._event_i] + pending
        self._catch_up()

    def _set_relay(self, open_: bool) -> None:
        if open_ == self._relay_open:
            return
        self._relay_open = open_
        self._relay_log.append((self._t, open_))
        for callback in self._listeners:
            callback(self._t)


__all__ = [
    "DAILY_RECORDS",
    "EventCounters",
    "MeterConfig",
    "PrepaidConfig",
    "PrepaidState",
    "RelayEvent",
    "VirtualMeter",
]
