"""Benchmark: a 1,000-meter district answering reads over the in-memory bus.

Prints replies per second, against a baseline measured in the same run (the 645 codec alone:
decode the request, build and encode a ready-made reply — the least any responder must do), and
memory per meter (tracemalloc while building the district, and the RSS growth).
Simulated time moves 15 minutes after every 1,000 reads, so the meters integrate, switch
tariffs and freeze while answering. Run: ``.venv/bin/python bench/simulator.py``.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import sys
import time
import tracemalloc
from decimal import Decimal
from typing import Any

# Run as a script, this file's directory comes first on sys.path and "simulator" would import
# this file instead of the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from drivers.clock import ManualClock  # noqa: E402
from protocols.bcd import Address  # noqa: E402
from protocols.dlt645 import (  # noqa: E402
    Edition,
    ReadRequest,
    ReadResponse,
    decode_frame,
    decode_message,
    encode_frame,
)
from simulator.bus import MemoryBus  # noqa: E402
from simulator.registers import N_DEMAND, N_ENERGY, snapshot  # noqa: E402
from simulator.scenario import build_district, parse_scenario  # noqa: E402

METERS = 1000
READS = 40_000
DIS = (0x00010000, 0x0001FF00, 0x05060001, 0x05060101, 0x0201FF00, 0x02030000, 0x04000101,
       0x04000503)  # fmt: skip
DIS_1997 = (0x9010, 0x901F, 0xB611, 0xC010)

SCENARIO: dict[str, Any] = {
    "name": "bench-1000",
    "simulation": {"start": "2025-06-01T00:00:00+08:00", "seed": 1, "history_days": 2},
    "buses": [{"name": "bench"}, {"name": "master"}],
    "defaults": {"bus": "bench", "scale": [0.5, 2.0], "initial_kwh": [100, 9000]},
    "master": {"address": "900000000001", "bus": "master", "ct_ratio": 50},
    "meter_groups": [
        {"first_address": "000000100001", "count": 900},
        {"first_address": "000000200001", "count": 50, "phases": 3, "profile": "commercial"},
        {"first_address": "000000300001", "count": 50, "edition": "1997"},
    ],
}


def rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def requests(addresses: list[Address]) -> list[bytes]:
    out = []
    for i, address in enumerate(addresses):
        if address.digits.startswith("0000003"):
            di = DIS_1997[i % len(DIS_1997)]
            out.append(encode_frame(ReadRequest(address, di, Edition.V1997).to_frame()))
        else:
            out.append(encode_frame(ReadRequest(address, DIS[i % len(DIS)]).to_frame()))
    return out


def baseline(request: bytes, reads: int) -> float:
    """Codec only: decode the request, encode a prepared reply."""
    reply = ReadResponse(Address.parse("000000100001"), 0x00010000, bytes(4))
    t0 = time.perf_counter()
    for _ in range(reads):
        decode_message(decode_frame(request))
        encode_frame(reply.to_frame())
    return reads / (time.perf_counter() - t0)


def main() -> None:
    scenario = parse_scenario(SCENARIO)
    start = scenario.start

    gc.collect()
    rss0 = rss_kib()
    clock = ManualClock(start)
    t0 = time.perf_counter()
    district = build_district(scenario, clock)
    build_s = time.perf_counter() - t0
    rss = rss_kib() - rss0

    # A fresh district, traced (tracemalloc slows integration ~10x, so no history here).
    fresh = parse_scenario(
        {**SCENARIO, "simulation": {**SCENARIO["simulation"], "history_days": 0}}
    )
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    probe = build_district(fresh, ManualClock(start))
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    del probe

    bus = MemoryBus(district, "bench")
    addresses = [m.address for m in district.on_bus("bench")]
    assert len(addresses) == METERS
    reqs = requests(addresses)
    answered = 0
    t0 = time.perf_counter()
    for i in range(READS):
        if i and i % METERS == 0:
            clock.advance(15 * 60)
        if bus.exchange_nowait(reqs[i % METERS]) is not None:
            answered += 1
    elapsed = time.perf_counter() - t0
    rate = READS / elapsed
    base = baseline(reqs[0], 20_000)
    hours = (clock.now() - start) / dt.timedelta(hours=1)

    print(f"district: {METERS} meters + master; 2 days of history integrated in {build_s:.2f} s")
    print(
        f"reads: {READS} over {hours:.1f} simulated hours, {answered} answered in {elapsed:.2f} s"
    )
    print(f"replies/s: {rate:,.0f}")
    print(f"baseline (codec only: decode request + encode reply)/s: {base:,.0f}")
    print(f"ratio simulator/baseline: {rate / base:.2f}")
    print(f"memory per meter, fresh: {traced / METERS / 1024:.1f} KiB (tracemalloc)")
    print(f"memory per meter, with 2 days of records: {rss / METERS:.1f} KiB (RSS growth)")
    print(f"each kept daily record: {_record_bytes()} B (at most 62 daily + 12 settlement)")
    assert district.meters[addresses[0]].registers().forward_active[0] > Decimal(0)


def _record_bytes() -> int:
    """What one frozen record costs: its snapshot array and the (day, instant, snapshot) tuple."""
    snap = snapshot([10**15] * N_ENERGY, [0] * N_DEMAND, 10**6)
    kept = (dt.date(2025, 6, 1), 10**15, snap)
    return sum(sys.getsizeof(x) for x in (snap, kept, kept[0], kept[1]))


if __name__ == "__main__":
    main()
