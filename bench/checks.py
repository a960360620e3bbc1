"""Edge checks: time to run every rule for 2,000 meters with 30 days of history.

Workload: one district of 2,000 single-phase meters and a master meter; per meter 31 daily
frozen values (forward total and four tariffs, reverse total), daily event counters, the last
two days' clock and status reads, and six hourly real-time snapshots (energy, voltage, current,
power); 200 of the meters are prepaid (flat, time-of-use and tiered tariffs). One meter in fifty
carries an anomaly (register stepped back, stopped, fast, clock off, cover opened, voltage
lost), so alarms are raised too. Written to a fresh spool first (not timed).

Timed, best of ``--rounds``:

(a) **rules** — ``Checker.evaluate`` from cold: every rule over every meter's history (the
    month of daily values and counters read back from the spool chunk by chunk, derived
    series rebuilt), district line loss and collection rate, prepaid judgements and the alarm
    life decisions: what a full run costs once the short-span history is in memory.
(b) **first run** — ``Checker.run_once`` on a fresh checker: reading the history from the
    spool, all of (a), posting the balance ledgers and raising the alarms.
(c) **next run** — ``run_once`` again with nothing new written (the steady state between
    collection passes: unchanged meters are not judged again).
(d) baseline — reading the same month back, chunk by chunk, with one plain pass over it
    computing each meter's daily energy and its maximum, the least any rule set must do;
    (a)/(d) says what the rules add.

Not timed: (e) **memory** — what a fresh checker still holds (traced by ``tracemalloc``, after
a collection) once its first ``run_once`` returned: the short-span history, each meter's
verified days, ledgers and line-loss results; in MB and in bytes per meter-day of history,
with the peak during that run (a chunk of meters' month read back, judged and let go).

Targets: (a) under 2 s on this machine; (e) at most 40 MB for 2,000 meters x 30 days
(``MEMORY_TARGET_B`` bytes per meter-day).

    .venv/bin/python bench/checks.py [--meters N] [--days N] [--rounds N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import itertools
import os
import sys
import tempfile
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

# Run as a script, this file's directory comes first on sys.path and "spool" would import this
# file's neighbours instead of the packages.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from drivers.clock import ManualClock  # noqa: E402
from gateway.checks import Checker  # noqa: E402
from gateway.config import Config, parse_config  # noqa: E402
from spool import Quality, Reading, ReadingKind, ReadingValue, Spool  # noqa: E402

ZONE = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2025, 7, 1, 8, 30, tzinfo=ZONE)
CHUNK = 20_000
#: 40 MB for 2,000 meters x 30 days
MEMORY_TARGET_B = 40e6 / (2000 * 30)


def _addr(i: int) -> str:
    return f"{100000000000 + i:012d}"


def config_text(meters: int, spool: Path) -> str:
    lines = [
        "[gateway]", 'id = "bench"', 'district = "TQ-1"',
        "[spool]", f'path = "{spool}"',
        "[[bus]]", 'name = "plc-sim"', 'device = "/dev/null"',
        "[[tariff]]", 'name = "flat"', 'kind = "flat"', 'price = "0.5283"',
        "[[tariff]]", 'name = "tou"', 'kind = "tou"', 'sharp = "1.2"', 'peak = "1.0"',
        'flat = "0.7"', 'valley = "0.35"',
        "[[tariff]]", 'name = "tiered"', 'kind = "tiered"', 'thresholds_kwh = ["2760", "4800"]',
        'prices = ["0.5283", "0.5783", "0.8283"]',
        "[[meter]]", f'address = "{_addr(0)}"', 'bus = "plc-sim"', 'role = "master"',
        "phases = 3",
    ]  # fmt: skip
    for i in range(1, meters + 1):
        lines += ["[[meter]]", f'address = "{_addr(i)}"', 'bus = "plc-sim"']
        if i % 10 == 0:
            lines += ['prepaid = "remote"', f'account = "A{i}"']
    for i in range(10, meters + 1, 10):
        tariff = ("flat", "tou", "tiered")[i // 10 % 3]
        lines += ["[[account]]", f'id = "A{i}"', f'tariff = "{tariff}"', 'initial_balance = "80"']
    return "\n".join(lines) + "\n"


def _reading(meter: str, di: str, at: dt.datetime, kind: ReadingKind, **values: object) -> Reading:
    return Reading(
        meter, di, at, at + dt.timedelta(minutes=5),
        {k: ReadingValue(v, "kWh" if isinstance(v, Decimal) else None) for k, v in values.items()},  # type: ignore[arg-type]
        Quality.OK, kind, "plc-sim",
    )  # fmt: skip


def workload(meters: int, days: int) -> list[Reading]:
    out: list[Reading] = []
    today = dt.datetime.combine(NOW.date(), dt.time(), ZONE)
    for i in range(meters + 1):
        meter = _addr(i)
        daily = Decimal(400 if i == 0 else 0) + Decimal(5 + i % 7)
        anomaly = i % 50 if i else -1
        total = Decimal(1000 + i)
        for d in range(days, -1, -1):
            at = today - dt.timedelta(days=d)
            if anomaly == 1 and d == 3:
                total -= Decimal(40)  # register stepped back
            q = total / 4
            out.append(
                _reading(
                    meter, "05060101", at, ReadingKind.DAILY_FROZEN,
                    forward_active_total=total, forward_active_sharp=q, forward_active_peak=q,
                    forward_active_flat=q, forward_active_valley=total - 3 * q,
                )
            )  # fmt: skip
            out.append(
                _reading(meter, "05060201", at, ReadingKind.DAILY_FROZEN,
                         reverse_active_total=Decimal("0.00"))
            )  # fmt: skip
            opened = 1 if anomaly == 2 and d < 5 else 0
            out.append(
                _reading(meter, "03300D00", at + dt.timedelta(minutes=6), ReadingKind.EVENT_COUNTER,
                         meter_cover_open_count=opened)
            )  # fmt: skip
            step = Decimal(0) if anomaly == 3 and d < 4 else daily
            total += step * (6 if anomaly == 4 and d < 4 else 1)
        for d in (1, 0):
            at = today - dt.timedelta(days=d) + dt.timedelta(minutes=7)
            drift = 400 if anomaly == 5 else 2
            wall = at.replace(tzinfo=None)
            out.append(
                _reading(
                    meter, "04000101", at, ReadingKind.CLOCK,
                    meter_time=str(wall + dt.timedelta(seconds=drift)), gateway_time=str(wall),
                    drift=drift,
                )
            )  # fmt: skip
            out.append(
                _reading(meter, "04000501", at, ReadingKind.STATUS, clock_battery_low=False,
                         active_power_reverse=False)
            )  # fmt: skip
        energy = total
        for h in range(6):
            at = today + dt.timedelta(hours=h + 2)
            kw = Decimal("0.4")
            volts = Decimal("150.0") if anomaly == 6 else Decimal("221.0")
            out.append(
                _reading(meter, "0001FF00", at, ReadingKind.REALTIME, forward_active_total=energy)
            )
            out.append(_reading(meter, "0201FF00", at, ReadingKind.REALTIME, voltage_a=volts))
            out.append(
                _reading(meter, "0202FF00", at, ReadingKind.REALTIME, current_a=Decimal("1.900"))
            )
            out.append(_reading(meter, "0203FF00", at, ReadingKind.REALTIME, active_power_total=kw))
            energy += Decimal("0.40") * (0 if anomaly == 3 else 1)
    return out


async def build(path: Path, readings: list[Reading]) -> None:
    async with Spool.connect(path) as spool:
        for i in range(0, len(readings), CHUNK):
            await spool.write_readings(readings[i : i + CHUNK])


async def rules_only(checker: Checker) -> int:
    """Every rule over every meter from cold (derived series rebuilt, nothing skipped)."""
    for history in checker.cache.meters.values():
        history.version += 1
    checker._decided.clear()
    evaluation = await checker.evaluate(NOW.astimezone(dt.UTC), [])
    return len(evaluation.decided.raises)


async def baseline(checker: Checker) -> Decimal:
    top = Decimal(0)
    meters = list(checker.cache.meters)
    for i in range(0, len(meters), 50):
        chunk = meters[i : i + 50]
        async with checker.cache.loaded(chunk, NOW.astimezone(dt.UTC)):
            for h in map(checker.cache.meters.__getitem__, chunk):
                frozen = h.frozen
                for a, b in itertools.pairwise(frozen):
                    x, y = a.dec("forward_active_total"), b.dec("forward_active_total")
                    if x is not None and y is not None:
                        top = max(top, y - x)
    return top


async def retained_bytes(config: Config, path: Path) -> tuple[int, int]:
    """What a fresh checker holds after its first run over the spool at ``path``, and the
    most it held during that run (which a process's RSS keeps)."""
    async with Spool.connect(path) as spool:
        gc.collect()
        tracemalloc.start()
        try:
            checker = Checker(config, spool, ManualClock(NOW))
            await checker.run_once(NOW.astimezone(dt.UTC))
            gc.collect()
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert checker.cache.meters  # alive until measured
    return held, peak


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="amigw-bench-checks-") as tmp:
        path = Path(tmp) / "spool.sqlite"
        config = parse_config(config_text(args.meters, path), "bench")
        readings = workload(args.meters, args.days)
        t = time.perf_counter()
        await build(path, readings)
        print(f"workload: {args.meters} meters x {args.days} days, {len(readings):,} readings "
              f"written in {time.perf_counter() - t:.1f} s")  # fmt: skip
        firsts, nexts, rules, bases = [], [], [], []
        raised = 0
        for r in range(args.rounds):
            copy = Path(tmp) / f"round-{r}.sqlite"
            copy.write_bytes(path.read_bytes())
            cfg = config.model_copy(
                update={"spool": config.spool.model_copy(update={"path": copy})}
            )
            async with Spool.connect(copy) as spool:
                checker = Checker(cfg, spool, ManualClock(NOW))
                t = time.perf_counter()
                report = await checker.run_once(NOW.astimezone(dt.UTC))
                firsts.append(time.perf_counter() - t)
                raised = report.raised
                t = time.perf_counter()
                again = await checker.run_once(NOW.astimezone(dt.UTC))
                nexts.append(time.perf_counter() - t)
                assert again.raised == again.cleared == again.balance_entries == 0, again
                t = time.perf_counter()
                await rules_only(checker)
                rules.append(time.perf_counter() - t)
                t = time.perf_counter()
                await baseline(checker)
                bases.append(time.perf_counter() - t)
        copy = Path(tmp) / "memory.sqlite"
        copy.write_bytes(path.read_bytes())
        cfg = config.model_copy(update={"spool": config.spool.model_copy(update={"path": copy})})
        held, peak = await retained_bytes(cfg, copy)
        per_day = held / ((args.meters + 1) * args.days)
        a, b, c, d = min(rules), min(firsts), min(nexts), min(bases)
        print(f"(a) rules, in memory:        {a:7.3f} s   (target < 2 s)")
        print(f"(b) first run_once (spool):  {b:7.3f} s   {raised} alarm(s) raised")
        print(f"(c) next run_once, no news:  {c:7.3f} s")
        print(f"(d) baseline pass:           {d:7.3f} s")
        print(f"ratio a/d = {a / d:.1f}")
        over = "" if per_day <= MEMORY_TARGET_B else "   OVER TARGET"
        print(
            f"(e) held after first run:    {held / 1e6:7.1f} MB  {per_day:5.0f} B per meter-day "
            f"(target <= {MEMORY_TARGET_B:.0f} B: 40 MB for 2,000 x 30 days){over}; "
            f"peak during the run {peak / 1e6:.1f} MB"
        )
        if a >= 2.0:
            print("rules took longer than the 2 s target", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
