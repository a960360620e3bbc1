"""The outbox's vocabulary: its streams, the tables behind them, and batches (as recorded, and
rendered for sending). Shared by :mod:`spool.outbox` (cutting, acknowledging) and
:mod:`spool.render` (turning batches into JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Stream(StrEnum):
    ALARMS = "alarms"
    EVENTS = "events"
    LEDGER = "ledger"
    READINGS = "readings"


#: the order batches are cut in when several streams have records waiting: alarms first
STREAM_ORDER: Final = (Stream.ALARMS, Stream.EVENTS, Stream.LEDGER, Stream.READINGS)
TABLES: Final[Mapping[Stream, str]] = MappingProxyType(
    {
        Stream.ALARMS: "alarms",
        Stream.EVENTS: "events",
        Stream.LEDGER: "ledger_changes",
        Stream.READINGS: "readings",
    }
)


@dataclass(frozen=True, slots=True)
class BatchRef:
    """An open batch as recorded: its number, stream, id range and size when cut."""

    seq: int
    stream: Stream
    first_id: int
    last_id: int
    records: int
    created: datetime


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch ready to publish: ``records`` is its records as UTF-8 JSON objects joined by
    commas (what goes between ``[`` and ``]``; a view into the rendered group, copied only
    into the payload), ``count`` how many there are now (fewer than ``ref.records`` if some
    were evicted since the batch was cut). A batch prepared ahead comes as its ``payload``
    instead."""

    ref: BatchRef
    count: int
    records: memoryview
    #: the whole message, envelope included, when it was prepared ahead (spool.prepared):
    #: published as it is (``records`` is then empty)
    payload: bytes | bytearray | None = None

    @property
    def seq(self) -> int:
        return self.ref.seq

    @property
    def stream(self) -> Stream:
        return self.ref.stream

    @property
    def records_json(self) -> str:
        """``records`` as text."""
        return str(self.records, "utf-8")
