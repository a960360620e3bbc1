"""``amigw spool stats|export|pending`` on a spool the collector filled from a simulated district,
checked against the store's own API; read-only access while another connection writes."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.cli.spool_cmd import CSV_COLUMNS
from gateway.uplink.payloads import BatchEncoder
from spool import SCHEMA_VERSION, BatchRef, Outbox, Spool, Stream

from .districts import config_text, scenario_from
from .test_collector import SCENARIO, ZONE, memory_rig

ROOT = Path(__file__).resolve().parents[1]
DAY1, DAY2 = dt.date(2025, 6, 1), dt.date(2025, 6, 2)
METER = "000000001001"


@dataclass(frozen=True)
class Built:
    path: Path
    config: Path
    acknowledged: int


async def fill_spool(tmp: Path) -> Built:
    """Two days of the collector against the simulated district (two meters silent on day 2,
    one answering for another address), then some outbox batches cut and one acknowledged."""
    async with memory_rig(tmp) as rig:
        await rig.work_all()
        await rig.live_through(dt.datetime(2025, 6, 2, 9, 0, tzinfo=ZONE), dt.timedelta(hours=1))
        outbox = Outbox(rig.spool)
        take = await outbox.take(
            max_batches=5, max_records=40, flush=set(Stream), now=rig.clock.now()
        )
        assert len(take.cut) == 5
        await outbox.acknowledge([take.cut[1].seq])
        await outbox.close()
        config = tmp / "amigw.toml"
        config.write_text(config_text(scenario_from(SCENARIO), rig.spool.path), "utf-8")
        return Built(rig.spool.path, config, take.cut[1].seq)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return asyncio.run(fill_spool(tmp_path_factory.mktemp("spool")))


def _copy(built: Built, tmp_path: Path) -> Path:
    """A private copy of the spool (tests that write must not disturb the shared one)."""
    target = tmp_path / "copy.sqlite"
    shutil.copy(built.path, target)
    return target


async def _expected(path: Path) -> tuple[Spool, Outbox]:
    spool = await Spool.open(path)
    return spool, Outbox(spool)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_stats_match_the_store(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(built, tmp_path)
    status, out, _ = _run(["spool", "stats", "--spool", str(copy), "--json"], capsys)
    assert status == 0
    stats = json.loads(out)

    async def expected() -> tuple[object, ...]:
        spool, outbox = await _expected(copy)
        try:
            s = await spool.statistics()
            o = await outbox.statistics()
            kinds = {k.value: n for k, n in s.readings_by_kind.items() if n}
            return s.rows["readings"], s.rows["ledger"], kinds, o
        finally:
            await spool.close()

    readings, ledger, kinds, outbox = asyncio.run(expected())
    assert stats["schema_version"] == SCHEMA_VERSION
    assert stats["tables"]["readings"]["rows"] == readings
    assert stats["tables"]["ledger"]["rows"] == ledger
    assert stats["readings_by_kind"] == kinds
    assert {s: v["unsent"] for s, v in stats["outbox"].items()} == {
        s.value: n for s, n in outbox.unsent.items()
    }
    assert stats["open_batches"] == outbox.open_batches == 4
    assert stats["last_seq"] == outbox.last_seq == 5
    assert stats["oldest_unsent"] == outbox.oldest_unsent.isoformat()
    assert stats["files"]["db"] == copy.stat().st_size
    assert stats["tables"]["readings"]["bytes"] > 0
    assert stats["evicted"] == {}

    status, text, _ = _run(["spool", "stats", "--spool", str(copy)], capsys)
    assert status == 0
    assert f"schema version {SCHEMA_VERSION}" in text
    assert "open batches 4, last seq 5" in text


def test_stats_show_batches_prepared_while_the_broker_was_away(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(built, tmp_path)

    async def prepare() -> int:
        spool = await Spool.open(copy)
        outbox = Outbox(spool, envelope=BatchEncoder("gw-cli").encode)
        try:
            done = await outbox.prepare(max_batches=3, max_records=10, now=dt.datetime.now(dt.UTC))
            assert done.batches == 3
            return done.bytes
        finally:
            await spool.close()

    size = asyncio.run(prepare())
    status, out, _ = _run(["spool", "stats", "--spool", str(copy), "--json"], capsys)
    assert status == 0
    stats = json.loads(out)
    assert stats["open_batches"] == 4 + 3
    assert (stats["prepared_batches"], stats["prepared_bytes"]) == (3, size)
    assert stats["files"]["prepared"] == size
    _, text, _ = _run(["spool", "stats", "--spool", str(copy)], capsys)
    assert "open batches 7 (3 prepared, " in text


def test_export_csv_values_equal_the_stored_decimals(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = _run(
        ["spool", "export", "-c", str(built.config), "--meter", METER,
         "--from", "2025-06-02", "--to", "2025-06-02"],
        capsys,
    )  # fmt: skip
    assert status == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert tuple(rows[0]) == CSV_COLUMNS == (
        "meter", "di", "data_time", "item", "name", "value", "unit",
        "read_time", "quality", "kind", "source",
    )  # fmt: skip

    async def stored() -> list[tuple[str, ...]]:
        spool = await Spool.open(built.path)
        try:
            readings = await spool.readings(meter=METER)
        finally:
            await spool.close()
        out = []
        for r in sorted(readings, key=lambda r: (r.di, r.data_time)):
            if r.data_time.date() != DAY2:
                continue
            for name, v in r.values.items():
                out.append((r.meter, r.di, r.data_time.isoformat(), name, v.value, v.unit or ""))
        return out

    expected = asyncio.run(stored())
    assert expected  # the day holds frozen energies, clock and status readings
    got = [(r[0], r[1], r[2], r[4], r[5], r[6]) for r in rows[1:]]
    assert [g[:4] for g in got] == [(e[0], e[1], e[2], e[3]) for e in expected]
    for g, e in zip(got, expected, strict=True):
        if isinstance(e[4], Decimal):
            assert Decimal(g[4]) == e[4]
        assert g[5] == e[5]
    frozen = [r for r in rows[1:] if r[1] == "05060101" and r[4] == "forward_active_total"]
    assert len(frozen) == 1
    assert frozen[0][3] == "daily frozen forward active energy, 1 day ago"
    assert frozen[0][2] == "2025-06-02T00:00:00+08:00"
    assert (frozen[0][6], frozen[0][8], frozen[0][9]) == ("kWh", "ok", "daily_frozen")


def test_export_json_to_a_file_and_by_date_range(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "day1.jsonl"
    status, out, _ = _run(
        ["spool", "export", "--spool", str(built.path), "--from", "2025-06-01", "--to",
         "2025-06-01", "--format", "json", "--output", str(target)],
        capsys,
    )  # fmt: skip
    assert (status, out) == (0, "")
    records = [json.loads(line, parse_float=Decimal) for line in target.read_text().splitlines()]

    async def stored() -> dict[tuple[str, str, str], dict[str, object]]:
        spool = await Spool.open(built.path)
        try:
            readings = await spool.readings()
        finally:
            await spool.close()
        return {
            (r.meter, r.di, r.data_time.isoformat()): {
                n: {"value": v.value, "unit": v.unit} for n, v in r.values.items()
            }
            for r in readings
            if r.data_time.date() == DAY1
        }

    expected = asyncio.run(stored())
    assert len(records) == len(expected) > 0
    for record in records:
        key = (record["meter"], record["di"], record["data_time"])
        assert record["values"] == expected[key]
        assert record["data_time"].startswith("2025-06-01")


def test_pending_lists_the_open_batches(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(["spool", "pending", "--spool", str(built.path), "--json"], capsys)
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    batches, waiting = lines[:-1], lines[-1]

    async def stored() -> tuple[list[BatchRef], dict[str, int]]:
        spool, outbox = await _expected(built.path)
        try:
            refs = await outbox.open_batches()
            stats = await outbox.statistics()
            return refs, {s.value: n for s, n in stats.unsent.items()}
        finally:
            await spool.close()

    refs, unsent = asyncio.run(stored())
    assert [(b["seq"], b["stream"], b["records"]) for b in batches] == [
        (r.seq, r.stream.value, r.records) for r in refs
    ]
    assert built.acknowledged not in [b["seq"] for b in batches]
    in_batches = {s: sum(b["records"] for b in batches if b["stream"] == s) for s in unsent}
    assert {s: in_batches[s] + waiting["waiting"][s] for s in unsent} == unsent
    # First and last natural keys, read independently from the tables.
    with sqlite3.connect(f"file:{built.path}?mode=ro", uri=True) as conn:
        for b, r in zip(batches, refs, strict=True):
            if b["stream"] == "readings":
                row = conn.execute(
                    "SELECT meter, di, data_time FROM readings WHERE id = ?", (r.first_id,)
                ).fetchone()
                assert b["first_key"] == "/".join(row)
            if b["stream"] == "ledger":
                row = conn.execute(
                    "SELECT meter, day, item, state FROM ledger_changes WHERE id = ?",
                    (r.last_id,),
                ).fetchone()
                assert b["last_key"] == f"{row[0]}/{row[1]}/{row[2]}={row[3]}"
    conn.close()

    status, text, _ = _run(["spool", "pending", "--spool", str(built.path)], capsys)
    assert status == 0
    assert text.splitlines()[-1].startswith("waiting for a batch: alarms 0, events 0, ledger ")


def test_reading_while_another_connection_holds_a_write_transaction(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(built, tmp_path)
    writer = sqlite3.connect(copy, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        before = writer.execute("SELECT count(*) FROM readings").fetchone()[0]
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO readings (meter, di, data_epoch, data_time, read_time, kind, quality,"
            " source, value_json) VALUES ('000000001001', '00010000', 1, "
            "'1970-01-01T08:00:01+08:00', '1970-01-01T08:00:01+08:00', 'realtime', 'ok', 'x', "
            '\'{"forward_active_total":{"v":{"$dec":"1.00"},"u":"kWh"}}\')'
        )
        started = time.monotonic()
        status, out, _ = _run(["spool", "stats", "--spool", str(copy), "--json"], capsys)
        assert status == 0
        assert time.monotonic() - started < 4  # not waiting for the writer's lock
        assert json.loads(out)["tables"]["readings"]["rows"] == before
        status, out, _ = _run(
            ["spool", "export", "--spool", str(copy), "--to", "1970-01-02"], capsys
        )
        assert (status, len(out.splitlines())) == (0, 1)  # the header only: not committed yet
        writer.execute("COMMIT")
        status, out, _ = _run(
            ["spool", "export", "--spool", str(copy), "--to", "1970-01-02"], capsys
        )
        assert list(csv.reader(io.StringIO(out)))[1][:6] == [
            "000000001001", "00010000", "1970-01-01T08:00:01+08:00",
            "forward active energy, total", "forward_active_total", "1.00",
        ]  # fmt: skip
    finally:
        writer.close()


def test_inspection_never_writes_the_database(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(built, tmp_path)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    version = sqlite3.connect(copy).execute("PRAGMA user_version").fetchone()[0]
    for args in (["stats"], ["pending"], ["export", "--format", "json"]):
        assert _run(["spool", *args, "--spool", str(copy)], capsys)[0] == 0
    assert _run(["ledger", "--spool", str(copy), "--date", "2025-06-01"], capsys)[0] == 0
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    assert version == SCHEMA_VERSION


def test_missing_too_new_and_foreign_files(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(["spool", "stats", "--spool", str(tmp_path / "none.sqlite")], capsys)
    assert status == 66
    assert "none.sqlite: no spool file here" in err

    newer = _copy(built, tmp_path)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    status, _, err = _run(["spool", "pending", "--spool", str(newer)], capsys)
    assert status == 78
    assert f"schema version {SCHEMA_VERSION + 1} is newer than this amigw knows" in err

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    status, _, err = _run(["spool", "stats", "--spool", str(foreign)], capsys)
    assert status == 65
    assert "not an amigw spool" in err

    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    assert _run(["spool", "stats", "--spool", str(junk)], capsys)[0] == 65

    status, _, err = _run(
        ["spool", "export", "--spool", str(built.path), "--meter", "12345"], capsys
    )
    assert status == 64
    assert "'12345' is not a 12-digit address" in err
    broken = tmp_path / "bad.toml"
    broken.write_text("[gateway]\n", "utf-8")
    assert _run(["spool", "stats", "-c", str(broken)], capsys)[0] == 78


def test_export_as_a_subprocess_equals_in_process(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["spool", "export", "--spool", str(built.path), "--meter", METER, "--format", "json"]
    status, out, _ = _run(args, capsys)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert (proc.returncode, status) == (0, 0)
    assert proc.stdout == out
    assert proc.stderr == ""  # not a terminal: no progress count


def test_every_sub_command_help_has_an_example() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {}
    for name, command in sub.choices.items():  # type: ignore[union-attr]
        helps[name] = command.format_help()
        for action in command._actions:
            if action.dest == "action":
                for inner, p in action.choices.items():  # type: ignore[union-attr]
                    helps[f"{name} {inner}"] = p.format_help()
    mine = {"replay", "spool stats", "spool export", "spool pending", "ledger", "read", "demo"}
    assert mine <= set(helps)
    for name, text in helps.items():
        assert "example" in text, name
        assert f"amigw {name.split()[0]}" in text.split("example", 1)[1], name


def test_every_outbox_stream_is_described() -> None:
    # A stream added to the outbox must say when its records were made and how they are keyed,
    # or `spool stats` and `spool pending` could not report it.
    from spool import inspect  # noqa: PLC0415

    assert set(inspect._MADE) == set(inspect._KEY) == set(Stream)
