"""``amigw replay``: feed a captured exchange through the framers and list what was on the wire.

A capture is either text — one frame or fragment per line as serial monitors and concentrator
debug logs write them: hex with or without spaces, an optional leading timestamp (ISO 8601,
``HH:MM:SS.fff`` or epoch seconds, optionally in brackets), an optional direction mark (``>``
``<``, ``->`` ``<-``, ``TX`` ``RX``, ``send`` ``recv``, 发送 接收), ``#`` comments — or raw
bytes (recognised by content, or forced with ``--binary``).

Each direction is its own byte stream: a frame split over several lines is reassembled, and
a line without a mark continues the direction of the line before it. ``--protocol 645``,
``1376.2`` or ``698`` runs that protocol's stream framer, exactly as a live bus would;
``auto`` (the default) tries every protocol at every start byte, for captures that mix them.

Every frame is printed with its time, direction, protocol and a one-line summary (``--json``:
one object per frame, its ``dir`` ``tx`` or ``rx``; ``--export FILE.csv|FILE.json``: a file
for a spreadsheet or a script), then a summary: frames per protocol, rejected candidates by
reason (the framer refused them: bad checksum, truncated...), frames whose content did not
decode by reason (``invalid-bcd``...), unframed bytes (line noise; ``FE`` wake-up runs are
counted apart) and lines that were not hex. The exit status is 65 when any of these but noise
occurred or no frame was found (as ``amigw decode``), 66 when the capture cannot be read, 73
when the export file cannot be written, 0 otherwise.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from protocols.dlt645 import Dlt645Framer
from protocols.dlt698 import Dlt698Framer
from protocols.framing import NEED_DATA, Rejection, StreamFramer
from protocols.q13762 import Q13762Framer
from protocols.render import dumps
from protocols.sniff import Found, Rejected, scan

from .capture import RX, TX, CaptureLineError, Line, parse_line, read_capture, text_lines
from .decode import describe
from .progress import Progress

EX_OK, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT = 0, 65, 66, 73

EXAMPLES = """\
examples:
  amigw replay etc/captures/rs485-exchange.log
  amigw replay etc/captures/plc-module.log --protocol 1376.2 --json
  amigw replay capture.bin --binary --export frames.csv
  amigw replay etc/captures/rs485-exchange.log --direction rx --export frames.json

a text capture looks like:
  [2025-06-02 00:05:01.120] TX: FE FE FE FE 68 95 04 13 00 00 00 68 11 04 34 33 39 38 69 16
  00:05:01.410 接收 68 95 04 13 00 00 00 68 91 09
  1748794001.6 <- 34 33 39 38 33 33 5B 44 59 4C 16
"""

#: framer class and the protocol name each ``--protocol`` choice stands for
FRAMERS: Final[dict[str, tuple[type[StreamFramer[Any]], str]]] = {
    "645": (Dlt645Framer, "dlt645"),
    "1376.2": (Q13762Framer, "q1376.2"),
    "698": (Dlt698Framer, "dlt698.45"),
}
_CHUNK: Final = 4096


@dataclass(frozen=True, slots=True)
class Replayed:
    """A frame or rejected candidate found in a direction's stream."""

    line: int
    time: str | None
    direction: str | None
    offset: int
    protocol: str
    record: dict[str, Any]
    #: the framer's reason for refusing the candidate (``None``: a frame)
    rejected: str | None = None
    #: a frame whose content did not decode (``invalid-bcd``...): the reason
    error: str | None = None


@dataclass(slots=True)
class Lane:
    """One direction's byte stream: what was fed, which line each byte came from, and the
    stream framer (``None`` under ``--protocol auto``, which scans the whole stream at the end)."""

    direction: str | None
    framer: StreamFramer[Any] | None
    protocol: str
    data: bytearray = field(default_factory=bytearray)
    starts: list[int] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    found: list[Replayed] = field(default_factory=list)

    def feed(self, line: Line) -> None:
        self.starts.append(len(self.data))
        self.lines.append(line)
        self.data += line.data
        if self.framer is not None:
            self.framer.feed(line.data)
            self._drain()

    def finish(self) -> None:
        if self.framer is not None:
            self.framer.feed_eof()
            self._drain()
            return
        for event in scan(bytes(self.data)):
            if isinstance(event, Found):
                self._frame(event, event.offset, len(event.frame.raw))
            elif isinstance(event, Rejected):
                self._rejection(event.rejection, event.offset, event.protocol)

    def _drain(self) -> None:
        assert self.framer is not None
        while True:
            event = self.framer.next_event()
            if event is NEED_DATA:
                return
            consumed = len(self.data) - self.framer.statistics().buffered
            if isinstance(event, Rejection):
                # A rejected candidate drops its start byte only: the search resumes inside it.
                self._rejection(event, consumed - 1, self.protocol)
            else:
                size = len(event.raw)
                self._frame(Found(self.protocol, consumed - size, event), consumed - size, size)

    def _line_at(self, offset: int) -> Line:
        return self.lines[max(bisect.bisect_right(self.starts, offset) - 1, 0)]

    def _frame(self, found: Found, offset: int, size: int) -> None:
        line = self._line_at(offset)
        record = describe(found)
        error = record.get("error")
        self.spans.append((offset, offset + size))
        self.found.append(
            Replayed(line.number, line.time, self.direction, offset, found.protocol, record,
                     error=error.split(":", 1)[0] if isinstance(error, str) else None)
        )  # fmt: skip

    def _rejection(self, rejection: Rejection, offset: int, protocol: str) -> None:
        line = self._line_at(offset)
        record = {
            "protocol": protocol,
            "error": f"{rejection.reason}: {rejection.detail}",
            "raw": rejection.raw.hex(" ").upper(),
        }
        self.spans.append((offset, offset + len(rejection.raw)))
        self.found.append(
            Replayed(line.number, line.time, self.direction, offset, protocol, record,
                     rejection.reason)
        )  # fmt: skip

    def gaps(self) -> tuple[int, int]:
        """(unframed bytes, preamble bytes): what no frame or candidate covered; a gap made
        only of ``FE`` wake-up bytes is preamble, any other gap is line noise."""
        unframed = preamble = 0
        at = 0
        for start, end in [*sorted(self.spans), (len(self.data), len(self.data))]:
            if start > at:
                gap = self.data[at:start]
                if gap.count(0xFE) == len(gap):
                    preamble += len(gap)
                else:
                    unframed += len(gap)
            at = max(at, end)
        return unframed, preamble


@dataclass(slots=True)
class Summary:
    frames: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unframed_bytes: int = 0
    preamble_bytes: int = 0
    bad_lines: list[str] = field(default_factory=list)
    bytes_in: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": sum(self.frames.values()),
            "frames_by_protocol": dict(sorted(self.frames.items())),
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "undecodable": sum(self.errors.values()),
            "undecodable_by_reason": dict(sorted(self.errors.items())),
            "unframed_bytes": self.unframed_bytes,
            "preamble_bytes": self.preamble_bytes,
            "bad_lines": len(self.bad_lines),
            "bytes": self.bytes_in,
        }


def replay(
    lines: Sequence[Line], protocol: str = "auto", progress: Progress | None = None
) -> tuple[list[Replayed], Summary]:
    """Feed ``lines`` through the framers, per direction; every frame and rejected candidate
    in capture order, and the counts."""
    lanes: dict[str | None, Lane] = {}
    summary = Summary()
    for line in lines:
        lane = lanes.get(line.direction)
        if lane is None:
            if protocol == "auto":
                lane = Lane(line.direction, None, "auto")
            else:
                framer_class, name = FRAMERS[protocol]
                lane = Lane(line.direction, framer_class(), name)
            lanes[line.direction] = lane
        lane.feed(line)
        summary.bytes_in += len(line.data)
        if progress is not None:
            progress.advance()
    events: list[Replayed] = []
    for lane in lanes.values():
        lane.finish()
        events += lane.found
        unframed, preamble = lane.gaps()
        summary.unframed_bytes += unframed
        summary.preamble_bytes += preamble
    events.sort(key=lambda e: (e.line, e.offset))
    for e in events:
        if e.rejected is not None:
            summary.rejected[e.rejected] += 1
        else:
            summary.frames[str(e.record.get("protocol", e.protocol))] += 1
            if e.error is not None:
                summary.errors[e.error] += 1
    return events, summary


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="feed a capture (hex log or raw bytes) through the framers and list its frames",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("capture", help="capture file; '-' reads a text capture from stdin")
    p.add_argument("--protocol", choices=["auto", *FRAMERS], default="auto", help="default: auto")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--binary", action="store_true", default=None, help="raw bytes")
    kind.add_argument("--text", dest="binary", action="store_false", help="a hex log")
    p.add_argument("--direction", choices=[TX, RX], help="only frames sent (tx) or received (rx)")
    p.add_argument("--json", action="store_true", help="one JSON object per frame, then a summary")
    p.add_argument("--export", metavar="FILE", help="write the frames to FILE.csv or FILE.json")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    export = Path(args.export) if args.export else None
    if export is not None and export.suffix.lower() not in (".csv", ".json"):
        print(f"amigw replay: --export needs a .csv or .json file, got {export}", file=sys.stderr)
        return 64
    try:
        if args.capture == "-":
            binary, data = False, sys.stdin.read().encode("utf-8")
        else:
            binary, data = read_capture(Path(args.capture), args.binary)
    except OSError as exc:
        print(f"amigw replay: cannot read {args.capture}: {exc.strerror or exc}", file=sys.stderr)
        return EX_NOINPUT
    bad: list[str] = []
    lines: list[Line] = []
    if binary:
        lines = [
            Line(i // _CHUNK + 1, None, None, data[i : i + _CHUNK])
            for i in range(0, len(data), _CHUNK)
        ]
    else:
        previous: str | None = None
        for number, text in enumerate(text_lines(data), 1):
            try:
                line = parse_line(text, number, previous)
            except CaptureLineError as exc:
                bad.append(str(exc))
                continue
            if line is not None:
                lines.append(line)
                previous = line.direction
    with Progress("replay", total=len(lines), unit="chunks" if binary else "lines") as progress:
        events, summary = replay(lines, args.protocol, progress)
    summary.bad_lines = bad
    for message in bad:
        print(f"amigw replay: {message} (skipped)", file=sys.stderr)
    shown = [e for e in events if args.direction is None or e.direction == args.direction]
    for e in shown:
        if args.json:
            print(dumps(_json(e)), file=out)
        else:
            print(_text(e), file=out)
    if export is not None:
        try:
            _export(export, shown)
        except OSError as exc:
            print(f"amigw replay: cannot write {export}: {exc.strerror or exc}", file=sys.stderr)
            return EX_CANTCREAT
    _print_summary(summary, args.json, out)
    if summary.rejected or summary.errors or bad or not summary.frames:
        return EX_DATAERR
    return EX_OK


def summarise(record: dict[str, Any]) -> str:
    """One line saying what a decoded frame is."""
    if record.get("protocol") == "q1376.2":
        parts = [
            str(record.get("direction")),
            f"AFN{record.get('afn')} F{record.get('fn')} {record.get('afn_name')}",
        ]
        a3 = (record.get("addresses") or {}).get("A3")
        if a3:
            parts.append(f"to/from {a3}")
        inner = record.get("frame645")
        if isinstance(inner, dict):
            parts.append("[" + summarise(inner) + "]")
    elif str(record.get("protocol", "")).startswith("dlt698"):
        parts = [
            str(record.get("direction")),
            f"server {record.get('server_address')}",
            str(record.get("service") or record.get("function")),
        ]
    else:
        parts = [
            str(record.get("address")),
            f"{record.get('function')} {record.get('direction')}",
        ]
        if record.get("abnormal"):
            parts.append("abnormal")
        if record.get("di"):
            parts.append(f"{record['di']} {record.get('item') or ''}".rstrip())
        values = [
            f"{name}={'absent' if v['value'] is None else v['value']}"
            + (f" {v['unit']}" if v.get("unit") and v["value"] is not None else "")
            for name, v in (record.get("values") or {}).items()
        ]
        if values:
            parts.append(": " + ", ".join(values))
    error = record.get("error")
    if error:
        parts.append(f"error {', '.join(error) if isinstance(error, list) else error}")
    return " ".join(p for p in parts if p).replace(" : ", ": ")


def _json(e: Replayed) -> dict[str, Any]:
    head = {
        "event": "rejected" if e.rejected is not None else "frame",
        "line": e.line,
        "time": e.time,
        "dir": e.direction,
        "offset": e.offset,
    }
    if e.rejected is not None:
        return head | e.record
    return head | {"summary": summarise(e.record)} | e.record


def _text(e: Replayed) -> str:
    when = e.time or f"line {e.line}"
    direction = (e.direction or "--").upper()
    protocol = str(e.record.get("protocol", e.protocol))
    if e.rejected is not None:
        return f"{when} {direction} {protocol} REJECTED {e.record['error']} [{e.record['raw']}]"
    return f"{when} {direction} {protocol} {summarise(e.record)}"


_CSV_COLUMNS: Final = ("line", "time", "dir", "protocol", "status", "summary", "raw")


def _export(path: Path, events: Sequence[Replayed]) -> None:
    if path.suffix.lower() == ".json":
        text = "[\n" + ",\n".join(dumps(_json(e)) for e in events) + "\n]\n"
        path.write_text(text if events else "[]\n", encoding="utf-8")
        return
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_CSV_COLUMNS)
        for e in events:
            writer.writerow(
                (
                    e.line,
                    e.time or "",
                    e.direction or "",
                    e.record.get("protocol", e.protocol),
                    f"rejected {e.rejected}" if e.rejected is not None else "ok",
                    e.record["error"] if e.rejected is not None else summarise(e.record),
                    e.record.get("raw", ""),
                )
            )


def _print_summary(summary: Summary, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps({"event": "summary"} | summary.as_dict(), ensure_ascii=False), file=out)
        return
    d = summary.as_dict()
    by_protocol = ", ".join(f"{n} {p}" for p, n in d["frames_by_protocol"].items()) or "none"
    by_reason = ", ".join(f"{n} {r}" for r, n in d["rejected_by_reason"].items()) or "none"
    undecodable = ", ".join(f"{n} {r}" for r, n in d["undecodable_by_reason"].items())
    print(
        f"-- {d['bytes']} bytes: {d['frames']} frame(s) ({by_protocol}); "
        f"{d['rejected']} rejected ({by_reason}); "
        + (f"{d['undecodable']} undecodable ({undecodable}); " if undecodable else "")
        + f"{d['unframed_bytes']} unframed byte(s), "
        f"{d['preamble_bytes']} preamble byte(s); {d['bad_lines']} line(s) not hex",
        file=out,
    )
