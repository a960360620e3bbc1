"""Configuration: the shipped example loads; bad files get exact, key-pathed messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
[gateway]
id = "gw1"
[[bus]]
name = "rs485-1"
device = "/dev/ttyS1"
[[meter]]
address = "000000000001"
bus = "rs485-1"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "amigw.toml")
    return info.value.lines()


def test_shipped_example_is_valid() -> None:
    config = load_config(ROOT / "etc" / "amigw.toml")
    assert config.gateway.id == "gw-0001"
    assert [b.name for b in config.bus] == ["rs485-1", "dtu-1"]
    assert config.bus[0].kind == "serial"
    assert config.bus[1].kind == "tcp"
    assert len(config.meter) == 4
    assert config.collection.daily_start_time.hour == 0


def test_defaults() -> None:
    config = parse_config(MINIMAL)
    bus = config.bus[0]
    assert (bus.baud, bus.parity, bus.bytesize, bus.stopbits) == (2400, "E", 8, 1)
    assert config.meter[0].edition == "2007"
    assert config.gateway.timezone == "Asia/Shanghai"
    assert config.time_sync.max_correction_s == 300


BAD = [
    (
        "missing gateway",
        "[[bus]]\nname='b'\ndevice='/dev/x'\n",
        ["amigw.toml: gateway: missing required key"],
    ),
    (
        "missing keys",
        "[gateway]\nid='g'\n[[bus]]\nname='b'\n[[meter]]\nbus='b'\n",
        [
            "amigw.toml: bus[0].device: missing required key",
            "amigw.toml: meter[0].address: missing required key",
        ],
    ),
    (
        "wrong types",
        "[gateway]\nid='g'\n[[bus]]\nname='b'\ndevice='/dev/x'\ntimeout_ms='soon'\nretries=-1\n",
        [
            "amigw.toml: bus[0].timeout_ms: Input should be a valid integer,"
            " unable to parse string as an integer (got 'soon')",
            "amigw.toml: bus[0].retries: Input should be greater than or equal to 0 (got -1)",
        ],
    ),
    (
        "unknown bus",
        MINIMAL + "[[meter]]\naddress='000000000002'\nbus='rs485-9'\n",
        ["amigw.toml: meter[1].bus: unknown bus 'rs485-9' (defined: rs485-1)"],
    ),
    (
        "duplicate addresses",
        MINIMAL + "[[meter]]\naddress='000000000001'\nbus='rs485-1'\n",
        ["amigw.toml: meter[0].address: duplicate meter address 000000000001 (2 meters)"],
    ),
    (
        "bad address and unknown key",
        MINIMAL + "[[meter]]\naddress='12'\nbus='rs485-1'\ncolour='red'\n",
        [
            "amigw.toml: meter[1].address: meter address must be 12 digits, got '12'",
            "amigw.toml: meter[1].colour: unknown key",
        ],
    ),
    (
        "unknown bus kind",
        "[gateway]\nid='g'\n[[bus]]\nname='b'\nkind='can'\n",
        ["amigw.toml: bus[0]: kind must be 'serial' or 'tcp', got 'can'"],
    ),
    (
        "plc meter without plc",
        "[gateway]\nid='g'\n[[meter]]\naddress='000000000001'\nbus='plc'\n",
        ["amigw.toml: meter[0].bus: meter 000000000001 is on 'plc' but there is no [plc] table"],
    ),
    (
        "bad zone and time",
        "[gateway]\nid='g'\ntimezone='Mars/Base'\n[collection]\ndaily_start='25:00'\n",
        [
            "amigw.toml: gateway.timezone: unknown time zone 'Mars/Base'",
            "amigw.toml: collection.daily_start: time of day must be HH:MM, got '25:00'",
        ],
    ),
    ("toml syntax", "[gateway\nid='g'\n", None),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_gets_exact_messages(name: str, text: str, expected: list[str] | None) -> None:
    lines = errors_of(text)
    if expected is None:
        assert len(lines) == 1
        assert lines[0].startswith("amigw.toml: (syntax): ")
    else:
        assert lines == expected


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "cannot read" in info.value.lines()[0]
