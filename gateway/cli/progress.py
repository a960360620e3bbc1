"""A live count on stderr for long CLI operations (replay, export), shown only on a terminal.

Piped or redirected output (a cron job, a test, ``2>file``) gets nothing: a count rewritten
with carriage returns is noise in a log. Redraws are throttled so a tight loop of small steps
costs a clock read per step, not a write.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

#: seconds between redraws
INTERVAL = 0.1


class Progress:
    """``with Progress("replay", total=n, unit="lines") as p: ... p.advance()``.

    ``stream`` defaults to stderr; ``enabled`` to whether it is a TTY. ``monotonic`` is the
    clock the redraw throttle reads (injectable so a test can drive it).
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.count = 0
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = _is_tty(self._stream) if enabled is None else enabled
        self._monotonic = monotonic
        self._last = float("-inf")
        self._width = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        now = self._monotonic()
        if now - self._last >= INTERVAL:
            self._last = now
            self._draw()

    def text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            share = min(self.count / self.total, 1.0)
            return f"{self.label}: {self.count}/{self.total}{unit} ({share:.0%})"
        return f"{self.label}: {self.count}{unit}"

    def close(self) -> None:
        """Erase the count, leaving the line to whatever is printed next."""
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def _draw(self) -> None:
        line = self.text()
        pad = max(self._width - len(line), 0)
        self._stream.write("\r" + line + " " * pad)
        self._stream.flush()
        self._width = len(line)


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False
