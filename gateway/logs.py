"""Logging: one configuration for the stdlib ``amigw.*`` loggers and structlog alike.

Every record goes through structlog's ``ProcessorFormatter`` on a single handler:

* not a terminal (systemd, a pipe): one JSON object per line, prefixed with the sd-daemon
  priority ``<N>`` (sd-daemon(3)), so journald files it under the right ``PRIORITY`` and strips
  the prefix; on a terminal: structlog's console renderer.
* context bound with :mod:`structlog.contextvars` (the collector binds ``bus`` and ``meter``)
  is merged into every line, stdlib records included; asyncio tasks inherit it.
* secrets never leave the process: fields named like a password, secret, token or key are
  masked, and the values of every secret in the configuration (``SecretStr`` fields and fields
  named like one, e.g. the TLS key path) are cut out of every rendered line.
* levels: ``[logging] level`` for everything, ``[logging.levels]`` per logger name; a reload
  (SIGHUP) applies new levels without restarting.
* :func:`configured` does the same for a while and then puts everything back, for a daemon run
  inside a longer process (``amigw demo``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import PurePath
from typing import Any, TextIO

import structlog
from pydantic import BaseModel, SecretBytes, SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.config.model import LoggingConfig

MASK = "**********"
#: sd-daemon(3) priorities: journald reads the ``<N>`` prefix of each line
PRIORITIES = {"critical": 2, "error": 3, "exception": 3, "warning": 4, "warn": 4, "info": 6}
DEBUG_PRIORITY = 7
#: a shorter secret would cut ordinary words out of every line; such values are masked only
#: where they appear under a secret-looking name
MIN_SECRET_LEN = 4
_SECRET_NAME = re.compile(
    r"password|passwd|passphrase|secret|token|credential|hmac|(^|[_.-])key($|s$|[_.-])",
    re.IGNORECASE,
)

#: left for the renderer, which formats them (the rendered line is scrubbed after)
_PASS_THROUGH = frozenset({"exc_info", "stack_info"})


def secret_name(name: str) -> bool:
    """True for a field or log key whose value must never be logged."""
    return _SECRET_NAME.search(name) is not None


def config_secrets(model: BaseModel) -> set[str]:
    """Every secret value in a configuration: ``SecretStr`` fields anywhere in the tree, and
    any string or path under a secret-looking field name (``password``, ``tls.key``, ...)."""
    return set(_walk(model, ""))


def _walk(value: object, name: str) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, SecretBytes):
        yield value.get_secret_value().decode("utf-8", "replace")
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from _walk(getattr(value, field), field)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, str(key))
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _walk(item, name)
    elif isinstance(value, str | PurePath) and secret_name(name):
        yield str(value)


def _bounded(secret: str) -> str:
    """A pattern for ``secret`` as a whole token: a short numeric password ("000000") must not
    cut pieces out of meter addresses that happen to contain it."""
    head = r"(?<![0-9A-Za-z])" if secret[0].isalnum() else ""
    tail = r"(?![0-9A-Za-z])" if secret[-1].isalnum() else ""
    return f"{head}{re.escape(secret)}{tail}"


class Redactor:
    """Masks secret-named fields and cuts known secret values out of log lines.

    Used twice in the chain: on the event dict before rendering (so a secret inside a JSON
    string is caught before escaping changes its spelling) and on the rendered line (so
    nothing a renderer adds, like a traceback, can carry one out).
    """

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def set_secrets(self, values: Iterable[str]) -> None:
        """Replace the known secret values (a reload may change them)."""
        kept = {v for v in values if len(v) >= MIN_SECRET_LEN}
        # Include the JSON-escaped spelling, for a secret with quotes, backslashes or non-ASCII.
        kept |= {json.dumps(v, ensure_ascii=a)[1:-1] for v in kept for a in (True, False)}
        self._values = frozenset(kept)
        # Longest first, so a secret that contains another is cut out whole.
        ordered = sorted(self._values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(_bounded, ordered))) if ordered else None

    @property
    def values(self) -> frozenset[str]:
        """The secret values it cuts out (each with its JSON-escaped spellings)."""
        return self._values

    def add_secrets(self, values: Iterable[str]) -> None:
        """Learn more secret values (a key loaded from a file at start-up)."""
        self.set_secrets(self._values | set(values))

    def scrub(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def _clean(self, key: str, value: Any) -> Any:
        if key in _PASS_THROUGH:
            return value
        if secret_name(key) and value is not None:
            return MASK
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {str(k): self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(key, v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.scrub(str(value))

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        return {k: self._clean(k, v) for k, v in event_dict.items()}

    def line(self, logger: WrappedLogger, method: str, rendered: Any) -> str:
        """The last step: takes the renderer's line instead of an event dict."""
        if isinstance(rendered, bytes):
            rendered = rendered.decode("utf-8", "replace")
        return self.scrub(str(rendered))


#: the process-wide redactor: :func:`configure` fills it from the configuration
REDACTOR = Redactor()


def add_secrets(*values: str) -> None:
    """Register secrets the configuration does not hold literally (key file contents)."""
    REDACTOR.add_secrets(values)


class JournalRenderer:
    """One JSON object per line behind its sd-daemon priority prefix."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer(default=str, ensure_ascii=False)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", "info")).lower()
        priority = PRIORITIES.get(level, DEBUG_PRIORITY)
        line = self._json(logger, method, event_dict)
        text = line.decode() if isinstance(line, bytes) else line
        return f"<{priority}>{text}"


def use_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return fmt == "json"


def _formatter(json_lines: bool) -> logging.Formatter:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if json_lines:
        # The traceback becomes a string field, so the redactor sees it before rendering.
        tail: list[Processor] = [structlog.processors.format_exc_info, REDACTOR]
        renderer = JournalRenderer()
    else:
        tail = [REDACTOR]
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            renderer,
            REDACTOR.line,
        ],
    )


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so a second :func:`configure` replaces it instead of adding another."""


_levelled: set[str] = set()


def apply_levels(settings: LoggingConfig, override: str | None = None) -> None:
    """Set the root level and the per-logger levels; loggers dropped from the table go back
    to inheriting the root level."""
    logging.getLogger().setLevel((override or settings.level).upper())
    for name in _levelled - set(settings.levels):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in settings.levels.items():
        logging.getLogger(name).setLevel(level.upper())
    _levelled.clear()
    _levelled.update(settings.levels)


def configure(
    settings: LoggingConfig | None = None,
    *,
    level: str | None = None,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Route every logger through one formatter on ``stream`` (stderr by default).

    ``level`` (the command line's ``--log-level``) overrides ``settings.level``.
    """
    settings = settings or LoggingConfig()
    stream = stream or sys.stderr
    REDACTOR.set_secrets(secrets)
    handler = _Handler(stream)
    handler.setFormatter(_formatter(use_json(settings.format, stream)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    apply_levels(settings, level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


@contextlib.contextmanager
def configured(
    settings: LoggingConfig, *, stream: TextIO, secrets: Iterable[str] = ()
) -> Iterator[None]:
    """:func:`configure` for a stretch of a process that goes on after it (``amigw demo`` runs
    the daemon in the process that prints its summary, and tests run it in theirs): on exit
    the root logger's handlers and level, the per-logger levels, the known secrets and
    structlog are as they were before, and nothing writes to ``stream`` any more."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {n: logging.getLogger(n).level for n in _levelled | set(settings.levels)}
    levelled, known = set(_levelled), REDACTOR.values
    shaped = structlog.is_configured()
    structure = structlog.get_config()
    configure(settings, stream=stream, secrets=secrets)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.flush()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        for name, was in named.items():
            logging.getLogger(name).setLevel(was)
        _levelled.clear()
        _levelled.update(levelled)
        REDACTOR.set_secrets(known)
        if shaped:
            structlog.configure(**structure)
        else:
            structlog.reset_defaults()


__all__ = [
    "MASK",
    "REDACTOR",
    "JournalRenderer",
    "Redactor",
    "add_secrets",
    "apply_levels",
    "config_secrets",
    "configure",
    "configured",
    "secret_name",
    "use_json",
]
