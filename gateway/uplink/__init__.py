"""Store-and-forward to the head-end over MQTT: outbox batches, acknowledgements, outages.

:class:`Uplink` drains the spool's outbox (:mod:`spool.outbox`) through one MQTT connection at a
time; the topic tree and payloads are in :mod:`.payloads` and docs/uplink.md.
"""

from .errors import (
    BrokerRefusedError,
    BrokerUnavailableError,
    PayloadError,
    TlsSetupError,
    UplinkError,
)
from .payloads import Topics
from .publisher import Uplink, di_name, session_settings
from .status import UplinkStatistics

__all__ = [
    "BrokerRefusedError",
    "BrokerUnavailableError",
    "PayloadError",
    "TlsSetupError",
    "Topics",
    "Uplink",
    "UplinkError",
    "UplinkStatistics",
    "di_name",
    "session_settings",
]
