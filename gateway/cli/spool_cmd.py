"""``amigw spool``: what the spool holds, its readings as CSV or JSON, and what is still unsent.

The spool is opened read-only (see :mod:`spool.inspect`), so every sub-command is safe while
the daemon runs. Name the spool with ``-c CONFIG`` (its ``[spool] path``) or ``--spool PATH``.
Exit status: 66 when the spool file does not exist, 78 when it was written by a newer amigw
(or the configuration is invalid), 65 when it is not an amigw spool or is damaged, 75 when it
stays locked, 73 when the output file cannot be written.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo

from drivers.clock import SystemClock
from gateway.config import ConfigError, load_config
from protocols.dlt645 import Edition, lookup
from protocols.render import dumps
from spool.errors import (
    SpoolCorruptError,
    SpoolError,
    SpoolUnavailableError,
    SpoolVersionError,
)
from spool.inspect import InspectStatistics, PendingBatch, SpoolReader
from spool.records import Reading, ReadingValue

from .progress import Progress

EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT, EX_TEMPFAIL, EX_CONFIG = 64, 65, 66, 73, 75, 78

EXAMPLES = """\
examples:
  amigw spool stats -c /etc/amigw/amigw.toml
  amigw spool stats --spool /var/lib/amigw/spool.sqlite --json
  amigw spool export -c /etc/amigw/amigw.toml --meter 000000001001 000000001002 \\
      --from 2025-06-01 --to 2025-06-30 --format csv --output june.csv
  amigw spool export --spool spool.sqlite --from 2025-06-02 --to 2025-06-02 --format json
  amigw spool pending -c /etc/amigw/amigw.toml
"""

CSV_COLUMNS: Final = (
    "meter",
    "di",
    "data_time",
    "item",
    "name",
    "value",
    "unit",
    "read_time",
    "quality",
    "kind",
    "source",
)


class SpoolTargetError(Exception):
    """The spool could not be named or opened; ``status`` is the exit status to use."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Located:
    path: Path
    zone: ZoneInfo | None  # the gateway's time zone, when a configuration named the spool
    districts: dict[str, str]  # meter -> district, from the configuration


def add_spool_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="the gateway configuration naming the spool")
    where.add_argument("--spool", metavar="PATH", help="the spool file itself")


def locate(args: argparse.Namespace) -> Located:
    if args.spool:
        return Located(Path(args.spool), None, {})
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise SpoolTargetError("\n".join(exc.lines()), EX_CONFIG) from None
    districts = {m.address: m.district or config.gateway.district for m in config.meter}
    return Located(Path(config.spool.path), config.gateway.zone, districts)


@contextmanager
def opened(path: Path) -> Iterator[SpoolReader]:
    """The spool at ``path``, read-only; each way it can fail is a :class:`SpoolTargetError`."""
    try:
        reader = SpoolReader.open(path)
    except SpoolVersionError as exc:
        raise SpoolTargetError(str(exc), EX_CONFIG) from None
    except SpoolCorruptError as exc:
        raise SpoolTargetError(str(exc), EX_DATAERR) from None
    except SpoolUnavailableError as exc:
        missing = not path.is_file()
        raise SpoolTargetError(str(exc), EX_NOINPUT if missing else EX_TEMPFAIL) from None
    except SpoolError as exc:
        raise SpoolTargetError(str(exc), EX_DATAERR) from None
    try:
        yield reader
    except SpoolUnavailableError as exc:
        raise SpoolTargetError(str(exc), EX_TEMPFAIL) from None
    except SpoolError as exc:
        raise SpoolTargetError(str(exc), EX_DATAERR) from None
    finally:
        reader.close()


def guarded(name: str, work: Callable[[], int]) -> int:
    try:
        return work()
    except SpoolTargetError as exc:
        for line in str(exc).splitlines():
            print(f"amigw {name}: {line}", file=sys.stderr)
        return exc.status


def register(sub: Any) -> None:
    p = sub.add_parser(
        "spool",
        help="inspect the spool: stats, export readings, list unsent batches",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    stats = actions.add_parser(
        "stats",
        help="rows and bytes per table, outbox depth, evictions, schema version, file sizes",
        epilog="examples:\n  amigw spool stats -c /etc/amigw/amigw.toml\n"
        "  amigw spool stats --spool /var/lib/amigw/spool.sqlite --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_spool_arguments(stats)
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(handler=run_stats)

    export = actions.add_parser(
        "export",
        help="readings by meter and date range, as CSV or JSON",
        description="Readings whose data time falls on a date from --from to --to (both "
        "inclusive, the meter's own local date), one CSV row per value or one JSON object per "
        "reading and line. Values are exact decimals as stored.",
        epilog="examples:\n"
        "  amigw spool export -c /etc/amigw/amigw.toml --meter 000000001001 "
        "--from 2025-06-01 --to 2025-06-30 --output june.csv\n"
        "  amigw spool export --spool spool.sqlite --format json --from 2025-06-02",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_spool_arguments(export)
    export.add_argument("--meter", nargs="+", default=[], metavar="ADDR", help="default: all")
    export.add_argument("--from", dest="first", type=iso_date, metavar="YYYY-MM-DD")
    export.add_argument("--to", dest="last", type=iso_date, metavar="YYYY-MM-DD")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--output", metavar="FILE", help="default: standard output")
    export.set_defaults(handler=run_export)

    pending = actions.add_parser(
        "pending",
        help="batches cut but not yet acknowledged, and records waiting for a batch",
        epilog="examples:\n  amigw spool pending -c /etc/amigw/amigw.toml\n"
        "  amigw spool pending --spool spool.sqlite --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_spool_arguments(pending)
    pending.add_argument("--json", action="store_true", help="one JSON object per batch")
    pending.set_defaults(handler=run_pending)


def iso_date(text: str) -> date:
    """An argparse type for ``YYYY-MM-DD``."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


# -- stats -------------------------------------------------------------------------------------


def run_stats(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout

    def work() -> int:
        with opened(locate(args).path) as reader:
            stats = reader.statistics()
        now = SystemClock().now()
        if args.json:
            print(dumps(stats_json(stats, now)), file=out)
        else:
            _print_stats(stats, now, out)
        return 0

    return guarded("spool stats", work)


def stats_json(stats: InspectStatistics, now: datetime) -> dict[str, Any]:
    oldest = stats.oldest_unsent
    return {
        "path": stats.path,
        "schema_version": stats.schema_version,
        "files": dict(stats.files),
        "tables": {n: {"rows": t.rows, "bytes": t.bytes} for n, t in stats.tables.items()},
        "readings_by_kind": dict(stats.readings_by_kind),
        "outbox": {
            s.value: {"in_batches": d.in_batches, "waiting": d.waiting, "unsent": d.unsent}
            for s, d in stats.outbox.items()
        },
        "open_batches": stats.open_batches,
        "prepared_batches": stats.prepared_batches,
        "prepared_bytes": stats.prepared_bytes,
        "last_seq": stats.last_seq,
        "oldest_unsent": None if oldest is None else oldest.isoformat(),
        "oldest_unsent_age_s": None if oldest is None else int((now - oldest).total_seconds()),
        "evicted": dict(stats.evicted),
    }


def _print_stats(stats: InspectStatistics, now: datetime, out: TextIO) -> None:
    files = ", ".join(f"{k} {_bytes(v)}" for k, v in stats.files.items())
    print(f"spool {stats.path}: schema version {stats.schema_version}; files: {files}", file=out)
    print(f"  {'table':<18}{'rows':>10}{'bytes':>12}", file=out)
    for name, t in stats.tables.items():
        size = "-" if t.bytes is None else _bytes(t.bytes)
        print(f"  {name:<18}{t.rows:>10}{size:>12}", file=out)
    kinds = ", ".join(f"{k} {n}" for k, n in stats.readings_by_kind.items()) or "none"
    print(f"  readings by kind: {kinds}", file=out)
    if stats.outbox:
        depth = ", ".join(
            f"{s.value} {d.unsent} ({d.in_batches} in batches, {d.waiting} waiting)"
            for s, d in stats.outbox.items()
        )
        print(f"  outbox unsent: {depth}", file=out)
        oldest = stats.oldest_unsent
        age = "-" if oldest is None else f"{_age(now - oldest)} (since {oldest.isoformat()})"
        prepared = (
            f" ({stats.prepared_batches} prepared, {_bytes(stats.prepared_bytes)})"
            if stats.prepared_batches
            else ""
        )
        print(
            f"  open batches {stats.open_batches}{prepared}, last seq {stats.last_seq}, "
            f"oldest unsent {age}",
            file=out,
        )
    evicted = ", ".join(f"{k} {n}" for k, n in stats.evicted.items()) or "none"
    print(f"  evicted so far: {evicted}", file=out)


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


# -- export ------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    for meter in args.meter:
        if not (len(meter) == 12 and meter.isascii() and meter.isdigit()):
            print(f"amigw spool export: {meter!r} is not a 12-digit address", file=sys.stderr)
            return EX_USAGE
    if args.first and args.last and args.first > args.last:
        print("amigw spool export: --from is after --to", file=sys.stderr)
        return EX_USAGE

    def work() -> int:
        with opened(locate(args).path) as reader:
            total = reader.count_readings(args.meter, args.first, args.last)
            readings = reader.readings(args.meter, args.first, args.last)
            if args.output is None:
                return _export(readings, args.format, stdout or sys.stdout, total)
            try:
                with Path(args.output).open("w", encoding="utf-8", newline="") as f:
                    return _export(readings, args.format, f, total)
            except OSError as exc:
                raise SpoolTargetError(
                    f"cannot write {args.output}: {exc.strerror or exc}", EX_CANTCREAT
                ) from None

    return guarded("spool export", work)


def _export(readings: Iterator[Reading], fmt: str, out: TextIO, total: int) -> int:
    titles: dict[str, str] = {}
    with Progress("export", total=total, unit="readings") as progress:
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(CSV_COLUMNS)
            for r in readings:
                title = _title(r.di, titles)
                for name, v in r.values.items():
                    writer.writerow(
                        (
                            r.meter,
                            r.di,
                            r.data_time.isoformat(),
                            title,
                            name,
                            _csv_value(v),
                            v.unit or "",
                            r.read_time.isoformat(),
                            r.quality.value,
                            r.kind.value,
                            r.source,
                        )
                    )
                progress.advance()
        else:
            for r in readings:
                print(dumps(reading_json(r, _title(r.di, titles))), file=out)
                progress.advance()
    return 0


def reading_json(r: Reading, title: str) -> dict[str, Any]:
    return {
        "meter": r.meter,
        "di": r.di,
        "data_time": r.data_time.isoformat(),
        "item": title or None,
        "read_time": r.read_time.isoformat(),
        "quality": r.quality.value,
        "kind": r.kind.value,
        "source": r.source,
        "values": {name: {"value": v.value, "unit": v.unit} for name, v in r.values.items()},
    }


def _csv_value(v: ReadingValue) -> str:
    value = v.value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")
    return str(value)


def _title(di: str, cache: dict[str, str]) -> str:
    title = cache.get(di)
    if title is None:
        edition = Edition.V2007 if len(di) == 8 else Edition.V1997
        item = lookup(edition, int(di, 16))
        title = cache[di] = item.title if item is not None else ""
    return title


# -- pending -----------------------------------------------------------------------------------


def run_pending(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout

    def work() -> int:
        with opened(locate(args).path) as reader:
            batches = reader.pending()
            stats = reader.statistics()
        now = SystemClock().now()
        waiting = {s.value: d.waiting for s, d in stats.outbox.items()}
        if args.json:
            for b in batches:
                print(dumps(pending_json(b, now)), file=out)
            print(dumps({"waiting": waiting}), file=out)
            return 0
        if not batches:
            print("no open batch", file=out)
        else:
            print(f"  {'seq':>7} {'stream':<9}{'records':>8} {'age':>6}  first .. last", file=out)
        for b in batches:
            count = f"{b.present}/{b.records}" if b.present != b.records else str(b.records)
            print(
                f"  {b.seq:>7} {b.stream.value:<9}{count:>8} {_age(now - b.created):>6}  "
                f"{b.first_key or '(evicted)'} .. {b.last_key or '(evicted)'}",
                file=out,
            )
        shown = ", ".join(f"{s} {n}" for s, n in waiting.items()) or "none"
        print(f"waiting for a batch: {shown}", file=out)
        return 0

    return guarded("spool pending", work)


def pending_json(b: PendingBatch, now: datetime) -> dict[str, Any]:
    return {
        "seq": b.seq,
        "stream": b.stream.value,
        "records": b.records,
        "present": b.present,
        "created": b.created.isoformat(),
        "age_s": int((now - b.created).total_seconds()),
        "first_key": b.first_key,
        "last_key": b.last_key,
    }
