"""The systemd side of the daemon: sd_notify messages and the watchdog, with no library.

* :class:`Notifier` sends ``READY=1``, ``STATUS=...``, ``RELOADING=1``, ``STOPPING=1`` and
  ``WATCHDOG=1`` as datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
  namespace). Without the variable it does nothing, so the daemon runs the same by hand.
* :class:`Watchdog` feeds ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` only while the daemon
  works: the event loop ran the feeding task on time, and every bus worker is either asleep
  until its next due time or made progress (an exchange, answered or not) within its budget.
  A bus stuck inside an exchange stops the feeding, and systemd restarts the service.
  It runs on the monotonic clock, as systemd's timer does, never on the injected clock.
* :func:`status_line` is the one-line ``STATUS=`` summary ``systemctl status`` shows. It counts
  meters, as a field engineer reads it: every archive meter is due each day, and a meter is
  complete once every ledger item it owes for the day is done (:func:`day_progress`); the
  ledger items behind that figure follow, labelled as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from gateway.config import Config, SerialBusConfig, TcpBusConfig
from spool import Spool, SpoolError

log = logging.getLogger("amigw.systemd")

#: time a pass may spend between exchanges on spool work (a commit on slow flash, planning)
PASS_SLACK_S = 30.0


class Notifier:
    """Datagrams to the service manager; every failure is logged once and survived."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``VAR=value`` lines in one datagram; return whether it left."""
        if self.address is None:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(assignments).encode(), target)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify the service manager at %s: %s", self.address, exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        extra = () if status is None else (f"STATUS={_one_line(status)}",)
        return self.notify("READY=1", *extra)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_timeout(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """The watchdog timeout systemd asked for, in seconds; ``None`` when it asked for none
    or asked another process (``WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    usec, for_pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec:
        return None
    if for_pid and for_pid.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    return value / 1e6 if value > 0 else None


def stall_budgets(config: Config, round_idle_s: float) -> dict[str, float]:
    """How long each bus may go without an exchange while in a pass before it counts as
    wedged: the worst case of one request with all its attempts, plus spool work."""
    budgets: dict[str, float] = {}
    for bus in config.bus:
        budgets[bus.name] = _request_worst_case(bus) + PASS_SLACK_S
    if config.plc is not None:
        plc = config.plc
        longest = max(plc.point_read_timeout_s, round_idle_s) + 2 * plc.frame_timeout_ms / 1000
        budgets["plc"] = longest + PASS_SLACK_S
    return budgets


def _request_worst_case(bus: SerialBusConfig | TcpBusConfig) -> float:
    attempt = (bus.timeout_ms + bus.inter_frame_gap_ms) / 1000
    if isinstance(bus, TcpBusConfig):
        attempt += bus.connect_timeout_ms / 1000  # the link may reopen on each attempt
    return (bus.retries + 1) * attempt


class Activity(Protocol):
    """What the watchdog reads of the collector."""

    @property
    def working(self) -> Collection[str]: ...

    @property
    def bus_progress(self) -> Mapping[str, int]: ...


class Watchdog:
    """Feeds ``WATCHDOG=1`` while the loop and every bus make progress (see the module doc)."""

    def __init__(
        self,
        notifier: Notifier,
        timeout_s: float,
        activity: Activity,
        budgets: Mapping[str, float],
        *,
        default_budget_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.period = timeout_s / 2
        self.activity = activity
        self.budgets = dict(budgets)
        self.default_budget_s = default_budget_s
        self._monotonic = monotonic
        self._alive: dict[str, float] = {}
        self._seen: dict[str, int] = {}
        self.fed = 0
        self.withheld: str | None = None  # why the last turn did not feed

    def check(self, late_s: float) -> str | None:
        """Why the watchdog must not be fed now; ``None`` when all is well."""
        now = self._monotonic()
        working = set(self.activity.working)
        progress = self.activity.bus_progress
        stalled: str | None = None
        for bus in sorted(working | set(self._alive)):
            count = progress.get(bus, 0)
            if bus not in working or count != self._seen.get(bus):
                self._alive[bus] = now
                self._seen[bus] = count
                continue
            quiet = now - self._alive.setdefault(bus, now)
            if quiet > self.budgets.get(bus, self.default_budget_s) and stalled is None:
                stalled = f"bus {bus} has made no progress for {quiet:.0f} s"
        if late_s > self.period:
            return f"the event loop ran the watchdog {late_s:.1f} s late"
        return stalled

    def turn(self, late_s: float) -> bool:
        reason = self.check(late_s)
        if reason is None:
            if self.withheld is not None:
                log.warning("watchdog fed again: the daemon is making progress")
            self.withheld = None
            self.fed += 1
            self.notifier.watchdog()
            return True
        if reason != self.withheld:
            log.error("watchdog not fed: %s", reason)
        self.withheld = reason
        return False

    async def run(self) -> None:
        """Feed until cancelled."""
        loop = asyncio.get_running_loop()
        self.turn(0.0)
        due = loop.time() + self.period
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            self.turn(now - due)
            due = now + self.period


class StatusSource(Protocol):
    async def __call__(self) -> str: ...


async def report_status(
    notifier: Notifier, source: StatusSource, interval_s: float, stop: asyncio.Event
) -> None:
    """Send ``STATUS=`` every ``interval_s`` until ``stop``; a busy spool skips a turn."""
    while not stop.is_set():
        try:
            notifier.status(await source())
        except SpoolError as exc:
            log.debug("no status line this turn: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


@dataclass(frozen=True, slots=True)
class DayProgress:
    """One day's collection, counted in meters first and ledger items second."""

    meters: int  # archive meters: each one is due every day
    complete: int  # archive meters whose every ledger item for the day is done
    items_done: int
    items: int  # the day's ledger entries (meter x item), 0 until the day is planned


async def day_progress(spool: Spool, archive: Collection[str], day: date) -> DayProgress:
    """How many of the ``archive`` meters have every ledger item of ``day`` done.

    Planning gives every archive meter its items for the day at once, so once the day has
    entries a meter that owes none is complete. The meters still owing come from the index of
    open entries, with nothing decoded. A meter removed from the archive does not count,
    whatever it still owes.
    """
    summary = await spool.ledger_summary(day)
    if not summary.total:
        return DayProgress(len(archive), 0, 0, 0)
    owing = await spool.owing_meters(day)
    complete = sum(1 for meter in archive if meter not in owing)
    return DayProgress(len(archive), complete, summary.done, summary.total)


def status_line(
    progress: DayProgress,
    *,
    uplink: bool | None = None,
    unsent: int | None = None,
    paused: bool = False,
) -> str:
    """``collecting: 812/1000 meters complete today, ledger items 4062/5000 done, uplink
    connected, spool 1234 unsent`` (meters as :func:`day_progress` counts them)."""
    state = "paused, spool full" if paused else "collecting"
    meters = f"{progress.complete}/{progress.meters} meters complete today"
    if progress.items:
        parts = [f"{state}: {meters}", f"ledger items {progress.items_done}/{progress.items} done"]
    else:
        parts = [f"{state}: {meters} (not planned yet)"]
    if uplink is not None:
        parts.append(f"uplink {'connected' if uplink else 'disconnected'}")
    if unsent is not None:
        parts.append(f"spool {unsent} unsent")
    return ", ".join(parts)


__all__ = [
    "Activity",
    "DayProgress",
    "Notifier",
    "StatusSource",
    "Watchdog",
    "day_progress",
    "report_status",
    "stall_budgets",
    "status_line",
    "watchdog_timeout",
]
