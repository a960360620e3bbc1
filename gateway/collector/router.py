"""Router-led PLC reading (路由主导抄表) driven by the same plan sessions as RS-485.

In a router-led round the PLC module decides which meter comes next and asks the concentrator
what to read from it. :class:`RouterRound` answers from the meter's due ledger entries: it runs
their sessions one after another, handing out each session's next request and feeding it the
reply the router reports. When the round ends, every entry is accounted for: finished sessions
with their readings, unfinished ones as failures, and meters the router never reached as
failures to retry — so nothing owed is forgotten.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protocols.bcd import Address
from protocols.dlt645 import Message
from spool import LedgerEntry

from .plans import ClockSession, Item, Session


@dataclass(slots=True)
class Attempt:
    """One ledger entry worked in a round, with its session (``None``: never reached)."""

    entry: LedgerEntry
    session: Session | None
    finished_at: dt.datetime | None = None


SessionFactory = Callable[[LedgerEntry], Session]


class RouterRound:
    """A :class:`drivers.plc_router.RoundSource` over the due entries of the PLC meters."""

    def __init__(
        self,
        entries: Mapping[str, Sequence[LedgerEntry]],
        start: SessionFactory,
        now: Callable[[], dt.datetime],
    ) -> None:
        self._start = start
        self._now = now
        self._queues: dict[Address, deque[LedgerEntry]] = {
            Address(meter): deque(sorted(es, key=lambda e: (e.day, e.item != Item.DAILY_FROZEN)))
            for meter, es in entries.items()
        }
        self._current: dict[Address, Attempt] = {}
        self._handed_out: dict[Address, dt.datetime] = {}
        self.attempts: list[Attempt] = []
        self.asked: set[Address] = set()

    # -- RoundSource -------------------------------------------------------------------------
    def next_request(self, address: Address) -> Message | None:
        queue = self._queues.get(address)
        if queue is None:
            return None  # not a meter this round has work for
        self.asked.add(address)
        while True:
            attempt = self._current.get(address)
            if attempt is None:
                if not queue:
                    return None
                entry = queue.popleft()
                assert attempt is None
                attempt = Attempt(entry, self._start(entry))
                self._current[address] = attempt
                self.attempts.append(attempt)
            assert attempt.session is not None
            request = attempt.session.next_request()
            if request is not None:
                self._handed_out[address] = self._now()
                return request
            self._close(address)

    def on_reply(self, address: Address, reply: Message) -> None:
        attempt = self._current.get(address)
        if attempt is None or attempt.session is None:
            return
        if isinstance(attempt.session, ClockSession):
            now = self._now()
            attempt.session.set_exchange_times(self._handed_out.get(address, now), now)
        attempt.session.on_reply(reply)
        if attempt.session.finished:
            self._close(address)

    def on_failure(self, address: Address, reason: str) -> None:
        attempt = self._current.get(address)
        if attempt is None or attempt.session is None:
            return
        attempt.session.on_failure(reason)
        self._close(address)
        # The meter did not answer: its other entries wait for the next round.
        self._queues[address].clear()

    # -- after the round -----------------------------------------------------------------------
    def _close(self, address: Address) -> None:
        attempt = self._current.pop(address, None)
        if attempt is not None:
            attempt.finished_at = self._now()

    def conclude(self, *, stopped: bool = False) -> list[Attempt]:
        """Every entry of the round: worked, cut short, or never reached. After a stop, a
        session still in progress is left unfinished (``finished_at`` stays ``None``): the
        gateway stopped it, the meter did not fail it."""
        for address in list(self._current):
            attempt = self._current[address]
            assert attempt.session is not None
            if stopped:
                del self._current[address]
                continue
            attempt.session.on_failure("timeout: the router round ended before the meter answered")
            self._close(address)
        out = list(self.attempts)
        worked = {id(a.entry) for a in out}
        for queue in self._queues.values():
            out.extend(Attempt(e, None) for e in queue if id(e) not in worked)
            queue.clear()
        return out
