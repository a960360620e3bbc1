"""``amigw simulate`` in one process and ``amigw read`` against it, as a field engineer would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def simulation() -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "simulate",
            str(ROOT / "etc" / "scenarios" / "rs485-12.toml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    endpoints: dict[str, str] = {}
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    for line in proc.stdout:
        words = line.split()
        if words[:1] == ["bus"]:
            endpoints[words[1]] = words[3]
        if line.strip() == "ready":
            break
        assert time.monotonic() < deadline
    try:
        yield endpoints
    finally:
        proc.terminate()
        proc.wait(10)


def test_read_a_meter_by_name_and_di(
    simulation: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    pty = simulation["rs485-1"]
    status = main(
        [
            "read",
            "000000001001",
            "forward_active_total",
            "05060101",
            "--bus",
            pty,
            "--parity",
            "N",
            "--json",
        ]
    )
    assert status == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["di"] for r in records] == ["00010000", "05060101"]
    total = records[0]["values"]["forward_active_total"]
    assert total["unit"] == "kWh"
    assert total["value"] > records[1]["values"]["forward_active_total"]["value"]


def test_read_over_tcp_and_a_1997_meter(
    simulation: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["read", "000000009001", "0201FF00", "--bus", simulation["dtu-1"], "--baud", "9600"])
        == 0
    )
    out = capsys.readouterr().out
    assert "voltage_c" in out
    status = main(
        ["read", "000000000097", "9010", "--edition", "1997", "--bus", simulation["rs485-2"],
         "--baud", "1200", "--parity", "N"]
    )  # fmt: skip
    assert status == 0
    assert "forward_active_total" in capsys.readouterr().out


def test_silent_meter_and_unknown_item(
    simulation: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    pty = simulation["rs485-1"]
    assert (
        main(
            ["read", "000000001099", "00010000", "--bus", pty, "--parity", "N", "--timeout", "0.3"]
        )
        == 69
    )
    assert "timeout" in capsys.readouterr().out
    assert main(["read", "000000001001", "no_such_value", "--bus", pty]) == 64
