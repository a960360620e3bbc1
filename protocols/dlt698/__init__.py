"""DL/T 698.45 link layer (the envelope): frame codec with HCS/FCS, stream framer, description.

The APDU (GET/SET/ACTION/...) is carried as bytes with its service named; decoding its
A-XDR content is left for later.
"""

from __future__ import annotations

from .describe import describe_frame
from .frame import (
    AddressType,
    Control,
    Direction,
    Frame,
    LinkFunction,
    Prm,
    ServerAddress,
    Service,
    crc16,
    decode_frame,
    encode_frame,
)
from .framer import Dlt698Framer

__all__ = [
    "AddressType",
    "Control",
    "Direction",
    "Dlt698Framer",
    "Frame",
    "LinkFunction",
    "Prm",
    "ServerAddress",
    "Service",
    "crc16",
    "decode_frame",
    "describe_frame",
    "encode_frame",
]
