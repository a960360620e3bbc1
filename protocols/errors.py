"""The protocol layer's exception tree, grouped by what the caller should do about it.

* :class:`RemoteProtocolError` — the peer sent something malformed. Count it, log it once, drop
  the frame, keep going. ``reason`` is a short stable code used as a metrics label.
* :class:`LocalProtocolError` — we were asked to build something the standard cannot carry
  (a 13-digit address, a value too large for its field). A bug or bad configuration on our side.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised by :mod:`protocols`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RemoteProtocolError(ProtocolError):
    """The bytes we received do not form a valid frame or value."""


class FrameError(RemoteProtocolError):
    """The frame envelope is broken: start/end bytes, length or checksum."""


class ValueDecodeError(RemoteProtocolError):
    """The frame is intact but a value inside it is not valid (bad BCD, impossible date...)."""


class LocalProtocolError(ProtocolError):
    """We were asked to encode something the protocol cannot represent."""
