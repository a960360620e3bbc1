"""Find frames of any protocol this package knows in a finite capture (decode and replay).

A live bus knows its protocol and uses that protocol's stream framer. A capture pasted into
``amigw decode`` or replayed from a file may mix DL/T 645, Q/GDW 1376.2 and DL/T 698.45 with
line noise, so :func:`scan` tries each protocol's probe at every start byte: the first probe
that finds a valid frame wins; when none does, the candidate with the strongest evidence of
being a frame is reported as a :class:`Rejection` (so a bad checksum is named, not hidden),
and the scan resumes one byte later. Bytes that are nobody's candidate are counted as noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from protocols.errors import ProtocolError

from .dlt645.frame import decode_frame as decode_645
from .dlt698.sniff import probe_698
from .framing import Candidate, Rejection
from .q13762.sniff import probe_13762


@dataclass(frozen=True, slots=True)
class Found:
    """A frame found in the capture at ``offset`` (preamble excluded)."""

    protocol: str
    offset: int
    frame: Any


@dataclass(frozen=True, slots=True)
class Rejected:
    offset: int
    protocol: str
    rejection: Rejection


@dataclass(frozen=True, slots=True)
class Noise:
    offset: int
    length: int
    preamble: bool


#: A probe looks at ``buf[i:]`` (``buf[i] == 0x68``) and returns a candidate or ``None``.
Probe = Callable[[bytes, int], Candidate | None]


def probe_645(buf: bytes, i: int) -> Candidate | None:
    if len(buf) - i < 8 or buf[i + 7] != 0x68:
        return None
    if len(buf) - i < 10:
        return Candidate("dlt645", len(buf) - i, None, "truncated", "header incomplete", 1)
    total = 12 + buf[i + 9]
    try:
        frame = decode_645(buf[i : i + total])
    except ProtocolError as exc:
        return Candidate("dlt645", min(total, len(buf) - i), None, exc.reason, exc.detail, 2)
    return Candidate("dlt645", total, frame)


def _default_probes() -> list[Probe]:
    return [probe_645, probe_13762, probe_698]


def scan(data: bytes, probes: Sequence[Probe] | None = None) -> Iterator[Found | Rejected | Noise]:
    """Every frame, rejected candidate and run of noise in ``data``, in order."""
    active = list(probes) if probes is not None else _default_probes()
    i = 0
    n = len(data)
    noise_start = -1
    covered_until = 0  # bytes inside a rejected candidate are not reported again as noise
    while i < n:
        b = data[i]
        if b != 0x68:
            if noise_start < 0:
                noise_start = i
            i += 1
            continue
        candidates = [c for c in (p(data, i) for p in active) if c is not None]
        good = next((c for c in candidates if c.frame is not None), None)
        if good is None and not candidates:
            if noise_start < 0:
                noise_start = i
            i += 1
            continue
        if noise_start >= 0:
            if i > covered_until:
                yield _noise(data, max(noise_start, covered_until), i)
            noise_start = -1
        if good is not None:
            yield Found(good.protocol, i, good.frame)
            i += good.length
            continue
        best = max(candidates, key=lambda c: c.evidence)
        yield Rejected(
            i, best.protocol, Rejection(best.reason, best.detail, data[i : i + best.length])
        )
        covered_until = max(covered_until, i + best.length)
        i += 1
    if noise_start >= 0 and n > covered_until:
        yield _noise(data, max(noise_start, covered_until), n)


def _noise(data: bytes, start: int, end: int) -> Noise:
    chunk = data[start:end]
    return Noise(start, end - start, preamble=chunk.count(0xFE) == len(chunk))
