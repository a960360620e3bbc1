"""``amigw run -c FILE``: start the gateway daemon (validates the configuration first).

Exit statuses: 0 after a clean stop (SIGTERM/SIGINT), 78 when the configuration is invalid
(one line per error on stderr), 1 when the daemon failed. SIGHUP re-reads the file's
``[logging]`` levels; everything else needs a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from gateway import logs
from gateway.config import ConfigError, load_config

EX_CONFIG = 78
log = logging.getLogger("amigw.cli.run")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the gateway daemon",
        description=__doc__,
        epilog="example:\n  amigw run -c /etc/amigw/amigw.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True, help="the TOML configuration file")
    p.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="overrides [logging] level (the per-logger levels still apply)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EX_CONFIG
    logs.configure(config.logging, level=args.log_level, secrets=logs.config_secrets(config))
    from gateway.daemon import serve  # noqa: PLC0415 - keeps check-config and decode light

    def reload() -> None:
        try:
            fresh = load_config(args.config)
        except ConfigError as exc:
            for line in exc.lines():
                log.error("reload refused, keeping the running settings: %s", line)
            return
        logs.REDACTOR.add_secrets(logs.config_secrets(fresh))
        logs.apply_levels(fresh.logging, args.log_level)
        log.info("reloaded the logging levels from %s", args.config)

    return asyncio.run(serve(config, reload=reload))
