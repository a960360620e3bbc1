"""The durable store on flash (SQLite, WAL, synchronous=FULL): readings, ledger, alarms, outbox."""

from spool.errors import (
    SpoolClosedError,
    SpoolCorruptError,
    SpoolError,
    SpoolIntegrityError,
    SpoolUnavailableError,
    SpoolVersionError,
)
from spool.records import (
    Clock,
    Event,
    JSONValue,
    LedgerEntry,
    LedgerState,
    LedgerSummary,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    SpoolStatistics,
)
from spool.schema import MIGRATIONS, SCHEMA_VERSION, Migration
from spool.store import Spool

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Clock",
    "Event",
    "JSONValue",
    "LedgerEntry",
    "LedgerState",
    "LedgerSummary",
    "Migration",
    "Quality",
    "Reading",
    "ReadingKind",
    "ReadingValue",
    "Spool",
    "SpoolClosedError",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolIntegrityError",
    "SpoolStatistics",
    "SpoolUnavailableError",
    "SpoolVersionError",
]
