"""``amigw ledger``: one day's collection status, per meter and item, and each district's rate.

Reads the collection ledger (meter x day x item) from the spool, read-only, so it is safe
while the daemon runs. For every meter: each item's state (``done``, ``failed``,
``pending``), how many attempts it took and the last error. For every district, counted in
meters first (the meters the day's ledger holds):

* the success rate (采集成功率): the share of meters whose daily frozen reading of the day is
  collected, rounded half-even to four places — the figure the daemon exports as
  ``amigw_collection_success_ratio`` for today;
* meters complete: every ledger item the meter owes for the day is done — what the daemon's
  status line (``systemctl status``) counts;

then in ledger items: done, failed and pending of all items, and (in JSON) the items done rate
``done / items`` (``Spool.ledger_summary``). Districts come from the configuration
(``[[meter]] district``, else ``[gateway] district``); with ``--spool`` alone every meter
counts in one district, ``all``.

The day defaults to today in the gateway's time zone (from the configuration; with
``--spool``, ``--timezone`` or the system's). Exit status as ``amigw spool``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.clock import SystemClock
from gateway.collector.plans import Item
from protocols.render import dumps
from spool.records import LedgerEntry, LedgerState

from .spool_cmd import Located, add_spool_arguments, guarded, iso_date, locate, opened

EX_USAGE = 64
_RATE_PLACES: Final = Decimal("0.0001")
UNCONFIGURED: Final = "(not configured)"
ALL: Final = "all"

EXAMPLES = """\
examples:
  amigw ledger -c /etc/amigw/amigw.toml
  amigw ledger -c /etc/amigw/amigw.toml --date 2025-06-01 --json
  amigw ledger --spool /var/lib/amigw/spool.sqlite --date 2025-06-01 --failed
"""


@dataclass(frozen=True, slots=True)
class DistrictRate:
    district: str
    meters: int
    meters_read: int  # meters whose daily frozen reading of the day is collected
    meters_complete: int  # meters with every ledger item of the day done
    done: int
    failed: int
    pending: int

    @property
    def items(self) -> int:
        return self.done + self.failed + self.pending

    @property
    def success_rate(self) -> Decimal | None:
        """采集成功率: meters read of all meters, as ``amigw_collection_success_ratio``."""
        return _ratio(self.meters_read, self.meters)

    @property
    def items_done_rate(self) -> Decimal | None:
        """Ledger items done of all items, as ``Spool.ledger_summary`` counts them."""
        return _ratio(self.done, self.items)


def _ratio(part: int, whole: int) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(_RATE_PLACES, ROUND_HALF_EVEN)


def rates(entries: list[LedgerEntry], district_of: dict[str, str]) -> list[DistrictRate]:
    """Per district (sorted by name), the counts of ``entries`` (one day's ledger)."""
    by_district: dict[str, dict[str, list[LedgerEntry]]] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        by_district[district_of.get(e.meter, UNCONFIGURED)][e.meter].append(e)
    out = []
    for name in sorted(by_district):
        meters = by_district[name]
        states = [e.state for items in meters.values() for e in items]
        out.append(
            DistrictRate(
                district=name,
                meters=len(meters),
                meters_read=sum(
                    any(
                        e.item == Item.DAILY_FROZEN.value and e.state is LedgerState.DONE
                        for e in items
                    )
                    for items in meters.values()
                ),
                meters_complete=sum(
                    all(e.state is LedgerState.DONE for e in items) for items in meters.values()
                ),
                done=states.count(LedgerState.DONE),
                failed=states.count(LedgerState.FAILED),
                pending=states.count(LedgerState.PENDING),
            )
        )
    return out


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ledger",
        help="a day's collection status per meter and item, and the success rate",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_spool_arguments(p)
    p.add_argument("--date", type=iso_date, metavar="YYYY-MM-DD", help="default: today")
    p.add_argument("--timezone", help="the zone 'today' is taken in, with --spool")
    p.add_argument("--failed", action="store_true", help="list only meters with open items")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=run)


def _today(located: Located, timezone: str | None) -> date:
    now = SystemClock().now()
    if located.zone is not None:
        return now.astimezone(located.zone).date()
    if timezone:
        return now.astimezone(ZoneInfo(timezone)).date()
    return now.astimezone().date()


def run(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    if args.timezone:
        try:
            ZoneInfo(args.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            print(f"amigw ledger: unknown time zone {args.timezone!r}", file=sys.stderr)
            return EX_USAGE

    def work() -> int:
        located = locate(args)
        day = args.date or _today(located, args.timezone)
        with opened(located.path) as reader:
            entries = reader.ledger(day)
            days = reader.ledger_days() if not entries else []
        district_of = located.districts or {e.meter: ALL for e in entries}
        by_district = rates(entries, district_of)
        if args.json:
            print(dumps(ledger_json(day, entries, by_district, district_of)), file=out)
            return 0
        if not entries:
            span = f"{days[0]} .. {days[-1]}" if days else "none"
            print(f"no ledger entries for {day} (days in the spool: {span})", file=out)
            return 0
        _print_text(day, entries, by_district, args.failed, out)
        return 0

    return guarded("ledger", work)


def ledger_json(
    day: date,
    entries: list[LedgerEntry],
    by_district: list[DistrictRate],
    district_of: dict[str, str],
) -> dict[str, Any]:
    meters: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        meters[e.meter].append(
            {
                "item": e.item,
                "state": e.state.value,
                "attempts": e.attempts,
                "last_error": e.reason,
                "next_attempt": _iso(e.next_attempt),
                "updated": _iso(e.updated),
            }
        )
    return {
        "date": day.isoformat(),
        "districts": [
            {
                "district": r.district,
                "meters": r.meters,
                "meters_read": r.meters_read,
                "success_rate": r.success_rate,
                "meters_complete": r.meters_complete,
                "items": r.items,
                "done": r.done,
                "failed": r.failed,
                "pending": r.pending,
                "items_done_rate": r.items_done_rate,
            }
            for r in by_district
        ],
        "meters": [
            {"meter": m, "district": district_of.get(m, UNCONFIGURED), "items": items}
            for m, items in meters.items()
        ],
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _print_text(
    day: date,
    entries: list[LedgerEntry],
    by_district: list[DistrictRate],
    only_open: bool,
    out: TextIO,
) -> None:
    print(f"collection ledger {day}", file=out)
    for r in by_district:
        rate = "-" if r.success_rate is None else f"{r.success_rate:.2%}"
        print(
            f"  district {r.district}: success {rate} ({r.meters_read}/{r.meters} meters with "
            f"the daily frozen reading), {r.meters_complete}/{r.meters} meters complete; "
            f"items {r.done} done, {r.failed} failed, {r.pending} pending of {r.items}",
            file=out,
        )
    by_meter: dict[str, list[LedgerEntry]] = defaultdict(list)
    for e in entries:
        by_meter[e.meter].append(e)
    print(f"  {'meter':<13} {'item':<14} {'state':<8} {'tries':>5}  last error", file=out)
    for meter, items in by_meter.items():
        if only_open and all(e.state is LedgerState.DONE for e in items):
            continue
        for e in items:
            row = f"  {meter:<13} {e.item:<14} {e.state.value:<8} {e.attempts:>5}  {e.reason or ''}"
            print(row.rstrip(), file=out)
