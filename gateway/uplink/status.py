"""The retained ``status`` message: what it says and where the figures come from.

Birth (on every connect), periodic (``status_interval_s``) and shutdown messages are built here;
the last will is fixed at connect time and carries no figures (the broker sends it later, when
the gateway is gone). Spool figures are best effort: a spool that is busy or full leaves them
out rather than holding up the status.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spool import Outbox, Spool, SpoolUnavailableError

from .payloads import status_payload, utc_text

log = logging.getLogger("amigw.uplink.status")


@dataclass(frozen=True, slots=True)
class UplinkStatistics:
    """A snapshot for metrics and the status message."""

    connected: bool
    connects: int
    connect_failures: int
    batches_published: int
    batches_resent: int
    batches_acked: int
    records_acked: int
    acks_uncommitted: int
    inflight: int
    headend_acks: int
    bad_acks: int
    paced_s: float
    last_error: str | None
    #: batches cut and written ahead while the broker was away, and failures to (disk full)
    batches_prepared: int = 0
    prepare_failures: int = 0

    def as_status(self) -> dict[str, Any]:
        return {
            "connects": self.connects,
            "batches_published": self.batches_published,
            "batches_resent": self.batches_resent,
            "batches_prepared": self.batches_prepared,
            "batches_acked": self.batches_acked,
            "records_acked": self.records_acked,
            "inflight": self.inflight,
        }


async def spool_figures(spool: Spool, outbox: Outbox, now: datetime) -> dict[str, Any] | None:
    """Depth, oldest unsent age, open batches, size and evictions; ``None`` if unavailable."""
    try:
        out = await outbox.statistics()
        caps = await spool.caps.statistics()
    except SpoolUnavailableError as exc:
        log.debug("status without spool figures: %s", exc)
        return None
    oldest = out.oldest_unsent
    return {
        "depth": out.depth,
        "unsent": {s.value: n for s, n in out.unsent.items()},
        "open_batches": out.open_batches,
        "last_seq": out.last_seq,
        "prepared_batches": out.prepared_batches,
        "prepared_bytes": out.prepared_bytes,
        "oldest_unsent": None if oldest is None else utc_text(oldest),
        "oldest_unsent_age_s": (
            None if oldest is None else round(max(0.0, (now - oldest).total_seconds()), 3)
        ),
        "used_bytes": caps.used_bytes,
        "max_bytes": caps.max_bytes,
        "evicted": {k.value: n for k, n in caps.evicted.items()},
        "full_errors": caps.full_errors,
    }


def online(
    *,
    gateway: str,
    version: str,
    now: datetime,
    since: datetime | None,
    spool: Mapping[str, Any] | None,
    uplink: UplinkStatistics,
    ack: str,
    window: int,
) -> bytes:
    figures = {"ack": ack, "window": window, **uplink.as_status()}
    return status_payload(
        gateway=gateway,
        state="online",
        version=version,
        time=now,
        since=since,
        spool=spool,
        uplink=figures,
    )


def offline(*, gateway: str, version: str, reason: str, now: datetime | None = None) -> bytes:
    """``reason`` is ``"connection lost"`` in the will, ``"shutdown"`` on a clean stop."""
    return status_payload(
        gateway=gateway, state="offline", version=version, time=now, reason=reason
    )
