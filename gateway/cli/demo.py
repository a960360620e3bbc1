"""``amigw demo``: a simulated district and the gateway collecting from it, end to end.

Starts the scenario's virtual meters on real ptys, TCP and a virtual PLC module, runs the real
daemon against them with a shared scaled clock (``--speed 1440``: a simulated day a minute)
and, when mosquitto is installed, a private broker and a head-end subscriber printing the
alarms it receives. Prints progress, the collection ledger of each day, then a summary: meters
read, success rate, days caught up, alarms raised and batches delivered to the subscriber.
The daemon logs as ``amigw run`` would with the demo's configuration, into a file the summary
names (``amigw.log`` in the ``--keep`` directory), so its lines never mix with the demo's.
The default district (``etc/scenarios/demo.toml``) has its faults and anomalies timed to show
within that minute.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

EX_CONFIG = 78
DEFAULT_SCENARIO = Path(__file__).resolve().parents[2] / "etc" / "scenarios" / "demo.toml"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a simulated district and the gateway against it",
        description=__doc__,
        epilog="examples:\n  amigw demo --speed 1440 --duration 60\n"
        "  amigw demo --keep /tmp/demo && amigw ledger --spool /tmp/demo/spool.sqlite --json\n"
        "  amigw demo --scenario etc/scenarios/plc-256.toml --speed 1440 --duration 90",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario", default=str(DEFAULT_SCENARIO), help="scenario TOML (etc/scenarios)"
    )
    p.add_argument("--speed", type=float, default=1440.0, help="simulated seconds per second")
    p.add_argument("--duration", type=float, default=60.0, help="real seconds to run")
    p.add_argument(
        "--keep", metavar="DIR", help="leave the configuration and spool in DIR to inspect after"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo  # noqa: PLC0415 - keeps the other commands light
    from simulator.scenario import ScenarioError, load_scenario  # noqa: PLC0415

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        for line in exc.errors:
            print(f"amigw demo: {exc.source}: {line}", file=sys.stderr)
        return EX_CONFIG
    if args.speed <= 0 or args.duration <= 0:
        print("amigw demo: --speed and --duration must be positive", file=sys.stderr)
        return 64
    keep = Path(args.keep) if args.keep else None
    asyncio.run(
        run_demo(scenario, speed=args.speed, duration_s=args.duration, out=sys.stdout, keep=keep)
    )
    return 0
