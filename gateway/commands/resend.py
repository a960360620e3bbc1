"""Resend by command: what the spool holds for a range of data times goes out again.

The records are queued in the outbox as new batches (new ``seq``s, the same records and natural
keys, so the head-end de-duplicates by key) in one transaction, by :meth:`Outbox.requeue`;
the uplink sends them with its next cut. A range matching more than ``resend_max_records``
records is refused whole: the head-end splits it, and no command can fill the outbox with a
month of curves. Parts of the range the spool evicted are reported as such.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from spool import Outbox, Stream
from spool.outbox import RESENDABLE, Unheld

if TYPE_CHECKING:
    from .envelope import ResendParams
    from .service import CommandService, Done


def _unheld(part: Unheld, text: Callable[[dt.datetime], str]) -> dict[str, Any]:
    return {
        "stream": part.stream.value,
        "records": part.records,
        "start": text(part.start),
        "end": text(part.end),
    }


async def resend(service: CommandService, outbox: Outbox, params: ResendParams) -> Done:
    from .service import Done, _utc_text  # noqa: PLC0415 - service imports this module

    streams: Sequence[Stream] = (
        RESENDABLE if params.streams is None else [Stream(s) for s in params.streams]
    )
    limit = service.settings.resend_max_records
    uplink = service.config.uplink
    done = await outbox.requeue(
        start=params.start_time,
        end=params.end_time,
        streams=streams,
        meters=params.meters or (),
        max_records=limit,
        batch_records=uplink.batch_max_records if uplink is not None else 200,
        now=service.clock.now(),
    )
    result: dict[str, Any] = {
        "start": _utc_text(params.start_time),
        "end": _utc_text(params.end_time),
        "matched": {s.value: done.matched.get(s, 0) for s in streams},
        "queued": {s.value: done.queued.get(s, 0) for s in streams},
        "batches": len(done.batches),
        "evicted": [_unheld(part, _utc_text) for part in done.unheld],
    }
    if done.batches:
        result["seqs"] = [done.batches[0].seq, done.batches[-1].seq]
    total = sum(done.matched.values())
    if done.refused:
        return Done(
            "failed",
            result,
            f"{total} records match, more than resend_max_records ({limit}): "
            "nothing queued, split the range",
        )
    detail = None
    if not total:
        detail = "the spool holds no record of the range that was sent before"
    return Done("done", result, detail)
