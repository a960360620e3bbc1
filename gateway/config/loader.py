"""Load and validate the TOML file; every problem is one line naming its key path.

``load_config`` raises :class:`ConfigError` carrying all errors at once (pydantic's, then the
cross-reference checks), so an engineer fixes the file in one pass. ``amigw check-config``
and ``amigw run`` print them and exit with status 78 (EX_CONFIG).
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .model import Config


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one ``"key.path: message"`` per problem."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        super().__init__(f"{source}: {len(errors)} configuration error(s)")
        self.source = source
        self.errors = list(errors)

    def lines(self) -> list[str]:
        return [f"{self.source}: {e}" for e in self.errors]


def _path(loc: Sequence[int | str], doc: dict[str, Any]) -> str:
    """``('meter', 3, 'bus')`` -> ``meter[3].bus``; drops pydantic's union-tag segments."""
    out = ""
    node: Any = doc
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and part in ("serial", "tcp"):
            continue  # discriminated-union branch name, not a key of the file
        out += f".{part}" if out else part
        node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _message(err: Any) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "union_tag_invalid":
        return f"kind must be 'serial' or 'tcp', got {err.get('ctx', {}).get('tag')!r}"
    if kind == "union_tag_not_found":
        return "missing required key 'kind' ('serial' or 'tcp')"
    msg = msg.removeprefix("Value error, ")
    if kind == "value_error":
        return msg
    shown = err.get("input")
    if (
        kind not in ("model_type", "dict_type")
        and shown is not None
        and not isinstance(shown, dict)
    ):
        return f"{msg} (got {shown!r})"
    return msg


def _tables(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    return [t if isinstance(t, dict) else {} for t in value] if isinstance(value, list) else []


_KEYED = re.compile(r"^[A-Za-z_][\w.\[\]-]*: ")


def _lines(err: Any, doc: dict[str, Any]) -> list[str]:
    """The lines of one error; a whole-document check that names the key paths itself (one
    ``path: message`` per problem, joined by ``; ``) keeps them, one line each."""
    message = _message(err)
    path = _path(err["loc"], doc)
    if path == "(top level)":
        parts = message.split("; ")
        if all(_KEYED.match(p) for p in parts):
            return parts
    return [f"{path}: {message}"]


def _cross_checks(doc: dict[str, Any]) -> list[str]:
    """References between tables, checked on the raw document so they are reported together
    with the per-key errors even when some tables are malformed."""
    errors: list[str] = []
    buses = _tables(doc, "bus")
    meters = _tables(doc, "meter")
    plc = doc.get("plc")
    names = [str(b["name"]) for b in buses if isinstance(b.get("name"), str)]
    for name, n in Counter(names).items():
        if n > 1:
            errors.append(f"bus: bus name {name!r} is defined {n} times")
    known = ", ".join(sorted(set(names))) + (", plc" if isinstance(plc, dict) else "")
    addresses = Counter(m.get("address") for m in meters if isinstance(m.get("address"), str))
    reported: set[str] = set()
    default_district = (doc.get("gateway") or {}).get("district", "district-1")
    masters: Counter[str] = Counter()
    for i, m in enumerate(meters):
        bus, address = m.get("bus"), m.get("address")
        if bus == "plc":
            if not isinstance(plc, dict):
                errors.append(
                    f"meter[{i}].bus: meter {address} is on 'plc' but there is no [plc] table"
                )
        elif isinstance(bus, str) and bus not in names:
            errors.append(f"meter[{i}].bus: unknown bus {bus!r} (defined: {known or 'none'})")
        if isinstance(address, str) and addresses[address] > 1 and address not in reported:
            errors.append(
                f"meter[{i}].address: duplicate meter address {address}"
                f" ({addresses[address]} meters)"
            )
            reported.add(address)
        if m.get("role") == "master":
            masters[str(m.get("district") or default_district)] += 1
    for district, n in masters.items():
        if n > 1:
            errors.append(f"meter: district {district!r} has {n} master meters (at most one)")
    if isinstance(plc, dict) and plc.get("main_node") in addresses:
        errors.append(f"plc.main_node: {plc.get('main_node')} is also a meter address")
    return errors


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"(syntax): {exc}"]) from None
    for bus in doc.get("bus", []) if isinstance(doc.get("bus"), list) else []:
        if isinstance(bus, dict) and "kind" not in bus:
            bus["kind"] = "tcp" if "host" in bus else "serial"
    errors: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(doc)
    except ValidationError as exc:
        errors = [line for e in exc.errors() for line in _lines(e, doc)]
    errors += _cross_checks(doc)
    if errors or config is None:
        raise ConfigError(source, errors)
    return config


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"(file): cannot read: {exc.strerror or exc}"]) from None
    return parse_config(text, str(p))
