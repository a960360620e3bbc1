"""The uplink's exception tree, grouped by what the caller should do.

* :class:`BrokerUnavailableError` — the broker could not be reached, or the connection broke
  (refused TCP, DNS, TLS handshake, keepalive or PUBACK timeout). Reconnect with back-off.
* :class:`BrokerRefusedError` — the broker answered and said no (bad credentials, not
  authorised, client id rejected). Reconnect with back-off too, but it needs an engineer, so it
  is logged as an error.
* :class:`TlsSetupError` — our own CA, certificate or key files cannot be loaded (local).
* :class:`PayloadError` — the head-end sent something we cannot read on ``ack`` (remote
  garbage): counted, logged once, ignored.

aiomqtt's and paho's exceptions become these in exactly one place,
:func:`gateway.uplink.session.translate`.
"""

from __future__ import annotations


class UplinkError(Exception):
    """Base of every error raised by :mod:`gateway.uplink`."""


class BrokerUnavailableError(UplinkError):
    """Not connected (never reached, or lost): retry after back-off."""


class BrokerRefusedError(UplinkError):
    """The broker rejected the connection (CONNACK refusal): credentials or authorisation."""


class TlsSetupError(UplinkError):
    """The configured CA, certificate or key could not be loaded."""


class PayloadError(UplinkError):
    """A payload from the head-end does not follow its schema."""
