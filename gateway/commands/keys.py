"""The head-end keys: which key ids may sign commands, with which secret and options.

The key file (``[commands] key_file``) is TOML, one table per key id::

    [keys.he-1]
    secret = "8a1f...64 hex digits or any text of 32+ characters"
    single_phase = false          # true: trips need no arm/execute round
    types = ["read", "ping", "time_sync", "relay", "top_up", "archive"]  # default: all

It must be readable by the service user and by nobody else (mode 0600 or 0400, owned by that
user): the daemon refuses to start (exit 78) when it is missing, unreadable, group or world
readable, or invalid. Secrets live in ``repr=False`` fields and never reach a log line or an
error message; errors name the file, never its content.
"""

from __future__ import annotations

import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from .envelope import CommandType

_KEY_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MIN_SECRET: Final = 16


class KeyFileError(Exception):
    """The key file cannot be used; the daemon does not start (exit 78)."""


@dataclass(frozen=True, slots=True)
class HeadEndKey:
    id: str
    secret: bytes = field(repr=False)
    single_phase: bool = False
    types: frozenset[CommandType] = frozenset(CommandType)


@dataclass(frozen=True, slots=True)
class KeyRing:
    keys: Mapping[str, HeadEndKey]

    def get(self, key_id: str) -> HeadEndKey | None:
        return self.keys.get(key_id)

    @classmethod
    def of(cls, *keys: HeadEndKey) -> KeyRing:
        return cls(MappingProxyType({k.id: k for k in keys}))


def _secret(text: str) -> bytes:
    if re.fullmatch(r"(?:[0-9a-fA-F]{2}){16,}", text):
        return bytes.fromhex(text)
    data = text.encode()
    if len(data) < 2 * _MIN_SECRET:
        raise ValueError(
            f"a secret needs {2 * _MIN_SECRET}+ characters or {_MIN_SECRET}+ hex bytes"
        )
    return data


def load_keys(path: Path) -> KeyRing:
    """The key ring of ``path``; :class:`KeyFileError` naming the file and the problem."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: the command key file does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the command key file: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{path}: the command key file is not a regular file")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: the command key file is readable by others (mode {info.st_mode & 0o777:o});"
            " chmod 600 it, owned by the service user"
        )
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the command key file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        # The parser's message quotes no content, only where it stopped.
        raise KeyFileError(f"{path}: not valid TOML: {exc}") from None
    tables = doc.get("keys")
    if not isinstance(tables, dict) or not tables or set(doc) != {"keys"}:
        raise KeyFileError(f"{path}: expected one or more [keys.<id>] tables and nothing else")
    keys: list[HeadEndKey] = []
    for key_id, table in tables.items():
        where = f"{path}: keys.{key_id}"
        if not _KEY_ID.match(key_id) or not isinstance(table, dict):
            raise KeyFileError(f"{where}: a key id is 1-64 letters, digits, '_', '.', '-'")
        unknown = set(table) - {"secret", "single_phase", "types"}
        if unknown:
            raise KeyFileError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
        secret = table.get("secret")
        if not isinstance(secret, str):
            raise KeyFileError(f"{where}.secret: missing")
        try:
            raw = _secret(secret)
        except ValueError as exc:
            raise KeyFileError(f"{where}.secret: {exc}") from None
        single = table.get("single_phase", False)
        if not isinstance(single, bool):
            raise KeyFileError(f"{where}.single_phase: must be true or false")
        names = table.get("types", [t.value for t in CommandType])
        try:
            types = frozenset(CommandType(n) for n in names)
        except (TypeError, ValueError):
            known = ", ".join(t.value for t in CommandType)
            raise KeyFileError(f"{where}.types: a list of command types ({known})") from None
        keys.append(HeadEndKey(key_id, raw, single, types))
    return KeyRing.of(*keys)
