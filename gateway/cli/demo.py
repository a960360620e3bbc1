"""``amigw demo``: a simulated district and the gateway collecting from it, end to end.

Starts the scenario's virtual meters on real ptys, TCP and a virtual PLC module, runs the real
daemon against them with a shared scaled clock (``--speed 1440``: a simulated day a minute),
prints progress, then the collection ledger of each day and what was stored.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from simulator.scenario import ScenarioError, load_scenario

EX_CONFIG = 78
DEFAULT_SCENARIO = Path(__file__).resolve().parents[2] / "etc" / "scenarios" / "rs485-12.toml"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a simulated district and the gateway against it",
        description=__doc__,
        epilog="example:\n  amigw demo --speed 1440 --duration 60",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario", default=str(DEFAULT_SCENARIO), help="scenario TOML (etc/scenarios)"
    )
    p.add_argument("--speed", type=float, default=1440.0, help="simulated seconds per second")
    p.add_argument("--duration", type=float, default=60.0, help="real seconds to run")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo  # noqa: PLC0415 - keeps the other commands light

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        for line in exc.errors:
            print(f"amigw demo: {exc.source}: {line}", file=sys.stderr)
        return EX_CONFIG
    return asyncio.run(
        run_demo(scenario, speed=args.speed, duration_s=args.duration, out=sys.stdout)
    )
