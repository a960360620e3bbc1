"""Running a scenario: build its district, open its buses, say where they are, serve until stopped.

:func:`start_simulation` is the programmatic form (tests and ``amigw demo`` use it): an async
context manager yielding a :class:`Simulation` with the district and one :class:`Endpoint` per
bus. :func:`run_simulation` prints the clock parameters and the endpoints, one per line, and
serves until its ``stop`` event is set — what ``amigw simulate`` runs.

Meters on ``bus = "plc"`` sit behind a virtual PLC module (Q/GDW 1376.2) on its own pty.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, TextIO

from drivers.clock import Clock, ManualClock, ScaledClock

from .bus import MemoryBus, PtyBus, TcpBus
from .district import District
from .plc import VirtualPlcModule
from .scenario import PLC_BUS, Scenario, build_district


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the gateway reaches one bus."""

    bus: str
    kind: Literal["pty", "tcp", "plc"]
    meters: int
    baud: int
    path: str | None = None
    host: str | None = None
    port: int | None = None
    turnaround_ms: int = 0

    def describe(self) -> str:
        if self.kind == "pty":
            where = f"pty {self.path}"
        elif self.kind == "tcp":
            where = f"tcp {self.host}:{self.port}"
        else:
            where = f"plc {self.path}"
        return f"bus {self.bus} {where} baud {self.baud} meters {self.meters}"


@dataclass(slots=True)
class Simulation:
    scenario: Scenario
    clock: Clock
    district: District
    endpoints: list[Endpoint]

    def endpoint(self, bus: str) -> Endpoint:
        for e in self.endpoints:
            if e.bus == bus:
                return e
        raise KeyError(bus)

    def memory_bus(self, bus: str) -> MemoryBus:
        return MemoryBus(self.district, bus)


def describe_clock(clock: Clock) -> str:
    """The parameters a gateway needs to run the same simulated clock."""
    if isinstance(clock, ScaledClock):
        return (
            f"clock origin {clock.origin.isoformat()} real_origin {clock.real_origin:.6f} "
            f"speed {clock.speed:g}"
        )
    if isinstance(clock, ManualClock):
        return f"clock manual now {clock.now().isoformat()}"
    return f"clock {type(clock).__name__} now {clock.now().isoformat()}"


@contextlib.asynccontextmanager
async def start_simulation(
    scenario: Scenario, clock: Clock, *, catch_up: bool = True
) -> AsyncIterator[Simulation]:
    """Build the district and open every bus; everything is closed on exit."""
    district = build_district(scenario, clock, catch_up=catch_up)
    endpoints: list[Endpoint] = []
    async with contextlib.AsyncExitStack() as stack:
        for config in scenario.buses:
            n = len(district.on_bus(config.name))
            if config.kind == "rs485":
                pty = await stack.enter_async_context(PtyBus(district, config))
                endpoints.append(
                    Endpoint(
                        config.name,
                        "pty",
                        n,
                        config.baud,
                        path=pty.path,
                        turnaround_ms=config.turnaround_ms,
                    )
                )
            else:
                tcp = await stack.enter_async_context(TcpBus(district, config))
                endpoints.append(
                    Endpoint(
                        config.name,
                        "tcp",
                        n,
                        config.baud,
                        host=tcp.host,
                        port=tcp.port,
                        turnaround_ms=config.turnaround_ms,
                    )
                )
        if scenario.plc is not None:
            # The module starts with an empty archive: the gateway fills it (AFN11), as a
            # newly installed concentrator does.
            module = await stack.enter_async_context(VirtualPlcModule(district))
            endpoints.append(
                Endpoint(
                    PLC_BUS,
                    "plc",
                    len(district.on_bus(PLC_BUS)),
                    scenario.plc.baud,
                    path=module.path,
                    turnaround_ms=scenario.plc.turnaround_ms,
                )
            )
        yield Simulation(scenario, clock, district, endpoints)


async def run_simulation(
    scenario: Scenario,
    clock: Clock,
    *,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
    on_started: Callable[[Simulation], None] | None = None,
) -> list[Endpoint]:
    """Start ``scenario``, print the clock and one line per bus, serve until ``stop`` is set.
    ``on_started`` runs once everything is open, before "ready" is printed."""
    out = out or sys.stdout
    async with start_simulation(scenario, clock) as sim:
        meters = len(sim.district.meters)
        print(
            f"scenario {scenario.name} meters {meters} start {scenario.start.isoformat()}", file=out
        )
        print(describe_clock(clock), file=out)
        for endpoint in sim.endpoints:
            print(endpoint.describe(), file=out)
        if on_started is not None:
            on_started(sim)
        print("ready", file=out, flush=True)
        await (stop or asyncio.Event()).wait()
        return sim.endpoints
