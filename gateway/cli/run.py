"""``amigw run -c FILE``: start the gateway daemon (validates the configuration first).

Exit statuses: 0 after a clean stop (SIGTERM/SIGINT), 78 when the configuration is invalid
(one line per error on stderr), 1 when the daemon failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from gateway.config import ConfigError, load_config

EX_CONFIG = 78


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the gateway daemon",
        description=__doc__,
        epilog="example:\n  amigw run -c /etc/amigw/amigw.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True, help="the TOML configuration file")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EX_CONFIG
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from gateway.daemon import serve  # noqa: PLC0415 - keeps check-config and decode light

    return asyncio.run(serve(config))
