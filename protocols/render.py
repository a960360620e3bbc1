"""JSON rendering shared by the protocol describers: exact decimals, readable times.

``json`` would turn a ``Decimal`` into a float (or refuse it); a meter's ``3911.88`` must print
as ``3911.88``, so :func:`dumps` writes decimals as JSON numbers from their exact digits.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from .dlt645.formats import ABSENT, StatusBits


def plain(value: Any) -> Any:
    """A decoded value as something JSON can carry (``Decimal`` stays exact)."""
    if value is ABSENT or value is None:
        return None
    if isinstance(value, bool | int | str | Decimal):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, StatusBits):
        return str(value)
    if isinstance(value, bytes):
        return value.hex(" ").upper()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [plain(v) for v in value]
    return str(value)


def _encode(obj: Any, indent: int | None, level: int) -> str:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            return json.dumps(str(obj))
        return format(obj, "f")
    if isinstance(obj, Mapping):
        if not obj:
            return "{}"
        items = [
            f"{json.dumps(str(k), ensure_ascii=False)}: {_encode(v, indent, level + 1)}"
            for k, v in obj.items()
        ]
        return _join("{", items, "}", indent, level)
    if isinstance(obj, list | tuple):
        if not obj:
            return "[]"
        return _join("[", [_encode(v, indent, level + 1) for v in obj], "]", indent, level)
    return json.dumps(obj, ensure_ascii=False)


def _join(opening: str, parts: list[str], closing: str, indent: int | None, level: int) -> str:
    if indent is None:
        return opening + ", ".join(parts) + closing
    pad = " " * (indent * (level + 1))
    return (
        opening
        + "\n"
        + ",\n".join(pad + p for p in parts)
        + "\n"
        + " " * (indent * level)
        + closing
    )


def dumps(obj: Any, indent: int | None = None) -> str:
    """``json.dumps`` that writes ``Decimal`` as an exact JSON number."""
    return _encode(plain(obj), indent, 0)
