"""The demonstration: a simulated district and the gateway collecting from it, in one process.

When a mosquitto binary is installed, the demo starts a private broker on a free loopback port,
points the gateway's uplink at it and subscribes to the gateway's topics, printing what arrives
(batches per topic, and every alarm raised or cleared).

:func:`config_for` writes the gateway configuration that matches a scenario (the same meters
on the same bus names), with each bus pointing at the simulator's endpoint — the file a field
engineer would write for that district. :func:`run_demo` starts the simulated district, runs
the real daemon against it over ptys, TCP and the virtual PLC module with both sharing one
scaled clock (so a simulated day passes in about a minute), and ends with a short summary:
meters read and the success rate of the last day, days caught up, alarms raised, and batches
the head-end side received (:class:`DemoSummary`).

The daemon logs as ``amigw run`` does with the demo's configuration (:mod:`gateway.logs`, at
its ``[logging]`` level), into a file rather than onto the terminal the demo prints its story
on: ``amigw.log`` in the ``--keep`` directory, or a ``amigw-demo-*.log`` file in the system's
temporary directory that outlives the run. Not being a terminal, the file gets what journald
would get: one JSON object per line behind its priority. The summary names the file and says
how many of its lines are warnings or errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo

from drivers.clock import ScaledClock
from gateway import logs
from gateway.collector.plans import Item
from gateway.config import Config, parse_config
from simulator.run import Simulation, start_simulation
from simulator.scenario import Scenario
from spool import CLEARED_SUFFIX, LedgerEntry, LedgerState, Spool

from .daemon import build


def _toml(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"{key} = {value!r}"
    return f'{key} = "{value}"'


def config_for(
    scenario: Scenario,
    spool: Path,
    *,
    buses: Mapping[str, Mapping[str, Any]] | None = None,
    plc: Mapping[str, Any] | None = None,
    gateway_id: str = "gw-demo",
    catch_up_days: int = 2,
    collection: Mapping[str, Any] | None = None,
    extra: str = "",
) -> str:
    """The gateway configuration (TOML) for every meter of ``scenario``, on its bus names.

    ``buses`` gives each bus's keys (``device`` or ``host``/``port``...); a bus it does not
    name gets a placeholder serial device (fine for in-memory channels, which never open it).
    """
    buses = buses or {}
    plans = list(scenario.meters) + ([scenario.master] if scenario.master else [])
    names = sorted({p.bus for p in plans} - {"plc"})
    lines = [
        "[gateway]",
        _toml("id", gateway_id),
        _toml("timezone", scenario.zone.name),
        "[spool]",
        _toml("path", str(spool)),
        "[collection]",
        _toml("catch_up_days", catch_up_days),
        *(_toml(k, v) for k, v in (collection or {}).items()),
    ]
    for name in names:
        lines += ["[[bus]]", _toml("name", name)]
        keys = buses.get(name, {"kind": "serial", "device": f"/dev/null-{name}"})
        lines += [_toml(k, v) for k, v in keys.items()]
    if plc is not None:
        lines += ["[plc]"] + [_toml(k, v) for k, v in plc.items()]
    for plan in plans:
        lines += [
            "[[meter]]",
            _toml("address", plan.address.digits),
            _toml("edition", plan.config.edition.value[-4:]),
            _toml("bus", plan.bus),
        ]
        if plan is scenario.master:
            lines += ['role = "master"', _toml("phases", plan.config.phases)]
        if plan.config.prepaid is not None:
            lines += ['prepaid = "remote"']
    return "\n".join(lines) + "\n" + extra


def config_for_simulation(
    sim: Simulation,
    spool: Path,
    clock: ScaledClock,
    *,
    snappy: bool = False,
    extra_tables: str = "",
    **kwargs: Any,
) -> str:
    """:func:`config_for` with every bus pointing at the running simulation's endpoints.

    ``snappy`` sizes each bus's timeout to its baud rate with one retry: wire time is real
    while calendar time runs fast, so at 1440x a silent meter's default 3 x 1.5 s would cost
    the bus almost two simulated hours per item.
    """
    buses: dict[str, dict[str, Any]] = {}
    plc: dict[str, Any] | None = None
    for e in sim.endpoints:
        timing = _snappy(e.baud) if snappy else {}
        if e.kind == "pty":
            # A pty cannot carry even parity; the wire accounting stays 8E1.
            buses[e.bus] = {
                "kind": "serial", "device": e.path, "baud": e.baud, "parity": "N", **timing
            }  # fmt: skip
        elif e.kind == "tcp":
            buses[e.bus] = {"kind": "tcp", "host": e.host, "port": e.port, "baud": e.baud, **timing}
        else:
            plc = {"device": e.path, "baud": e.baud, "parity": "N", "mode": "router"}
    clock_table = (
        f'[clock]\nmode = "scaled"\norigin = "{clock.origin.isoformat()}"\n'
        f"speed = {clock.speed!r}\nreal_origin = {clock.real_origin!r}\n"
    )
    extra = clock_table + extra_tables
    return config_for(sim.scenario, spool, buses=buses, plc=plc, extra=extra, **kwargs)


def _snappy(baud: int) -> dict[str, int]:
    # Room for a 64-byte request and a 64-byte reply at this baud rate, plus turnaround.
    return {"timeout_ms": 300 + 2 * round(64 * 11 * 1000 / baud), "retries": 1}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_mosquitto() -> str | None:
    """The mosquitto binary on PATH or at Debian's location, or ``None``."""
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    return found


@contextlib.contextmanager
def _broker(workdir: Path, binary: str | None) -> Iterator[int | None]:
    """A private mosquitto on a free loopback port, or ``None`` without a binary."""
    if binary is None:
        yield None
        return
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    # The binary was found on PATH or at Debian's location; the config is our own file.
    proc = subprocess.Popen(  # noqa: S603
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


@dataclass
class HeadEnd:
    """What the head-end side received: batches, and the records in them, per topic."""

    batches: Counter[str] = field(default_factory=Counter)
    records: Counter[str] = field(default_factory=Counter)


_BATCH_TOPICS: Final = frozenset({"readings", "alarms", "events", "ledger"})


async def _subscribe(port: int, topic: str, seen: HeadEnd, out: TextIO) -> None:
    import aiomqtt  # noqa: PLC0415 - only when a broker runs

    for _ in range(50):
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="amigw-demo-headend") as client:
                await client.subscribe(topic, qos=1)
                async for message in client.messages:
                    kind = str(message.topic).rsplit("/", 1)[-1]
                    if kind not in _BATCH_TOPICS or not isinstance(message.payload, bytes):
                        continue
                    records = json.loads(message.payload).get("records", [])
                    seen.batches[kind] += 1
                    seen.records[kind] += len(records)
                    if kind != "alarms":
                        continue
                    for record in records:
                        print(
                            f"  head-end got alarm {record.get('type')} meter "
                            f"{record.get('meter') or '-'} since {record.get('window_start')}",
                            file=out,
                        )
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


@dataclass(frozen=True, slots=True)
class DaemonLog:
    """Where the daemon's log went, and what it holds."""

    path: Path
    lines: int
    warnings: int  # lines at warning or worse (sd-daemon priority 4 or lower)


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """The figures the demo ends with (also what its test checks)."""

    day: dt.date | None
    meters: int
    #: meters whose daily frozen reading of ``day`` is collected, and their share of the
    #: day's meters: the success rate (采集成功率) as ``amigw ledger`` and the metrics count it
    meters_read: int
    day_rate: Decimal | None
    day_items: int
    day_items_rate: Decimal | None  # ledger items of ``day`` done, of all its items
    items: int
    done: int
    caught_up_days: int
    recovered: int
    alarms: Counter[str]
    cleared: int
    delivered: HeadEnd | None
    log: DaemonLog | None = None

    @property
    def rate(self) -> Decimal | None:
        if not self.items:
            return None
        return (Decimal(self.done) / Decimal(self.items)).quantize(Decimal("0.0001"))


def _read(entries: list[LedgerEntry]) -> set[str]:
    """The meters among ``entries`` whose daily frozen reading is collected."""
    return {
        e.meter
        for e in entries
        if e.item == Item.DAILY_FROZEN.value and e.state is LedgerState.DONE
    }


async def summarise(
    spool: Spool,
    config: Config,
    first_day: dt.date,
    delivered: HeadEnd | None,
    log: DaemonLog | None = None,
) -> DemoSummary:
    """The run in a few figures: the last day's collection, catch-up, alarms, delivery."""
    entries = await spool.ledger()
    days = sorted({e.day for e in entries})
    day = days[-1] if days else None
    today = [e for e in entries if e.day == day]
    read = _read(today)
    due = {e.meter for e in today}
    summary = await spool.ledger_summary(day) if day is not None else None
    alarms: Counter[str] = Counter()
    cleared = 0
    for alarm in await spool.alarms():
        if alarm.type.endswith(CLEARED_SUFFIX):
            cleared += 1
        else:
            alarms[alarm.type] += 1
    return DemoSummary(
        day=day,
        meters=len(config.meter),
        meters_read=len(read),
        day_rate=_ratio(len(read), len(due)),
        day_items=len(today),
        day_items_rate=None if summary is None else summary.success_rate,
        items=len(entries),
        done=sum(e.state is LedgerState.DONE for e in entries),
        caught_up_days=sum(
            1
            for d in days
            if d < first_day and all(e.state is LedgerState.DONE for e in entries if e.day == d)
        ),
        recovered=sum(e.state is LedgerState.DONE and e.attempts > 1 for e in entries),
        alarms=alarms,
        cleared=cleared,
        delivered=delivered,
        log=log,
    )


def _ratio(part: int, whole: int) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)


def print_summary(s: DemoSummary, out: TextIO) -> None:
    def pct(rate: Decimal | None) -> str:
        return "-" if rate is None else f"{rate:.1%}"

    print("summary", file=out)
    print(
        f"  meters read        {s.meters_read} of {s.meters} on {s.day or '-'} (daily frozen "
        f"reading): success rate {pct(s.day_rate)}",
        file=out,
    )
    print(
        f"  ledger items done  {pct(s.day_items_rate)} of {s.day_items} on {s.day or '-'}; "
        f"{pct(s.rate)} of {s.items} over every day",
        file=out,
    )
    print(
        f"  catch-up           {s.caught_up_days} earlier day(s) from the meters' history; "
        f"{s.recovered} item(s) done on a retry",
        file=out,
    )
    kinds = ", ".join(f"{t} {n}" for t, n in sorted(s.alarms.items()))
    print(
        f"  alarms raised      {sum(s.alarms.values())}" + (f": {kinds}" if kinds else "")
        + f"; {s.cleared} cleared since",
        file=out,
    )  # fmt: skip
    if s.delivered is None:
        print("  batches delivered  - (no broker: the uplink was off)", file=out)
    else:
        by_topic = ", ".join(f"{t} {n}" for t, n in sorted(s.delivered.batches.items()))
        print(
            f"  batches delivered  {sum(s.delivered.batches.values())} to the subscriber"
            + (f": {by_topic}" if by_topic else "")
            + f" ({sum(s.delivered.records.values())} records)",
            file=out,
        )
    if s.log is not None:
        print(
            f"  daemon log         {s.log.lines} lines, {s.log.warnings} warnings or errors, "
            f"in {s.log.path}",
            file=out,
        )


NO_BROKER: Final = (
    "mosquitto is not installed, so this demo runs without the uplink. `make demo` installs "
    "it when run as root; otherwise install it (Debian/Ubuntu: sudo apt-get install "
    "mosquitto) and run the demo again."
)


async def run_demo(
    scenario: Scenario,
    *,
    speed: float,
    duration_s: float,
    out: TextIO,
    mosquitto: str | bool | None = True,
    keep: Path | None = None,
) -> DemoSummary:
    """Run the demo and print as it goes; ``mosquitto``: a binary, ``True`` to look for one,
    ``None``/``False`` for none (the uplink is then off). ``keep``: a directory to leave the
    configuration and spool in (otherwise a temporary one, removed at the end)."""
    binary = find_mosquitto() if mosquitto is True else (mosquitto or None)
    clock = ScaledClock(scenario.start, speed=speed)
    first_day = scenario.start.astimezone(ZoneInfo(scenario.zone.name)).date()
    async with start_simulation(scenario, clock) as sim:
        print(f"simulated district {scenario.name!r}: {len(sim.district.meters)} meters", file=out)
        for e in sim.endpoints:
            print(f"  {e.describe()}", file=out)
        with (
            _workdir(keep) as tmp,
            _broker(Path(tmp), binary) as port,
            _log_file(keep) as (log_path, log_file),
            contextlib.ExitStack() as daemon_logging,
        ):
            metrics_port = _free_port()
            extra = f"[metrics]\nport = {metrics_port}\n"
            if port is not None:
                extra += f'[uplink]\nhost = "127.0.0.1"\nport = {port}\nbatch_max_age_s = 1\n'
            text = config_for_simulation(
                sim, Path(tmp) / "spool.sqlite", clock, snappy=True, extra_tables=extra
            )
            config = parse_config(text, "demo configuration")
            (Path(tmp) / "amigw.toml").write_text(text, encoding="utf-8")
            # As `amigw run` with this configuration and its stderr on the file.
            secrets = logs.config_secrets(config)
            daemon_logging.enter_context(
                logs.configured(config.logging, stream=log_file, secrets=secrets)
            )
            daemon = await build(config, clock)
            seen = None if port is None else HeadEnd()
            listener = None
            if port is None or seen is None:
                print(NO_BROKER, file=out)
            else:
                topic = (
                    f"{config.uplink.prefix if config.uplink else 'amigw'}/{config.gateway.id}/#"
                )
                print(f"broker 127.0.0.1:{port}; the head-end side subscribes to {topic}", file=out)
                listener = asyncio.create_task(_subscribe(port, topic, seen, out))
            print(
                f"gateway {config.gateway.id} collecting (metrics on 127.0.0.1:{metrics_port}, "
                f"log in {log_path}); simulated time runs {speed:g}x",
                file=out,
            )
            task = asyncio.create_task(daemon.run())
            started = asyncio.get_running_loop().time()
            try:
                loop = asyncio.get_running_loop()
                while (left := duration_s - (loop.time() - started)) > 0 and not task.done():
                    await asyncio.sleep(min(10.0, left))
                    now = clock.now().astimezone(config.gateway.zone)
                    stats = daemon.collector.stats
                    print(
                        f"[{now:%Y-%m-%d %H:%M}] readings {stats.readings_new}, sessions "
                        f"{stats.sessions_ok} ok / {stats.sessions_failed} failed, "
                        f"time syncs {stats.time_syncs}",
                        file=out,
                    )
            finally:
                daemon.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if listener is not None:
                    await asyncio.sleep(1.0)
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
            try:
                print("collection ledger:", file=out)
                await _report(daemon.spool, first_day, out)
                log_file.flush()
                result = await summarise(daemon.spool, config, first_day, seen, _counted(log_path))
                print_summary(result, out)
            finally:
                await daemon.spool.close()
    if keep is not None:
        print(
            f"kept in {keep}: try  amigw ledger --spool {keep / 'spool.sqlite'} --date "
            f"{result.day}  or  amigw spool stats -c {keep / 'amigw.toml'}",
            file=out,
        )
    return result


@contextlib.contextmanager
def _log_file(keep: Path | None) -> Iterator[tuple[Path, TextIO]]:
    """The file the daemon logs to: in ``keep``, or one of its own that outlives the run."""
    if keep is None:
        fd, name = tempfile.mkstemp(prefix="amigw-demo-", suffix=".log")
        path, stream = Path(name), os.fdopen(fd, "w", encoding="utf-8")
    else:
        keep.mkdir(parents=True, exist_ok=True)
        path = keep / "amigw.log"
        stream = path.open("w", encoding="utf-8")
    with stream:
        yield path, stream


def _counted(path: Path) -> DaemonLog:
    lines = path.read_text("utf-8").splitlines()
    # Each line starts with its sd-daemon priority, "<N>"; 4 is a warning, lower is worse.
    worse = sum(1 for line in lines if line[:1] == "<" and line[1:2].isdigit() and line[1] <= "4")
    return DaemonLog(path, len(lines), worse)


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[str]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="amigw-demo-") as tmp:
            yield tmp
        return
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("spool.sqlite", "spool.sqlite-wal", "spool.sqlite-shm"):
        (keep / name).unlink(missing_ok=True)  # a fresh district needs a fresh spool
    yield str(keep)


async def _report(spool: Spool, first_day: dt.date, out: TextIO) -> None:
    entries = await spool.ledger()
    for day in sorted({e.day for e in entries}):
        mine = [e for e in entries if e.day == day]
        s = await spool.ledger_summary(day)
        mark = " (caught up)" if day < first_day else ""
        print(
            f"  {day}{mark}: {len(_read(mine))}/{len({e.meter for e in mine})} meters read; "
            f"items {s.done} done, {s.failed} failed, {s.pending} pending",
            file=out,
        )
