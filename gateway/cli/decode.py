"""``amigw decode``: take captured bytes apart, field by field.

Accepts hex with or without spaces (``0x`` prefixes, commas and colons are ignored), several
frames in one stream, ``FE`` preambles and leading noise. Every frame is printed with every
field by name; ``--json`` prints one JSON object per line and frame. A frame that does not
decode is printed with an ``error`` string naming the reason and the command exits with 65.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, TextIO

from protocols.dlt645.describe import describe_frame as describe_645
from protocols.dlt698.describe import describe_frame as describe_698
from protocols.q13762.describe import describe_frame as describe_13762
from protocols.render import dumps, plain
from protocols.sniff import Found, Noise, Rejected, scan

EXAMPLES = """\
examples:
  amigw decode 68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16
  amigw decode --json FEFEFEFE6895041300000068910834333433BB446C338116
  echo '68 0F 00 41 00 00 00 00 00 00 03 01 00 45 16' | amigw decode --json -
"""

_SEPARATORS = re.compile(r"0[xX]|[\s,:;\-]")


class HexError(ValueError):
    pass


def parse_hex(text: str) -> bytes:
    cleaned = _SEPARATORS.sub("", text)
    bad = re.search(r"[^0-9a-fA-F]", cleaned)
    if bad:
        raise HexError(f"not hex: {bad.group()!r} at position {bad.start()}")
    if len(cleaned) % 2:
        raise HexError(f"odd number of hex digits ({len(cleaned)})")
    return bytes.fromhex(cleaned)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "decode",
        help="decode DL/T 645, Q/GDW 1376.2 and DL/T 698.45 frames from hex",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "hex", nargs="+", help="hex bytes (several arguments are joined); '-' reads stdin"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per frame")
    p.set_defaults(handler=run)


def describe(found: Found) -> dict[str, Any]:
    if found.protocol == "dlt645":
        return describe_645(found.frame)
    if found.protocol == "q1376.2":
        return describe_13762(found.frame)
    return describe_698(found.frame)


def run(args: argparse.Namespace, stdout: TextIO | None = None, stdin: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    text = " ".join((stdin or sys.stdin).read() if h == "-" else h for h in args.hex)
    try:
        data = parse_hex(text)
    except HexError as exc:
        print(f"amigw decode: {exc}", file=sys.stderr)
        return 65
    failed = False
    frames = 0
    for event in scan(data):
        if isinstance(event, Noise):
            if not args.json and not event.preamble:
                print(
                    f"# skipped {event.length} byte(s) of noise at offset {event.offset}", file=out
                )
            continue
        if isinstance(event, Rejected):
            failed = True
            record = {
                "protocol": event.protocol,
                "offset": event.offset,
                "error": f"{event.rejection.reason}: {event.rejection.detail}",
                "raw": event.rejection.raw.hex(" ").upper(),
            }
        else:
            frames += 1
            record = describe(event)
            record["offset"] = event.offset
            if isinstance(record.get("error"), str):
                failed = True
        if args.json:
            print(dumps(record), file=out)
        else:
            _print_text(record, out)
    if frames == 0 and not failed:
        message = "no frame found in the input"
        if args.json:
            print(dumps({"error": f"no-frame: {message}"}), file=out)
        else:
            print(f"error: {message}", file=out)
        return 65
    return 65 if failed else 0


def _print_text(record: dict[str, Any], out: TextIO) -> None:
    head = record.get("protocol", "?")
    print(f"--- {head} frame at offset {record.get('offset')}", file=out)
    values = record.get("values") or {}
    for key, value in record.items():
        if key in ("values", "protocol", "offset") or value is None or value == {}:
            continue
        if isinstance(value, dict):
            for k2, v2 in value.items():
                print(f"  {key}.{k2:<22} {_text(v2)}", file=out)
            continue
        print(f"  {key:<26} {_text(value)}", file=out)
    for name, v in values.items():
        if v["value"] is None:
            print(f"  {name:<26} absent", file=out)
            continue
        unit = f" {v['unit']}" if v.get("unit") else ""
        print(f"  {name:<26} {_text(v['value'])}{unit}", file=out)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "-"
    if isinstance(value, dict):
        return dumps(value)
    p = plain(value)
    return str(p).lower() if isinstance(p, bool) else str(p)
