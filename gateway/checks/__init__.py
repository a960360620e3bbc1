"""Edge checks: anomaly rules, district line loss, prepaid balance and cost control (费控).

Rules are pure functions over a meter's recent readings and its archive entry
(:mod:`.rules_energy`, :mod:`.rules_state`, :mod:`.rules_collection`); :mod:`.lifecycle` turns
their observations into alarms raised once and cleared once; :mod:`.lineloss` and
:mod:`.prepaid` keep the district and account books; :class:`Checker` runs it all over the
spool. docs/checks.md gives every rule's formula, defaults and source.
"""

from .checker import Checker, CheckerStatistics, RunReport
from .context import Context, District, districts
from .history import HistoryCache, MeterHistory, Sample, history_of, spans
from .lifecycle import Episode, Transitions, decide, decide_all, fold
from .model import ALARM_TYPES, AlarmType, Finding, Observation, State
from .prepaid import AccountStatus, Ledgers
from .tariffs import Charge, Registers, price, year_start

__all__ = [
    "ALARM_TYPES",
    "AccountStatus",
    "AlarmType",
    "Charge",
    "Checker",
    "CheckerStatistics",
    "Context",
    "District",
    "Episode",
    "Finding",
    "HistoryCache",
    "Ledgers",
    "MeterHistory",
    "Observation",
    "Registers",
    "RunReport",
    "Sample",
    "State",
    "Transitions",
    "decide",
    "decide_all",
    "districts",
    "fold",
    "history_of",
    "price",
    "spans",
    "year_start",
]
