"""``amigw read``: read a meter by hand, on a serial port or a TCP serial server.

Items are DIs (``00010000``, ``05060101``, ``9010``) or value names (``forward_active_total``,
``voltage_a``). The bus is a device path (``/dev/ttyS1``) or ``HOST:PORT``; or name a bus of a
configuration file with ``-c``. Every value is printed by name with its unit; ``--json`` prints
one object per item. Exit status 0 when every item was read, 69 when the meter did not answer,
65 when it answered something that does not decode, 64 for an unknown item.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from drivers.channel import ChannelSettings, Dlt645Channel
from drivers.clock import SystemClock
from drivers.errors import DriverError
from drivers.link import Link, SerialSettings, serial_opener, tcp_opener
from gateway.config import ConfigError, load_config
from protocols.bcd import Address
from protocols.dlt645 import Edition, ErrorResponse, ReadRequest, ReadResponse, find
from protocols.dlt645.describe import flat_values
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.render import dumps, plain

EX_USAGE, EX_DATAERR, EX_UNAVAILABLE, EX_CONFIG = 64, 65, 69, 78

EXAMPLES = """\
examples:
  amigw read 000000130495 forward_active_total 05060001 05060101 --bus /dev/ttyS1
  amigw read 000000000097 9010 C010 C011 --edition 1997 --bus /dev/ttyS2 --baud 1200
  amigw read 201000000012 voltage_a 04000503 --bus 192.0.2.10:4001 --json
  amigw read 000000130495 00010000 -c /etc/amigw/amigw.toml --bus rs485-1
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "read",
        help="read a meter by hand (items by name or DI)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("address", help="the meter's 12-digit address (AAAAAAAAAAAA: the only meter)")
    p.add_argument("items", nargs="+", help="DIs or value names")
    p.add_argument("--bus", required=True, help="device path, HOST:PORT, or a bus name with -c")
    p.add_argument("-c", "--config", help="take the bus settings from this configuration")
    p.add_argument("--edition", choices=["2007", "1997"], default="2007")
    p.add_argument("--baud", type=int, default=2400)
    p.add_argument("--parity", choices=["E", "N", "O"], default="E")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per request (default 2)")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object per item")
    p.set_defaults(handler=run)


def _channel(args: argparse.Namespace) -> Dlt645Channel:
    clock = SystemClock()
    settings = ChannelSettings(timeout_s=args.timeout, retries=args.retries, backoff_after=1000)
    if args.config:
        from gateway.daemon import make_channel  # noqa: PLC0415 - only needed with -c

        config = load_config(args.config)
        bus = config.buses_by_name().get(args.bus)
        if bus is None:
            raise ConfigError(args.config, [f"bus: no bus named {args.bus!r}"])
        return make_channel(bus, clock)
    if ":" in args.bus and not args.bus.startswith("/"):
        host, _, port = args.bus.rpartition(":")
        opener = tcp_opener(host, int(port))
    else:
        opener = serial_opener(SerialSettings(args.bus, args.baud, args.parity))
    return Dlt645Channel(
        "manual", Link("manual", opener, char_time=11 / args.baud), settings, clock
    )


async def _read(args: argparse.Namespace, out: TextIO) -> int:
    edition = Edition.V2007 if args.edition == "2007" else Edition.V1997
    items = []
    for text in args.items:
        item = find(text, edition)
        if item is None:
            print(f"amigw read: unknown item {text!r} for DL/T 645-{args.edition}", file=sys.stderr)
            return EX_USAGE
        items.append(item)
    channel = _channel(args)
    status = 0
    try:
        for item in items:
            record: dict[str, Any] = {
                "address": args.address,
                "di": item.di_text,
                "item": item.title,
            }
            try:
                exchange = await channel.request(
                    ReadRequest(Address.parse(args.address), item.di, edition)
                )
            except DriverError as exc:
                record["error"] = f"{exc.reason}: {exc}"
                status = status or EX_UNAVAILABLE
            else:
                reply = exchange.reply
                if isinstance(reply, ErrorResponse):
                    record["error"] = reply.flag_names
                elif isinstance(reply, ReadResponse):
                    try:
                        decoded = item.decode(reply.payload)
                    except RemoteProtocolError as exc:
                        record["error"] = f"{exc.reason}: {exc.detail}"
                        status = EX_DATAERR
                    else:
                        record["values"] = {
                            name: {"value": plain(value), "unit": unit or None}
                            for name, value, unit in flat_values(decoded.values)
                        }
            _print(record, args.json, out)
    finally:
        await channel.close()
    return status


def _print(record: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        print(dumps(record), file=out)
        return
    print(f"{record['address']} {record['di']} {record['item']}", file=out)
    if "error" in record:
        error = record["error"]
        print(f"  error: {', '.join(error) if isinstance(error, list) else error}", file=out)
        return
    for name, v in record.get("values", {}).items():
        value = v["value"]
        shown = (
            "absent"
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        unit = f" {v['unit']}" if v["unit"] and v["value"] is not None else ""
        print(f"  {name:<28} {shown}{unit}", file=out)


def run(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    try:
        Address.parse(args.address)
    except LocalProtocolError:
        print(f"amigw read: {args.address!r} is not a 12-digit meter address", file=sys.stderr)
        return EX_USAGE
    try:
        return asyncio.run(_read(args, stdout or sys.stdout))
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EX_CONFIG
