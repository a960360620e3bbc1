"""``amigw demo`` end to end on its default district, shortened: the real daemon over ptys and
TCP, a private mosquitto and the head-end subscriber, its summary checked against the kept spool
through the field CLI, the daemon's log written as ``amigw run`` writes it off a terminal (JSON
lines behind their journald priority, at the configured level) into the file the summary names
and nowhere else; and the same without a broker.

(The full minute, with the night's missed reading and its back-fill, is what ``make demo``
shows; these runs are shortened to keep the suite quick.)"""

from __future__ import annotations

import io
import json
import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli.demo import DEFAULT_SCENARIO
from gateway.demo import NO_BROKER, find_mosquitto, run_demo
from simulator.scenario import load_scenario


async def test_demo_ends_with_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (make setup installs it as root)")
    out = io.StringIO()
    # 20 real seconds at 1440x: noon to 20:00 of the first day, its collection under way.
    summary = await run_demo(
        load_scenario(DEFAULT_SCENARIO), speed=1440, duration_s=20, out=out, mosquitto=binary,
        keep=tmp_path,
    )  # fmt: skip
    text = out.getvalue()
    assert summary.meters == 13
    assert summary.day is not None
    assert summary.delivered is not None
    assert summary.delivered.batches["readings"] > 0
    assert summary.delivered.batches["ledger"] > 0

    # The figures are the spool's, as the field CLI reads them from the kept spool.
    spool = tmp_path / "spool.sqlite"
    assert main(["ledger", "--spool", str(spool), "--date", str(summary.day), "--json"]) == 0
    ledger = json.loads(capsys.readouterr().out, parse_float=Decimal)
    (district,) = ledger["districts"]
    assert district["success_rate"] == summary.day_rate
    assert district["items_done_rate"] == summary.day_items_rate
    assert district["items"] == summary.day_items
    read = {
        m["meter"]
        for m in ledger["meters"]
        if any(i["item"] == "daily_frozen" and i["state"] == "done" for i in m["items"])
    }
    assert len(read) == district["meters_read"] == summary.meters_read > 0
    assert main(["spool", "stats", "--spool", str(spool), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tables"]["alarms"]["rows"] == sum(summary.alarms.values()) + summary.cleared
    assert summary.delivered.records["alarms"] <= stats["tables"]["alarms"]["rows"]

    tail = text[text.index("\nsummary\n") :].splitlines()[2:]
    day = str(summary.day)
    assert tail[0] == (
        f"  meters read        {summary.meters_read} of 13 on {day} (daily frozen reading): "
        f"success rate {summary.day_rate:.1%}"
    )
    assert re.fullmatch(
        rf"  ledger items done  [\d.]+% of {summary.day_items} on {day}; [\d.]+% of "
        rf"{summary.items} over every day",
        tail[1],
    )
    assert tail[2].startswith(f"  catch-up           {summary.caught_up_days} earlier day(s)")
    assert tail[3].startswith(f"  alarms raised      {sum(summary.alarms.values())}")
    delivered = sum(summary.delivered.batches.values())
    assert tail[4].startswith(f"  batches delivered  {delivered} to the subscriber: ")
    log = tmp_path / "amigw.log"
    assert summary.log is not None
    assert summary.log.path == log
    assert tail[5] == (
        f"  daemon log         {summary.log.lines} lines, {summary.log.warnings} warnings or "
        f"errors, in {log}"
    )
    assert tail[6].startswith(f"kept in {tmp_path}: try  amigw ledger --spool ")
    assert_logged_as_amigw_run(log, summary.log.lines, summary.log.warnings, text)


def assert_logged_as_amigw_run(log: Path, lines: int, warnings: int, printed: str) -> None:
    """The daemon's lines are in ``log`` as ``amigw run`` writes them off a terminal: JSON
    behind the journald priority, at the demo configuration's level (info); none is printed
    with the demo's story, and nothing reaches the file once the demo is over."""
    records = []
    for line in log.read_text("utf-8").splitlines():
        match = re.fullmatch(r"<([0-7])>(\{.*\})", line)
        assert match is not None, line
        records.append((int(match[1]), json.loads(match[2])))
    assert len(records) == lines > 0
    assert sum(priority <= 4 for priority, _ in records) == warnings
    assert all(r["level"] != "debug" for _, r in records)
    assert all({"event", "level", "logger", "timestamp"} <= set(r) for _, r in records)
    planned = [r for _, r in records if r["logger"] == "amigw.collector"]
    assert any(r["event"].startswith("planned ") for r in planned), planned
    assert "planned " not in printed
    assert '"logger"' not in printed
    size = log.stat().st_size
    logging.getLogger("amigw.collector").warning("after the demo")
    assert log.stat().st_size == size


async def test_demo_without_mosquitto_says_so_and_still_collects() -> None:
    out = io.StringIO()
    summary = await run_demo(
        load_scenario(DEFAULT_SCENARIO), speed=1440, duration_s=5, out=out, mosquitto=None
    )
    text = out.getvalue()
    assert NO_BROKER in text
    assert "sudo apt-get install mosquitto" in NO_BROKER
    assert summary.delivered is None
    assert summary.done > 0
    # Not kept: the log outlives the run's temporary directory, named in the summary.
    assert summary.log is not None
    try:
        assert summary.log.path.name.startswith("amigw-demo-")
        assert text.rstrip().endswith(
            "  batches delivered  - (no broker: the uplink was off)\n"
            f"  daemon log         {summary.log.lines} lines, {summary.log.warnings} warnings "
            f"or errors, in {summary.log.path}"
        )
        assert_logged_as_amigw_run(summary.log.path, summary.log.lines, summary.log.warnings, text)
    finally:
        summary.log.path.unlink()
