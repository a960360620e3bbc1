"""The uplink's topic tree and payloads: batch envelopes, status (birth, will, periodic), head-end
acknowledgements, and decoders a head-end (or a test) uses to read batches back.

Topics, under ``{prefix}/{gateway}/``: ``readings``, ``alarms``, ``events``, ``ledger`` (batches,
QoS 1), ``status`` (retained), ``cmd`` (down), ``cmd/result``, ``ack`` (down, head-end ack mode).

A batch is ``{"schema": "amigw.batch/1", "gateway", "stream", "seq", "count", "records": [...]}``.
The records come rendered by the spool's outbox (see :mod:`spool.outbox`); this module only
wraps them, so a resent batch is byte-for-byte the batch first sent (unless eviction removed
some of its records meanwhile).

Exact decimals: energy, money and every other decimal travel as ``{"$dec": "<digits>"}``, the
decimal's exact text (trailing zeros and exponent kept), never as a binary float. A JSON number
would be exact on the wire too, but most JSON readers turn it into a float on the way in; the
tagged string survives any JSON library and tells a decimal apart from a text value such as a
date or status word. :func:`loads` turns the tags back into :class:`~decimal.Decimal`.
The JSON Schemas under ``etc/schema/`` define every payload; docs/uplink.md explains them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from spool import (
    Alarm,
    Batch,
    Event,
    LedgerEntry,
    LedgerState,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Severity,
    Stream,
)
from spool.codec import loads as _spool_loads

from .errors import PayloadError

BATCH_SCHEMA: Final = "amigw.batch/1"
STATUS_SCHEMA: Final = "amigw.status/1"
ACK_SCHEMA: Final = "amigw.ack/1"
CMD_SCHEMA: Final = "amigw.cmd/1"
CMD_RESULT_SCHEMA: Final = "amigw.cmd-result/1"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of one gateway."""

    prefix: str
    gateway: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.gateway}"

    def stream(self, stream: Stream) -> str:
        return f"{self.base}/{stream.value}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    @property
    def cmd_result(self) -> str:
        return f"{self.base}/cmd/result"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"

    @property
    def all(self) -> str:
        """A subscription that sees everything this gateway publishes (and its ``cmd``)."""
        return f"{self.base}/#"


def utc_text(moment: datetime) -> str:
    """``2024-05-01T00:00:00.123456Z``: instants the gateway stamps itself are UTC."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class BatchEncoder:
    """Wraps rendered records in the batch envelope (the gateway part is encoded once); the
    records are copied once, straight from the rendered group into the payload."""

    def __init__(self, gateway: str) -> None:
        head = f'{{"schema":"{BATCH_SCHEMA}","gateway":{_dumps(gateway)},'
        self._heads = {s: f'{head}"stream":"{s.value}",'.encode() for s in Stream}

    def encode(self, batch: Batch) -> bytes:
        middle = b'"seq":%d,"count":%d,"records":[' % (batch.seq, batch.count)
        return b"".join((self._heads[batch.stream], middle, batch.records, b"]}"))


# -- status -------------------------------------------------------------------------------------


def status_payload(
    *,
    gateway: str,
    state: str,
    version: str,
    time: datetime | None,
    since: datetime | None = None,
    reason: str | None = None,
    spool: Mapping[str, Any] | None = None,
    uplink: Mapping[str, Any] | None = None,
) -> bytes:
    """The retained ``status`` message: birth (``online``), periodic, will and shutdown
    (``offline``). ``time`` is left out of the will, which the broker sends at an unknown time."""
    body: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "gateway": gateway,
        "state": state,
        "version": version,
    }
    if time is not None:
        body["time"] = utc_text(time)
    if since is not None:
        body["since"] = utc_text(since)
    if reason is not None:
        body["reason"] = reason
    if spool is not None:
        body["spool"] = dict(spool)
    if uplink is not None:
        body["uplink"] = dict(uplink)
    return _dumps(body).encode()


# -- acknowledgements from the head-end ---------------------------------------------------------


def parse_ack(payload: bytes) -> list[int]:
    """The sequence numbers a head-end acknowledges: ``17``, ``{"schema": "amigw.ack/1",
    "seq": 17}`` or ``{"schema": "amigw.ack/1", "seq": [17, 18]}``."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"ack is not JSON: {exc}") from None
    if isinstance(doc, dict):
        if doc.get("schema") != ACK_SCHEMA:
            raise PayloadError(f"ack schema must be {ACK_SCHEMA!r}, got {doc.get('schema')!r}")
        doc = doc.get("seq")
    seqs = doc if isinstance(doc, list) else [doc]
    if not seqs or not all(_is_seq(s) for s in seqs):
        raise PayloadError(f"ack seq must be a positive integer or a list of them, got {doc!r}")
    return [int(s) for s in seqs]


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def ack_payload(seqs: Sequence[int]) -> bytes:
    """What a head-end publishes on ``ack`` (used by tests and the demo head-end)."""
    return _dumps({"schema": ACK_SCHEMA, "seq": list(seqs)}).encode()


# -- reading batches back (head-end side) -------------------------------------------------------


def loads(payload: bytes | str) -> Any:
    """JSON with ``{"$dec": ...}`` tags turned back into exact Decimals."""
    return _spool_loads(payload if isinstance(payload, str) else payload.decode())


@dataclass(frozen=True, slots=True)
class BatchMessage:
    gateway: str
    stream: Stream
    seq: int
    records: tuple[Mapping[str, Any], ...]


def parse_batch(payload: bytes) -> BatchMessage:
    doc = loads(payload)
    if not isinstance(doc, dict) or doc.get("schema") != BATCH_SCHEMA:
        raise PayloadError("not an amigw.batch/1 payload")
    records = tuple(doc["records"])
    if len(records) != doc["count"]:
        raise PayloadError(f"batch {doc['seq']} says {doc['count']} records, has {len(records)}")
    return BatchMessage(doc["gateway"], Stream(doc["stream"]), int(doc["seq"]), records)


def record_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """A record's natural key as a hashable tuple."""
    return tuple(record["key"])


def reading_of(record: Mapping[str, Any]) -> Reading:
    """A ``readings`` record back as the spool's :class:`Reading`."""
    return Reading(
        meter=record["meter"],
        di=record["di"],
        data_time=datetime.fromisoformat(record["data_time"]),
        read_time=datetime.fromisoformat(record["read_time"]),
        values={n: ReadingValue(v["v"], v.get("u")) for n, v in record["values"].items()},
        quality=Quality(record["quality"]),
        kind=ReadingKind(record["kind"]),
        source=record["source"],
    )


def event_of(record: Mapping[str, Any]) -> Event:
    return Event(
        record["source"],
        record["type"],
        record["subject"],
        datetime.fromisoformat(record["event_time"]),
        record["details"],
    )


def alarm_of(record: Mapping[str, Any]) -> Alarm:
    return Alarm(
        record["meter"],
        record["type"],
        datetime.fromisoformat(record["window_start"]),
        datetime.fromisoformat(record["window_end"]),
        datetime.fromisoformat(record["raised"]),
        Severity(record["severity"]),
        record["details"],
    )


def ledger_of(record: Mapping[str, Any]) -> LedgerEntry:
    nxt = record["next_attempt"]
    return LedgerEntry(
        record["meter"],
        date.fromisoformat(record["day"]),
        record["item"],
        LedgerState(record["state"]),
        record["attempts"],
        record["reason"],
        None if nxt is None else datetime.fromisoformat(nxt),
        datetime.fromisoformat(record["updated"]),
    )
