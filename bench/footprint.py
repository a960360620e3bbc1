"""Benchmark: the daemon's footprint through one simulated day with 2,000 meters.

``amigw simulate`` serves 2,000 meters on 20 simulated TCP serial servers (RS-485 behind a
DTU, 19200 baud, 5 ms turnaround) in its own process, on a scaled clock that starts at
midnight; ``amigw run`` (the real daemon, a process of its own, logging JSON lines to a file)
collects them through the simulated day with the edge checks and the metrics endpoint on and,
when mosquitto is installed, forwards everything to a private broker. Measured on the
daemon's process:

* time from exec to ``READY=1`` on a real ``NOTIFY_SOCKET`` (target <= 2 s), against the
  baseline of a bare interpreter started and notifying the same way in the same run;
* peak RSS, ``VmHWM`` from ``/proc/PID/status`` (target <= 80 MB), against the same baseline;
* CPU seconds (utime + stime) over the simulated day, and how much of the day's collection
  ledger was done (so the figure is for a day's real work).

Back-fill is off (``catch_up_days = 0``), so the day is a steady-state day, not a first one.
``--history-days N`` (default 30; 0 starts from an empty spool) first writes, untimed and
through the ``Spool`` API, what a box that has run for N days holds: for each of the N days
before the simulated one, the daily frozen values (forward and reverse registers) every
simulated meter froze and its event counters, all acknowledged by the head-end, so the edge
checks judge a month of history and the uplink has nothing old to send. The simulated meters
warm up over the same days, so those values agree with what the daemon then reads.
The daemon gets ``MALLOC_ARENA_MAX=2``, as ``systemd/amigw.service`` sets it. ``--keep DIR``
keeps the logs and ``rss.csv`` (RSS and CPU every half second).
Run: ``.venv/bin/python bench/footprint.py [--meters 2000] [--buses 20] [--day-s 150]
[--history-days 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

# Run as a script, this directory comes first on sys.path and would shadow the "simulator"
# package with bench/simulator.py.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from drivers.clock import ManualClock  # noqa: E402
from simulator.scenario import build_district, load_scenario  # noqa: E402
from spool import Outbox, Quality, Reading, ReadingKind, ReadingValue, Spool, Stream  # noqa: E402
from tests.broker import MOSQUITTO, Broker, free_port  # noqa: E402

RSS_TARGET_MB = 80.0
READY_TARGET_S = 2.0
TICK = os.sysconf("SC_CLK_TCK")
#: as the unit sets it: glibc's per-thread arenas (aiosqlite's and the metrics server's
#: threads) otherwise keep megabytes of freed memory each
MALLOC_ARENA_MAX = "2"


def scenario(meters: int, buses: int, history_days: int = 0) -> str:
    lines = [
        f'name = "footprint-{meters}"',
        f'description = "{meters} meters on {buses} serial servers, for bench/footprint.py"',
        "[simulation]",
        "start = 2025-06-03T00:00:00+08:00",
        'timezone = "Asia/Shanghai"',
        "seed = 2000",
        # The meters warm up a day before the oldest seeded day, so they froze it.
        f"history_days = {max(2, history_days + 1)}",
        "[defaults]",
        'edition = "2007"',
        'profile = "residential"',
    ]
    per_bus = -(-meters // buses)
    for b in range(buses):
        name = f"dtu-{b + 1:02d}"
        count = min(per_bus, meters - b * per_bus)
        lines += ["[[buses]]", f'name = "{name}"', 'kind = "tcp"', "baud = 19200"]
        lines += ["turnaround_ms = 5"]
        lines += ["[[meter_groups]]", f'first_address = "{1_000_001 + b * 10_000:012d}"']
        lines += [f"count = {count}", f'bus = "{name}"']
    return "\n".join(lines) + "\n"


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def peak_rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmHWM"].split()[0]) / 1024


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the command: state is field 3, utime 14 and stime 15 (proc(5), 1-based)
    return (int(fields[11]) + int(fields[12])) / TICK


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()


def wait_ready(sock: socket.socket, process: subprocess.Popen[bytes], within: float) -> float:
    """Seconds until ``READY=1`` arrived (the clock started before the exec)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {process.returncode} before READY=1")
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        if "READY=1" in message.splitlines():
            return time.monotonic()
    raise RuntimeError(f"no READY=1 within {within} s")


def baseline(sock_path: Path) -> tuple[float, float]:
    """A bare interpreter sending READY=1 the same way: start time and peak RSS."""
    code = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
        "print(open('/proc/self/status').read())\n"
    )
    with notify_socket(sock_path) as sock:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
        )
        ready = wait_ready(sock, process, 30) - started
        out, _ = process.communicate(timeout=30)
    hwm = re.search(r"VmHWM:\s+(\d+) kB", out.decode())
    assert hwm is not None
    sock_path.unlink()
    return ready, int(hwm.group(1)) / 1024


_TARIFFS: Final = ("total", "sharp", "peak", "flat", "valley")
_SEED_CHUNK: Final = 20_000
_COUNTERS: Final = (
    ("03300D00", "meter_cover_open_count"),
    ("03300E00", "terminal_cover_open_count"),
    ("03110000", "power_down_count"),
)


def seed_history(scenario_file: Path, spool: Path, days: int) -> int:
    """Write what a month-old box holds for the ``days`` before the scenario's start into
    ``spool``, as delivered: each meter's daily frozen registers as it froze them, and its
    event counters (no events: the scenario injects none), read minutes after; return the
    readings written."""
    plan = load_scenario(scenario_file)
    district = build_district(plan, ManualClock(plan.start))
    first = plan.start.astimezone(plan.zone.tz).date()
    readings: list[Reading] = []
    for i, (address, meter) in enumerate(district.meters.items()):
        meter_id, bus = str(address), district.bus_of(address)
        # Reads spread over the first hours, gateway time in UTC, as the collector records it.
        late = dt.timedelta(minutes=5 + i % 120, microseconds=i * 7919 % 1_000_000)
        for n in range(days, 0, -1):
            record = meter.frozen_record(first - dt.timedelta(days=n))
            if record is None:
                raise RuntimeError(f"the simulated meter {address} kept no record {n} days back")
            at = record.freeze_time.replace(tzinfo=plan.zone.tz)
            read = (at + late).astimezone(dt.UTC)
            for di, prefix, registers in (
                ("05060101", "forward_active", record.registers.forward_active),
                ("05060201", "reverse_active", record.registers.reverse_active),
            ):
                values = {
                    f"{prefix}_{t}": ReadingValue(v, "kWh")
                    for t, v in zip(_TARIFFS, registers, strict=True)
                }
                readings.append(
                    Reading(meter_id, di, at, read, values, Quality.OK, ReadingKind.DAILY_FROZEN,
                            bus)
                )  # fmt: skip
            counted = (at + late + dt.timedelta(hours=2)).replace(microsecond=0)
            for di, name in _COUNTERS:
                readings.append(
                    Reading(meter_id, di, counted, (counted + late).astimezone(dt.UTC),
                            {name: ReadingValue(0)}, Quality.OK, ReadingKind.EVENT_COUNTER, bus)
                )  # fmt: skip

    async def write() -> None:
        async with Spool.connect(spool) as store:
            for i in range(0, len(readings), _SEED_CHUNK):
                await store.write_readings(readings[i : i + _SEED_CHUNK])
            # A month-old box has delivered its month: cut and acknowledge everything, so the
            # daemon's uplink starts with an empty outbox, as it would in the field.
            async with Outbox(store) as outbox:
                while True:
                    took = await outbox.take(
                        max_batches=100, max_records=1000, flush=set(Stream), now=plan.start
                    )
                    if not took.cut:
                        break
                    await outbox.acknowledge([b.seq for b in took.cut])

    asyncio.run(write())
    return len(readings)


def start_simulator(
    workdir: Path, meters: int, buses: int, speed: float, history_days: int
) -> tuple[subprocess.Popen[str], Path]:
    (workdir / "scenario.toml").write_text(scenario(meters, buses, history_days))
    config = workdir / "gw.toml"
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", str(workdir / "scenario.toml"),
         "--speed", repr(speed), "--gateway-config", str(config)],
        stdout=subprocess.PIPE, text=True, cwd=_ROOT,
    )  # fmt: skip
    assert sim.stdout is not None
    for line in sim.stdout:
        if line.strip() == "ready":
            return sim, config
    raise RuntimeError(f"the simulator exited with {sim.wait()}")


def configure(config: Path, broker: Broker | None) -> None:
    text = config.read_text()
    text = re.sub(r"(?m)^catch_up_days = .*$", "catch_up_days = 0", text)
    text += '\n[logging]\nlevel = "info"\nformat = "json"\n'
    text += f"\n[metrics]\nport = {free_port()}\n"
    if broker is not None:
        text += f'\n[uplink]\nhost = "{broker.host}"\nport = {broker.port}\n'
    config.write_text(text)


def ledger(spool: Path, day: str) -> tuple[int, int]:
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT state, COUNT(*) FROM ledger WHERE day = ? GROUP BY state", (day,)
        ).fetchall()
    counts = dict(rows)
    return counts.get("done", 0), sum(counts.values())


def alarm_count(spool: Path) -> int:
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM alarms").fetchone()[0])


def run(meters: int, buses: int, day_s: float, keep: Path | None, history_days: int) -> None:
    speed = 86400 / day_s
    with contextlib.ExitStack() as scratch:
        if keep is None:
            workdir = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="amigw-fp-")))
        else:
            workdir = keep
            workdir.mkdir(parents=True, exist_ok=True)
        base_ready, base_rss = baseline(workdir / "base.sock")
        with contextlib.ExitStack() as stack:
            broker = None
            if MOSQUITTO is not None:
                broker = stack.enter_context(Broker.running(workdir / "broker"))
            # The spool path the simulator will write into the daemon's config (gw.toml).
            spool = workdir / "gw-spool.sqlite"
            seeded = 0
            if history_days:
                (workdir / "scenario.toml").write_text(scenario(meters, buses, history_days))
                seeded = seed_history(workdir / "scenario.toml", spool, history_days)
            sim, config = start_simulator(workdir, meters, buses, speed, history_days)
            stack.callback(lambda: (sim.send_signal(signal.SIGTERM), sim.wait(30)))
            configure(config, broker)
            assert spool == config.with_name(config.stem + "-spool.sqlite")
            sock = stack.enter_context(notify_socket(workdir / "notify.sock"))
            log = stack.enter_context((workdir / "daemon.log").open("wb"))
            env = {
                **os.environ,
                "NOTIFY_SOCKET": str(workdir / "notify.sock"),
                "MALLOC_ARENA_MAX": MALLOC_ARENA_MAX,
            }
            started = time.monotonic()
            daemon = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(config)],
                stdout=log, stderr=log, env=env, cwd=_ROOT,
            )  # fmt: skip
            ready = wait_ready(sock, daemon, 60) - started
            cpu_ready = cpu_s(daemon.pid)
            rss_ready = peak_rss_mb(daemon.pid)
            # Run to the end of the simulated day (it began when the simulator started).
            origin = re.search(r"(?m)^real_origin = (.*)$", config.read_text())
            assert origin is not None
            end = float(origin.group(1)) + day_s
            samples = stack.enter_context((workdir / "rss.csv").open("w"))
            samples.write("real_s,rss_mb,cpu_s\n")
            while time.time() < end and daemon.poll() is None:
                rss = int(proc_status(daemon.pid)["VmRSS"].split()[0]) / 1024
                at = time.monotonic() - started
                samples.write(f"{at:.1f},{rss:.1f},{cpu_s(daemon.pid):.2f}\n")
                time.sleep(0.5)
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with {daemon.returncode}; see its log")
            cpu_day = cpu_s(daemon.pid)
            peak = peak_rss_mb(daemon.pid)
            daemon.send_signal(signal.SIGTERM)
            status = daemon.wait(60)
            done, total = ledger(spool, "2025-06-03")
            alarms = alarm_count(spool)

    print(
        f"footprint: {meters} meters on {buses} TCP serial servers (19200 bd, 5 ms turnaround), "
        f"one simulated day in "
        f"{day_s:.0f} s (speed {speed:.0f}), uplink {'on' if broker else 'off (no mosquitto)'}"
    )
    print(f"  history in the spool   {history_days} days ({seeded:,} readings)")
    print(f"  day's ledger done      {done}/{total} items ({alarms} alarm record(s))")
    print(
        f"  exec -> READY=1        {ready:6.2f} s   (target <= {READY_TARGET_S:.0f} s; "
        f"bare interpreter {base_ready:.2f} s, ratio {ready / base_ready:.1f}x)"
    )
    print(
        f"  peak RSS (VmHWM)       {peak:6.1f} MB  (target <= {RSS_TARGET_MB:.0f} MB; "
        f"{rss_ready:.1f} MB at READY; bare interpreter {base_rss:.1f} MB, "
        f"ratio {peak / base_rss:.1f}x)"
    )
    print(f"  CPU per simulated day  {cpu_day:6.1f} s    ({cpu_ready:.2f} s of it to READY)")
    print(f"  exit status on SIGTERM {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--buses", type=int, default=20)
    parser.add_argument("--day-s", type=float, default=150.0, help="real seconds per simulated day")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in this directory and keep it (logs)"
    )
    parser.add_argument(
        "--history-days", type=int, default=30,
        help="days of daily frozen history written to the spool before the daemon starts",
    )  # fmt: skip
    args = parser.parse_args()
    run(args.meters, args.buses, args.day_s, args.keep, args.history_days)


if __name__ == "__main__":
    main()
