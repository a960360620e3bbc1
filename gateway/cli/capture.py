"""Capture files as ``amigw replay`` reads them: text lines with an optional time and direction
mark before the hex, or raw bytes.

A text line is ``[time] [mark] hex [# comment]``. The time is ISO 8601, ``HH:MM:SS.fff`` or
epoch seconds, optionally in brackets; a bare ten-digit number counts as a time only when a
direction mark follows it (otherwise it is hex). The marks are those serial monitors and
Chinese concentrator tools write: ``>`` ``<``, ``->`` ``<-``, ``>>`` ``<<``, ``TX`` ``RX``,
``send``/``sent`` ``recv``/``received``, 发送 接收 (with an optional 帧/数据 and colon).
A file is binary when it is not UTF-8 or holds control characters other than white space:
every frame of the three protocols ends in 16h, which no text log contains.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Final

from .decode import HexError, parse_hex

TX, RX = "tx", "rx"

_TS_BODY = (
    r"(?P<iso>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
    r"|(?P<clock>\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?)"
    r"|(?P<epoch>\d{9,10}(?:\.\d+)?)"
)
# A time glued to hex by a colon ("12:34:56:78") is hex, hence the look-ahead when unbracketed.
_TIMESTAMP = re.compile(rf"\s*(?P<open>\[\s*)?(?:{_TS_BODY})(?(open)\s*\]|(?![:0-9A-Fa-f]))")
_DIRECTION = re.compile(
    r"\s*[\[<(]?\s*(?P<mark>->|<-|>>|<<|>|<|tx|rx|send|sent|recv|received|发送|接收)"
    r"(?:帧|数据)?(?![a-z])\s*[\]>)]?\s*[:：]?",
    re.IGNORECASE,
)
_DIRECTIONS: Final = {
    "->": TX, ">>": TX, ">": TX, "tx": TX, "send": TX, "sent": TX, "发送": TX,
    "<-": RX, "<<": RX, "<": RX, "rx": RX, "recv": RX, "received": RX, "接收": RX,
}  # fmt: skip


class CaptureLineError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a text capture (or one chunk of a binary one)."""

    number: int
    time: str | None
    direction: str | None
    data: bytes


def parse_line(text: str, number: int, previous: str | None) -> Line | None:
    """The line's time, direction and bytes; ``None`` for a blank or comment-only line.

    Raises :class:`CaptureLineError` when what is left after the time and mark is not hex.
    """
    body = text.split("#", 1)[0].strip()
    if not body:
        return None
    stamp: str | None = None
    match = _TIMESTAMP.match(body)
    if match is not None:
        candidate = _timestamp(match)
        rest = body[match.end() :]
        bracketed = match["open"] is not None
        # A bare ten-digit number may be a hex run; it is a time only when a mark follows.
        if candidate is not None and (
            bracketed or match["epoch"] is None or "." in match["epoch"] or _DIRECTION.match(rest)
        ):
            stamp, body = candidate, rest
    direction = previous
    mark = _DIRECTION.match(body)
    if mark is not None:
        direction = _DIRECTIONS[mark["mark"].lower()]
        body = body[mark.end() :]
    try:
        data = parse_hex(body)
    except HexError as exc:
        raise CaptureLineError(f"line {number}: {exc}") from None
    if not data:
        return None
    return Line(number, stamp, direction, data)


def _timestamp(match: re.Match[str]) -> str | None:
    try:
        if match["iso"]:
            moment = datetime.fromisoformat(match["iso"].replace(",", "."))
            return moment.isoformat(timespec=_spec(moment.microsecond))
        if match["clock"]:
            clock = time.fromisoformat(_pad_hour(match["clock"].replace(",", ".")))
            return clock.isoformat(timespec=_spec(clock.microsecond))
        if match["epoch"]:
            moment = datetime.fromtimestamp(float(match["epoch"]), UTC)
            return moment.isoformat(timespec=_spec(moment.microsecond))
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _spec(microsecond: int) -> str:
    if not microsecond:
        return "seconds"
    return "milliseconds" if microsecond % 1000 == 0 else "microseconds"


def _pad_hour(text: str) -> str:
    return text if text.index(":") == 2 else "0" + text


def read_capture(path: Path, binary: bool | None) -> tuple[bool, bytes]:
    """The file's bytes and whether they are a binary capture (``binary=None``: by content)."""
    data = path.read_bytes()
    if binary is None:
        binary = _looks_binary(data)
    return binary, data


def _looks_binary(data: bytes) -> bool:
    # Every frame of the three protocols ends in 16h (a control character) and raw captures
    # carry 00h and bytes >= 80h; a text log has neither outside valid UTF-8.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(ord(c) < 32 and c not in "\t\r\n\f\v" for c in text)


def text_lines(data: bytes) -> Iterator[str]:
    # Undecodable bytes (a binary file forced with --text) become U+FFFD, so their lines are
    # reported as not hex instead of stopping the replay.
    yield from data.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()
