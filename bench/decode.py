"""Decode throughput: the amigw framer + full value decode vs a minimal hand-written decoder.

(a) ``Dlt645Framer`` fed the byte stream in 64-byte chunks, every frame taken to typed values
    (``decode_message`` + the registry's compiled layouts), over a realistic mix of replies:
    daily frozen blocks, energy, voltage blocks, status words, freeze times, prepaid balance.
(b) the baseline written here: a ``struct``/table decoder that knows exactly these five layouts
    and nothing else (no resync, no registry, no typed messages) — what a throw-away script does.

Prints frames/s for both and the ratio a/b. Target for (a): >= 50,000 frames/s.
"""

from __future__ import annotations

import datetime as dt
import random
import struct
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from protocols.bcd import BCD_VALUE, Address
from protocols.dlt645 import (
    Dlt645Framer,
    Edition,
    ReadResponse,
    decode_message,
    encode_frame,
    lookup,
)
from protocols.dlt645.registry import STATUS_WORDS

N_FRAMES = 30_000
CHUNK = 64


def build_stream(rng: random.Random) -> tuple[bytes, list[bytes]]:
    frozen_time = lookup(Edition.V2007, 0x05060001)
    frozen = lookup(Edition.V2007, 0x05060101)
    energy = lookup(Edition.V2007, 0x00010000)
    voltage = lookup(Edition.V2007, 0x0201FF00)
    status = lookup(Edition.V2007, 0x04000503)
    balance = lookup(Edition.V2007, 0x00900200)
    for item in (frozen_time, frozen, energy, voltage, status, balance):
        assert item is not None
    sw3 = STATUS_WORDS[3][1]
    frames: list[bytes] = []
    for i in range(N_FRAMES):
        addr = Address(f"{rng.randrange(10**12):012d}")
        kind = i % 8
        if kind in (0, 1):
            item, rec = (
                frozen,
                {"forward_active": [Decimal(rng.randrange(10**8)).scaleb(-2) for _ in range(5)]},
            )
        elif kind == 2:
            item, rec = frozen_time, {"freeze_time": dt.datetime(2026, 11, rng.randint(1, 28))}
        elif kind in (3, 4):
            item, rec = energy, {"forward_active_total": Decimal(rng.randrange(10**8)).scaleb(-2)}
        elif kind == 5:
            v = Decimal(rng.randint(2100, 2400)).scaleb(-1)
            item, rec = voltage, {"voltage_a": v, "voltage_b": v, "voltage_c": v}
        elif kind == 6:
            item, rec = status, {"status_word_3": sw3.compose(relay_open=rng.random() < 0.1)}
        else:
            item, rec = balance, {"remaining_amount": Decimal(rng.randrange(10**6)).scaleb(-2)}
        msg = ReadResponse(addr, item.di, item.build(rec))
        frames.append(encode_frame(msg.to_frame(), preamble=rng.choice((0, 2, 4))))
    return b"".join(frames), frames


def amigw_decode(stream: bytes) -> int:
    framer = Dlt645Framer()
    values = 0
    for start in range(0, len(stream), CHUNK):
        framer.feed(stream[start : start + CHUNK])
        for frame in framer.frames():
            msg = decode_message(frame)
            assert isinstance(msg, ReadResponse)
            decoded = msg.decode()
            assert decoded is not None
            values += len(decoded.values)
    return values


_UNSCRAMBLE = bytes((b - 0x33) & 0xFF for b in range(256))


def _bcd(raw: bytes, decimals: int) -> Decimal:
    v = 0
    for b in reversed(raw):
        d = BCD_VALUE[b]
        if d < 0:
            raise ValueError("bcd")
        v = v * 100 + d
    return Decimal(v).scaleb(-decimals)


def baseline_decode(frames: list[bytes]) -> int:
    """What a minimal script does: one frame per buffer, fixed layouts, nothing else."""
    values = 0
    for raw in frames:
        i = raw.index(0x68)
        length = raw[i + 9]
        body = raw[i : i + 10 + length]
        if raw[i + 7] != 0x68 or raw[i + 10 + length] != sum(body) & 0xFF:
            raise ValueError("frame")
        data = raw[i + 10 : i + 10 + length].translate(_UNSCRAMBLE)
        (di,) = struct.unpack_from("<I", data)
        payload = data[4:]
        if di == 0x05060101:
            out = [_bcd(payload[k : k + 4], 2) for k in range(0, len(payload), 4)]
        elif di == 0x0201FF00:
            out = [_bcd(payload[k : k + 2], 1) for k in range(0, 6, 2)]
        elif di == 0x04000503:
            (word,) = struct.unpack_from("<H", payload)
            out = [word, bool(word & 0x10), bool(word & 0x40)]
        elif di == 0x05060001:
            d = [BCD_VALUE[b] for b in reversed(payload)]
            out = [dt.datetime(2000 + d[0], d[1], d[2], d[3], d[4])]
        else:
            out = [_bcd(payload, 2)]
        values += len(out)
    return values


def best_of(fn: Callable[[Any], int], arg: Any, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    stream, frames = build_stream(random.Random(2007))
    amigw_decode(stream[:10_000])  # warm the compiled layouts
    a = best_of(amigw_decode, stream)
    b = best_of(baseline_decode, frames)
    fa, fb = N_FRAMES / a, N_FRAMES / b
    print(f"frames in mix:                     {N_FRAMES} ({len(stream)} bytes)")
    print(f"fed to the framer in chunks of:    {CHUNK} bytes")
    print(f"(a) amigw framer + full decode:    {fa:12,.0f} frames/s")
    print(f"(b) hand-written struct baseline:  {fb:12,.0f} frames/s")
    print(f"ratio a/b:                         {fa / fb:12.2f}")
    print(f"target (a) >= 50,000 frames/s:     {'met' if fa >= 50_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
