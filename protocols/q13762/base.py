"""What every 1376.2 data unit shares: parse/build from one ``construct`` layout, the generic
and empty units, and the decoding of an embedded DL/T 645 frame.

A data unit is a frozen dataclass whose init fields are named exactly like the fields of its
``LAYOUT`` (a ``construct.Struct`` ending in ``Terminated``), so :meth:`DataUnit.parse` and
:meth:`DataUnit.build` come from the same declaration. Units whose wire form varies by edition
override both methods. construct's own errors are mapped to ours in :mod:`.registry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import construct

from protocols.dlt645.frame import START as START_645
from protocols.dlt645.frame import WAKE
from protocols.dlt645.frame import Frame as Frame645
from protocols.dlt645.frame import decode_frame as decode_645
from protocols.errors import RemoteProtocolError

from .enums import ProtocolType


class DataUnit:
    """Base of every data unit (the bytes after DT1 DT2)."""

    __slots__ = ()

    LAYOUT: ClassVar[Any] = construct.Terminated

    @classmethod
    def parse(cls, data: bytes) -> Self:
        container = cls.LAYOUT.parse(data)
        return cls(**{f.name: container[f.name] for f in dataclasses.fields(cls) if f.init})  # type: ignore[arg-type]

    def build(self) -> bytes:
        names = (f.name for f in dataclasses.fields(self) if f.init)  # type: ignore[arg-type]
        return bytes(self.LAYOUT.build({name: getattr(self, name) for name in names}))


@dataclass(frozen=True, slots=True)
class Empty(DataUnit):
    """A function with no data unit (AFN01 F1..F3, AFN12 F1..F3, queries)."""


@dataclass(frozen=True, slots=True)
class RawUnit(DataUnit):
    """An AFN/Fn we do not model: the data bytes as received, never an error."""

    data: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> Self:
        return cls(bytes(data))

    def build(self) -> bytes:
        return self.data


class FrameCarrier(DataUnit):
    """A unit that carries a meter frame; a DL/T 645 one is also decoded.

    ``frame645`` is the decoded frame, or ``None`` when the frame is not 645 or is broken; a
    broken one leaves ``frame645_error`` as ``"reason: detail"`` and the 1376.2 frame decodable.
    """

    __slots__ = ()

    frame: bytes
    frame645: Frame645 | None
    frame645_error: str | None

    def _decode_embedded(self, protocol: ProtocolType | None) -> None:
        """Fill ``frame645``/``frame645_error``; ``protocol`` None = no protocol byte, sniff."""
        frame645, error = embedded_645(protocol, self.frame)
        object.__setattr__(self, "frame645", frame645)
        object.__setattr__(self, "frame645_error", error)


def looks_like_645(frame: bytes) -> bool:
    """``68 A0..A5 68`` after any FE: the shape of a 645 frame (used when no protocol byte)."""
    body = frame.lstrip(bytes((WAKE,)))
    return len(body) >= 8 and body[0] == START_645 and body[7] == START_645


def embedded_645(protocol: ProtocolType | None, frame: bytes) -> tuple[Frame645 | None, str | None]:
    if not frame:
        return None, None
    if protocol is None:
        if not looks_like_645(frame):
            return None, None
    elif not protocol.is_dlt645:
        return None, None
    try:
        return decode_645(frame), None
    except RemoteProtocolError as exc:
        return None, f"{exc.reason}: {exc.detail}"
