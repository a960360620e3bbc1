"""``amigw ledger`` on the spool the collector filled (tests/test_cli_spool.py): every entry as
stored; each district's success rate counted in meters with the daily frozen reading (as the
metrics count it), its meters complete, and its items done rate equal to a hand count and to
``Spool.ledger_summary``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.cli import main
from spool import LedgerEntry, LedgerState, Spool

from .test_cli_spool import DAY2, ROOT, Built, fill_spool

NORTH = ("000000001001", "000000001002", "000000001003")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return asyncio.run(fill_spool(tmp_path_factory.mktemp("ledger")))


def _entries(path: Path, day: dt.date) -> tuple[list[LedgerEntry], Decimal | None]:
    async def read() -> tuple[list[LedgerEntry], Decimal | None]:
        spool = await Spool.open(path)
        try:
            return await spool.ledger(day=day), (await spool.ledger_summary(day)).success_rate
        finally:
            await spool.close()

    return asyncio.run(read())


def _rate(done: int, total: int) -> Decimal:
    return (Decimal(done) / Decimal(total)).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)


def test_every_entry_and_the_rate_of_a_day(
    built: Built,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ledger", "-c", str(built.config), "--date", "2025-06-02", "--json"]) == 0
    report = json.loads(capsys.readouterr().out, parse_float=Decimal)
    entries, summary_rate = _entries(built.path, DAY2)

    # Two meters were silent all day and one answers for another address: the day has
    # failed and pending items, so the rate is a real fraction.
    done = sum(e.state is LedgerState.DONE for e in entries)
    failed = sum(e.state is LedgerState.FAILED for e in entries)
    pending = sum(e.state is LedgerState.PENDING for e in entries)
    assert failed
    assert pending
    meters = {e.meter for e in entries}
    read = {e.meter for e in entries if e.item == "daily_frozen" and e.state is LedgerState.DONE}
    (district,) = report["districts"]
    assert district == {
        "district": "district-1",
        "meters": len(meters),
        "meters_read": len(read),
        "success_rate": _rate(len(read), len(meters)),
        "meters_complete": len(meters)
        - len({e.meter for e in entries if e.state is not LedgerState.DONE}),
        "items": len(entries),
        "done": done,
        "failed": failed,
        "pending": pending,
        "items_done_rate": _rate(done, len(entries)),
    }
    assert district["items_done_rate"] == summary_rate
    # Meters and items give different figures on this day: the rate is the meters'.
    assert district["success_rate"] != district["items_done_rate"]

    listed = [
        (m["meter"], i["item"], i["state"], i["attempts"], i["last_error"])
        for m in report["meters"]
        for i in m["items"]
    ]
    assert listed == [(e.meter, e.item, e.state.value, e.attempts, e.reason) for e in entries]
    silent = [i for m in report["meters"] if m["meter"] == "000000001003" for i in m["items"]]
    frozen = next(i for i in silent if i["item"] == "daily_frozen")
    assert frozen["state"] == "failed"
    assert frozen["last_error"] == "timeout: rs485-1: no reply from 000000001003"


def test_districts_from_the_configuration(
    built: Built,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = built.config.read_text("utf-8")
    for meter in NORTH:
        text = text.replace(f'address = "{meter}"', f'address = "{meter}"\ndistrict = "north"')
    config = tmp_path / "two-districts.toml"
    config.write_text(text, "utf-8")
    assert main(["ledger", "-c", str(config), "--date", "2025-06-02"]) == 0
    out = capsys.readouterr().out.splitlines()
    entries, _ = _entries(built.path, DAY2)
    for name, members in (
        ("district-1", {e.meter for e in entries} - set(NORTH)),
        ("north", set(NORTH)),
    ):
        mine = [e for e in entries if e.meter in members]
        done = sum(e.state is LedgerState.DONE for e in mine)
        read = sum(
            any(
                e.item == "daily_frozen" and e.state is LedgerState.DONE
                for e in mine
                if e.meter == m
            )
            for m in members
        )
        complete = sum(
            all(e.state is LedgerState.DONE for e in mine if e.meter == m) for m in members
        )
        counts = [sum(e.state is s for e in mine) for s in LedgerState]
        line = next(line for line in out if line.startswith(f"  district {name}:"))
        assert line == (
            f"  district {name}: success {_rate(read, len(members)):.2%} ({read}/{len(members)} "
            f"meters with the daily frozen reading), {complete}/{len(members)} meters complete; "
            f"items {done} done, {counts[2]} failed, {counts[0]} pending of {len(mine)}"
        )
    silent = next(e for e in entries if (e.meter, e.item) == ("000000001003", "daily_frozen"))
    row = next(line for line in out if line.startswith("  000000001003  daily_frozen"))
    assert row.split()[2:4] == ["failed", str(silent.attempts)]
    assert row.endswith(f"  {silent.reason}")


def test_failed_only_and_the_default_day(
    built: Built,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ledger", "--spool", str(built.path), "--date", "2025-06-02", "--failed"]) == 0
    out = capsys.readouterr().out
    assert "district all:" in out
    listed = {line.split()[0] for line in out.splitlines()[3:]}
    assert listed == {"000000001003", "000000001004", "000000001009"}

    # No --date: today in the gateway's time zone, which this spool has no entries for.
    assert main(["ledger", "-c", str(built.config)]) == 0
    today = dt.datetime.now(ZoneInfo("Asia/Shanghai")).date()
    assert capsys.readouterr().out == (
        f"no ledger entries for {today} (days in the spool: 2025-05-30 .. 2025-06-02)\n"
    )


def test_ledger_as_a_subprocess(built: Built) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "ledger", "--spool", str(built.path),
         "--date", "2025-06-01", "--json"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout, parse_float=Decimal)
    entries, rate = _entries(built.path, dt.date(2025, 6, 1))
    assert report["districts"][0]["items_done_rate"] == rate
    assert report["districts"][0]["items"] == len(entries)


def test_missing_spool_and_bad_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "--spool", str(tmp_path / "none.sqlite")]) == 66
    assert "no spool file here" in capsys.readouterr().err
    assert main(["ledger", "--spool", str(tmp_path / "x"), "--timezone", "Mars/Olympus"]) == 64
