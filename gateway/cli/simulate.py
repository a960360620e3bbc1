"""``amigw simulate``: run a simulated district (virtual meters on pty and TCP buses) from a
scenario TOML file, for demos, gateway development and end-to-end tests.

It prints the simulated clock's parameters (so a gateway can be configured with the same
clock) and one line per bus — ``bus rs485-1 pty /dev/pts/7 baud 2400 meters 11`` or
``bus dtu-1 tcp 127.0.0.1:40123 baud 9600 meters 3`` — then serves until SIGINT or SIGTERM.
``--speed`` runs calendar time faster (days in minutes); wire timing stays real.
A scenario that does not validate is reported one error per line, with its key path, and the
command exits with 78.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from drivers.clock import ScaledClock

if TYPE_CHECKING:
    from simulator.run import Simulation
    from simulator.scenario import Scenario

EX_OK = 0
EX_USAGE = 64
EX_CONFIG = 78

EXAMPLES = """\
examples:
  amigw simulate etc/scenarios/rs485-12.toml
  amigw simulate etc/scenarios/plc-256.toml --speed 1440          # a day per minute
  amigw simulate etc/scenarios/rs485-12.toml --start 2024-06-30T23:50:00+08:00
  amigw simulate etc/scenarios/rs485-12.toml --gateway-config /tmp/gw.toml   # then:
  amigw run -c /tmp/gw.toml
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a simulated district of virtual meters on pty/TCP buses",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", help="scenario TOML file (see etc/scenarios/)")
    p.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)"
    )
    p.add_argument(
        "--start",
        default=None,
        help="simulated start instant, ISO 8601 (default: the scenario's start)",
    )
    p.add_argument(
        "--gateway-config",
        metavar="FILE",
        default=None,
        help="also write the gateway configuration for this district (for amigw run -c FILE)",
    )
    p.set_defaults(handler=run)


def _start(text: str, scenario: Scenario) -> dt.datetime:
    start = dt.datetime.fromisoformat(text)
    return start if start.tzinfo is not None else start.replace(tzinfo=scenario.zone.tz)


def run(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    # The simulator is imported here, not at module level: `amigw run` builds this parser too
    # and should not carry the simulator's modules in its memory.
    from simulator.scenario import ScenarioError, load_scenario  # noqa: PLC0415

    out = stdout or sys.stdout
    if not args.speed > 0:
        print(f"amigw simulate: --speed must be positive, got {args.speed}", file=sys.stderr)
        return EX_USAGE
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        for line in exc.errors:
            print(f"amigw simulate: {exc.source}: {line}", file=sys.stderr)
        return EX_CONFIG
    if args.start is not None:
        try:
            scenario = scenario.with_start(_start(args.start, scenario))
        except ValueError:
            print(
                f"amigw simulate: --start {args.start!r} is not an ISO 8601 date-time",
                file=sys.stderr,
            )
            return EX_USAGE
    clock = ScaledClock(scenario.start, args.speed)
    asyncio.run(_serve(scenario, clock, out, args.gateway_config))
    return EX_OK


def _writer(path: str, clock: ScaledClock, out: TextIO) -> Callable[[Simulation], None]:
    def write(sim: Simulation) -> None:
        from gateway.demo import config_for_simulation  # noqa: PLC0415 - only with the option

        target = Path(path).resolve()
        text = config_for_simulation(sim, target.with_name(target.stem + "-spool.sqlite"), clock)
        target.write_text(text, encoding="utf-8")
        print(f"gateway configuration {target}", file=out)

    return write


async def _serve(
    scenario: Scenario, clock: ScaledClock, out: TextIO, config: str | None = None
) -> None:
    from simulator.run import run_simulation  # noqa: PLC0415 - see run()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        on_started = _writer(config, clock, out) if config else None
        await run_simulation(scenario, clock, out=out, stop=stop, on_started=on_started)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
