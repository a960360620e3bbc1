"""Router-led reading (路由主导抄表) as the concentrator sees it: what the collector plugs in
(:class:`RoundSource`), what a round reports (:class:`RoundReport`), and the bookkeeping of one
round (:class:`RoundRun`) that :class:`~drivers.plc.PlcDriver` feeds with the module's frames.

The module walks its archive and asks, meter by meter, what to read (AFN14 F1); the concentrator
answers with the next DL/T 645 request or "nothing more" and receives each meter's reply in an
AFN06 F2 report. A round here survives what routers do in the field:

* a report re-sent because our confirm was lost (same seq, same bytes) is confirmed again but
  delivered once;
* a router that gives up on a meter asks again (or never reports): the request still outstanding
  is failed, when the router asks the same meter again or when the round ends;
* HPLC routers ask several meters before reporting: requests are tracked per meter, not as one;
* a report whose 645 frame is broken or answers another request is a failure, never a reading.

A :class:`RoundSource` that raises aborts the round; :meth:`RoundRun.answer` then tells the
router to skip, and the driver re-raises the error from ``run_round``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from protocols.bcd import Address
from protocols.dlt645 import (
    ErrorResponse,
    Message,
    ReadRequest,
    ReadResponse,
    decode_message,
    encode_frame,
)
from protocols.errors import RemoteProtocolError
from protocols.q13762 import ReadAnswer, ReadDataReport, ReadFlag
from protocols.q13762 import ReadRequest as RouterAsks


class RoundSource(Protocol):
    """What the collector wants read in one router-led round."""

    def next_request(self, address: Address) -> Message | None:
        """The next request for this meter in this round; ``None`` when it has nothing more."""

    def on_reply(self, address: Address, reply: Message) -> None:
        """The meter's (decoded) reply to the last request handed out for it."""

    def on_failure(self, address: Address, reason: str) -> None:
        """The last request handed out for this meter got no usable reply (``reason: detail``)."""


@dataclass(frozen=True, slots=True)
class RoundReport:
    """How a router-led round went."""

    requests_answered: int  # AFN14 F1 answered with a frame to read
    reports: int  # AFN06 F2 replies handed to on_reply
    failures: int  # requests handed out that got no usable reply
    meters_done: int  # meters told "nothing more" (read flag 01)
    meters_asked: int  # distinct meters the router asked about
    duplicates: int  # re-sent reports recognised and dropped
    unexpected: int  # reports matching no outstanding request
    finished: bool  # the router reported "reading finished" (False: idle timeout)
    duration_s: float


def replies_to(request: Message, reply: Message) -> bool:
    """Whether ``reply`` answers ``request`` (same meter; same DI for a read)."""
    if reply.address != request.address:
        return False
    if isinstance(request, ReadRequest):
        if isinstance(reply, ReadResponse):
            return reply.di == request.di and reply.edition is request.edition
        return isinstance(reply, ErrorResponse)
    return True


class RoundRun:
    """One round's state; every method is called from the driver's receive loop."""

    def __init__(self, source: RoundSource, *, preamble: int, started: float) -> None:
        self.source = source
        self.preamble = preamble
        self.started = started
        self.last_activity = started
        self.armed = False  # set when the module confirmed the restart that begins the round
        self.done = asyncio.Event()
        self.finished = False
        self.error: Exception | None = None
        self._outstanding: dict[Address, Message] = {}
        self._by_index: dict[int, Address] = {}
        self._asked: set[Address] = set()
        self._done: set[Address] = set()
        self._recent: deque[tuple[int, bytes]] = deque(maxlen=16)
        self.requests_answered = 0
        self.reports = 0
        self.failures = 0
        self.duplicates = 0
        self.unexpected = 0

    def touch(self, now: float) -> None:
        self.last_activity = now

    def arm(self) -> None:
        self.armed = True

    def answer(self, asks: RouterAsks) -> ReadAnswer:
        """The AFN14 F1 answer for the meter the router asks about."""
        address = asks.address
        if self.error is not None or self.done.is_set():
            return ReadAnswer(ReadFlag.FAILED)
        self._asked.add(address)
        self._by_index[asks.index] = address
        if address in self._outstanding:
            self._fail(address, "timeout: the router asked again without reporting a reply")
        try:
            message = self.source.next_request(address)
            if message is None:
                self._done.add(address)
                return ReadAnswer(ReadFlag.DONE)
            frame = encode_frame(message.to_frame(), self.preamble)
        except Exception as exc:  # the collector's bug: abort the round, re-raised by run_round
            self._abort(exc)
            return ReadAnswer(ReadFlag.FAILED)
        self._outstanding[address] = message
        self.requests_answered += 1
        return ReadAnswer(ReadFlag.READ, frame=frame)

    def on_report(self, seq: int, report: ReadDataReport) -> None:
        """An AFN06 F2 the driver has already confirmed."""
        key = (seq, report.frame)
        if key in self._recent:
            self.duplicates += 1
            return
        self._recent.append(key)
        address = self._by_index.get(report.index)
        if address is None and report.frame645 is not None:
            address = report.frame645.address
        if address is None or address not in self._outstanding:
            self.unexpected += 1
            return
        request = self._outstanding[address]
        if report.frame645 is None:
            self._fail(address, f"corrupted: {report.frame645_error or 'not a DL/T 645 frame'}")
            return
        try:
            reply = decode_message(report.frame645)
        except RemoteProtocolError as exc:
            self._fail(address, f"corrupted: {exc}")
            return
        if not replies_to(request, reply):
            self._fail(address, "corrupted: the reported reply does not answer the request")
            return
        del self._outstanding[address]
        self.reports += 1
        if self.error is None:
            try:
                self.source.on_reply(address, reply)
            except Exception as exc:  # the collector's bug: abort, re-raised by run_round
                self._abort(exc)

    def on_finished(self) -> None:
        self.finished = True
        self.done.set()

    def close(self, reason: str) -> None:
        """End the round: every request still outstanding failed with ``reason``."""
        for address in list(self._outstanding):
            self._fail(address, reason)
        self.done.set()

    def report(self, now: float) -> RoundReport:
        return RoundReport(
            requests_answered=self.requests_answered,
            reports=self.reports,
            failures=self.failures,
            meters_done=len(self._done),
            meters_asked=len(self._asked),
            duplicates=self.duplicates,
            unexpected=self.unexpected,
            finished=self.finished,
            duration_s=now - self.started,
        )

    def _fail(self, address: Address, reason: str) -> None:
        self._outstanding.pop(address, None)
        self.failures += 1
        if self.error is None:
            try:
                self.source.on_failure(address, reason)
            except Exception as exc:  # the collector's bug: abort, re-raised by run_round
                self._abort(exc)

    def _abort(self, exc: Exception) -> None:
        self.error = exc
        self.done.set()
