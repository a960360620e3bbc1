"""``amigw`` command line: one sub-command per job a field engineer or the service needs.

Exit statuses follow sysexits: 0 ok, 64 usage, 65 bad data (a frame that does not decode),
78 bad configuration (so systemd does not restart-loop on it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__

from . import check_config, decode, demo, ledger, read, replay, simulate, spool_cmd
from . import run as run_command

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_CONFIG = 78

COMMANDS = (run_command, check_config, read, decode, replay, spool_cmd, ledger, simulate, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amigw",
        description="Concentrator gateway for DL/T 645 / Q/GDW 1376.2 electricity meters.",
    )
    parser.add_argument("--version", action="version", version=f"amigw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EX_OK
    return status


def run() -> None:
    sys.exit(main())
