"""``amigw check-config FILE``: validate a configuration without starting anything.

Prints every error on its own line as ``FILE: key.path: message`` and exits with 78
(EX_CONFIG); prints a one-line summary and exits 0 when the file is valid.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.config import ConfigError, load_config

EX_CONFIG = 78


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a configuration file (exit 78 when invalid)",
        description=__doc__,
        epilog="example:\n  amigw check-config /etc/amigw/amigw.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="the TOML configuration file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EX_CONFIG
    plc = 1 if config.plc else 0
    print(
        f"{args.file}: ok: gateway {config.gateway.id}, {len(config.bus)} bus(es), "
        f"{plc} PLC module, {len(config.meter)} meter(s)"
    )
    return 0
