"""The driver layer's exceptions, grouped by what the collector should do about them.

* :class:`LinkError` — the port or socket is gone (unplugged adapter, DTU dropped the TCP
  connection). The channel reconnects; the request fails.
* :class:`MeterTimeoutError` — the meter did not answer within the timeout, after retries.
* :class:`ReplyCorruptedError` — something answered, but every attempt was garbled.
* :class:`MeterRestingError` — the meter failed repeatedly and is resting; no bus time was spent.

Library exceptions (pyserial, OSError) are mapped to these at exactly one seam: the link.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of the driver layer's errors."""

    reason = "driver-error"


class LinkError(DriverError):
    reason = "link-error"


class MeterTimeoutError(DriverError):
    reason = "timeout"


class ReplyCorruptedError(DriverError):
    reason = "corrupted"


class MeterRestingError(DriverError):
    reason = "backed-off"
