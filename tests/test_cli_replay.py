"""``amigw replay`` on the sample captures in etc/captures, on corpus frames, on raw binary files,
through every capture line format it accepts, and as a real subprocess."""

from __future__ import annotations

import csv
import json
import os
import select
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli.capture import CaptureLineError, Line, parse_line
from gateway.cli.progress import Progress
from gateway.cli.replay import replay

from .conftest import corpus_frames

ROOT = Path(__file__).resolve().parents[1]
RS485 = ROOT / "etc" / "captures" / "rs485-exchange.log"
PLC = ROOT / "etc" / "captures" / "plc-module.log"

# What rs485-exchange.log holds, frame by frame: (line, time, dir, summary or rejection).
RS485_FRAMES = [
    (5, "2025-06-02T00:05:01.120", "tx",
     "000000130495 read request 00010001 forward active energy, total, settlement period 1 ago"),
    (6, "2025-06-02T00:05:01.480", "rx",
     "000000130495 read response 00010001 forward active energy, total, settlement period 1 ago"
     ": forward_active_total=3911.88 kWh"),
    (8, "2025-06-02T00:05:02.010", "tx", "201000000012 read request 0201FF00 voltage, block"),
    (9, "2025-06-02T00:05:02.390", "rx",
     "201000000012 read response 0201FF00 voltage, block: voltage_a=225.6 V, voltage_b=absent, "
     "voltage_c=absent"),
    (10, "2025-06-02T00:05:03", "tx",
     "201000000012 read request 00900200 remaining amount (balance)"),
    (11, "2025-06-02T00:05:03.350", "rx",
     "201000000012 read response 00900200 remaining amount (balance): remaining_amount=198.56 CNY"),
    (12, "2025-06-02T00:05:04", "tx",
     "151230011061 read request 04000503 meter run status word 3 (operation, relay, account)"),
    (14, "2025-06-02T00:05:04.330", "rx", "bad-checksum: CS is BF, computed BE"),
]  # fmt: skip


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line, parse_float=Decimal) for line in text.splitlines()]


@pytest.mark.parametrize("protocol", ["auto", "645"])
def test_rs485_capture_gives_the_exact_frames_and_rejections(
    protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["replay", str(RS485), "--json", "--protocol", protocol])
    records = _json_lines(capsys.readouterr().out)
    frames, summary = records[:-1], records[-1]
    got = [
        (r["line"], r["time"], r["dir"], r["summary"] if r["event"] == "frame" else r["error"])
        for r in frames
    ]
    assert got == RS485_FRAMES
    # The reply split over lines 6 and 7 was reassembled from its direction's stream.
    assert frames[1]["values"] == {
        "forward_active_total": {"value": Decimal("3911.88"), "unit": "kWh"}
    }
    assert summary == {
        "event": "summary",
        "frames": 7,
        "frames_by_protocol": {"dlt645-2007": 7},
        "rejected": 1,
        "rejected_by_reason": {"bad-checksum": 1},
        "undecodable": 0,
        "undecodable_by_reason": {},
        "unframed_bytes": 4,  # 00 13 7F 22 before the voltage reply
        "preamble_bytes": 5 * 4,  # four FE before each of four requests and one reply
        "bad_lines": 0,
        "bytes": 168,
    }
    assert status == 65  # a candidate was rejected


def test_plc_capture_with_a_truncated_uplink_frame(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["replay", str(PLC), "--protocol", "1376.2"])
    out = capsys.readouterr().out.splitlines()
    assert out[:6] == [
        "2025-06-02T00:05:00.100+08:00 TX q1376.2 downlink AFN03 F1 query",
        "2025-06-02T00:05:00.180+08:00 RX q1376.2 uplink AFN00 F1 confirm",
        "2025-06-02T00:05:01+08:00 TX q1376.2 downlink AFN13 F1 route_forward to/from "
        "010000000000 [010000000000 read request 00010000 forward active energy, total]",
        "2025-06-02T00:05:01.200+08:00 RX q1376.2 REJECTED bad-end: expected 16, got 00 "
        "[68 15 00 01 00 00 00 00 00 03 00 01 00 01 00 00 68 13 00 81 00]",
        "2025-06-02T00:05:02+08:00 TX q1376.2 downlink AFN12 F2 route_control",
        "2025-06-02T00:05:02.090+08:00 RX q1376.2 uplink AFN00 F1 confirm",
    ]
    assert out[6].startswith("-- 131 bytes: 5 frame(s) (5 q1376.2); 1 rejected (1 bad-end); ")
    assert status == 65


def test_direction_filter_and_a_clean_capture_exit_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = tmp_path / "clean.log"
    clean.write_text("".join(RS485.read_text("utf-8").splitlines(True)[:10]), "utf-8")
    assert main(["replay", str(clean), "--direction", "rx"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[:-1]] == ["RX", "RX"]


@pytest.mark.parametrize(
    ("text", "time", "direction", "data"),
    [
        ("[2025-06-02 00:05:01.120] 发送: FE 68", "2025-06-02T00:05:01.120", "tx", "fe68"),
        ("2025-06-02T00:05:01+08:00 接收 68 16", "2025-06-02T00:05:01+08:00", "rx", "6816"),
        ("00:05:01.120 TX 6816", "00:05:01.120", "tx", "6816"),
        ("[9:05:01] RX: 68 16", "09:05:01", "rx", "6816"),
        ("1748794001.5 -> 68", "2025-06-01T16:06:41.500+00:00", "tx", "68"),
        ("[1748794001] <- 68", "2025-06-01T16:06:41+00:00", "rx", "68"),
        ("1748794001 send 68", "2025-06-01T16:06:41+00:00", "tx", "68"),
        ("<TX> 68 16  # trailing comment", None, "tx", "6816"),
        ("recv: 0x68, 0x16", None, "rx", "6816"),
        ("> 68 16", None, "tx", "6816"),
        ("< 68 16", None, "rx", "6816"),
        # a ten-digit run without a mark after it is hex, not a time
        ("1748794001 68", None, None, "174879400168"),
        # a time-like run glued to more hex by colons is hex
        ("12:34:56:78", None, None, "12345678"),
        ("68 16", None, None, "6816"),
    ],
)
def test_capture_line_formats(
    text: str, time: str | None, direction: str | None, data: str
) -> None:
    line = parse_line(text, 1, None)
    assert line == Line(1, time, direction, bytes.fromhex(data))


def test_a_line_without_a_mark_continues_the_previous_direction() -> None:
    line = parse_line("34 33 BB 16", 7, "rx")
    assert line is not None
    assert line.direction == "rx"
    assert parse_line("   # only a comment", 2, "tx") is None
    assert parse_line("", 3, "tx") is None
    with pytest.raises(CaptureLineError, match=r"line 4: not hex: 'z'"):
        parse_line("TX zz", 4, None)


def test_a_line_that_is_not_hex_is_counted_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / "bad.log"
    capture.write_text(
        "TX 68 12 00 00 00 10 20 68 11 04 33 35 C3 33 85 16\nRX hello world\n", "utf-8"
    )
    assert main(["replay", str(capture), "--json"]) == 65
    captured = capsys.readouterr()
    assert "line 2: not hex: 'h' at position 0 (skipped)" in captured.err
    summary = _json_lines(captured.out)[-1]
    assert (summary["frames"], summary["bad_lines"], summary["rejected"]) == (1, 1, 0)


def test_binary_capture_is_recognised_and_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [parse_line(t, n, None) for n, t in enumerate(RS485.read_text("utf-8").splitlines(), 1)]
    rx = b"".join(line.data for line in lines if line is not None and line.direction == "rx")
    capture = tmp_path / "rx.bin"
    capture.write_bytes(rx)
    export = tmp_path / "frames.csv"
    assert main(["replay", str(capture), "--export", str(export)]) == 65
    with export.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "time", "dir", "protocol", "status", "summary", "raw"]
    assert [(r[3], r[4]) for r in rows[1:]] == [("dlt645-2007", "ok")] * 3 + [
        ("dlt645", "rejected bad-checksum")
    ]
    assert rows[2][5] == RS485_FRAMES[3][3]
    assert rows[4][6] == "68 61 10 01 30 12 15 68 91 06 36 38 33 37 83 33 BF 16"
    out = capsys.readouterr().out
    assert "4 unframed byte(s), 4 preamble byte(s)" in out

    as_json = tmp_path / "frames.json"
    assert main(["replay", str(capture), "--binary", "--export", str(as_json)]) == 65
    exported = json.loads(as_json.read_text("utf-8"), parse_float=Decimal)
    assert [e["event"] for e in exported] == ["frame"] * 3 + ["rejected"]
    assert exported[2]["values"]["remaining_amount"]["value"] == Decimal("198.56")


def test_fragments_of_any_size_give_the_same_frames() -> None:
    whole = [parse_line(t, n, None) for n, t in enumerate(RS485.read_text("utf-8").splitlines(), 1)]
    stream = [line for line in whole if line is not None]
    reference, ref_summary = replay(stream, "645")
    for size in (1, 3, 7):
        pieces = [
            Line(line.number, line.time, line.direction, line.data[i : i + size])
            for line in stream
            for i in range(0, len(line.data), size)
        ]
        for protocol in ("auto", "645"):
            events, summary = replay(pieces, protocol)
            assert [(e.line, e.direction, e.record.get("raw")) for e in events] == [
                (e.line, e.direction, e.record.get("raw")) for e in reference
            ]
            assert summary.as_dict() == ref_summary.as_dict()


# Corpus frames that frame correctly but carry content that does not decode (the corpus notes
# them: non-BCD energy digits, a change-baud byte sent without its +33h); the corpus's one
# 698.45 frame whose FCS does not verify is rejected by the framer.
UNDECODABLE = {"645": {"invalid-bcd": 2, "bad-baud-feature": 1}, "1376.2": {}, "698": {}}
REJECTED = {"645": {}, "1376.2": {}, "698": {"bad-fcs": 1}}


@pytest.mark.parametrize(
    ("protocols", "choice"),
    [(("dlt645-2007", "dlt645-1997"), "645"), (("q1376.2",), "1376.2"), (("dlt698.45",), "698")],
)
def test_every_corpus_frame_replays_once(protocols: tuple[str, ...], choice: str) -> None:
    entries = corpus_frames(*protocols)
    lines = [
        Line(n, None, "tx" if e["kind"].startswith("request") else "rx", bytes.fromhex(e["hex"]))
        for n, e in enumerate(entries, 1)
    ]
    for protocol in ("auto", choice):
        events, summary = replay(lines, protocol)
        assert dict(summary.rejected) == REJECTED[choice]
        assert dict(summary.errors) == UNDECODABLE[choice]
        # Every line gives exactly one frame or rejection, and a rejection only where the
        # corpus says the checksum does not hold.
        assert [e.line for e in events] == [line.number for line in lines]
        for event, entry in zip(events, entries, strict=True):
            assert (event.rejected is None) == entry["checksum_ok"]
            assert event.record["protocol"].startswith(entry["protocol"][:6])
            assert entry["hex"].endswith(event.record["raw"])
        # Every frame's bytes were accounted to it: only FE wake-up bytes are left over.
        assert summary.unframed_bytes == 0


def test_missing_capture_and_bad_export_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(tmp_path / "nothing.log")]) == 66
    assert "cannot read" in capsys.readouterr().err
    assert main(["replay", str(RS485), "--export", str(tmp_path / "x.txt")]) == 64
    assert main(["replay", str(RS485), "--export", str(tmp_path / "no" / "x.csv")]) == 73


def test_replay_as_a_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "replay", str(PLC), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 65
    assert proc.stderr == ""  # not a terminal: no progress count
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["frames_by_protocol"] == {"q1376.2": 5}
    assert summary["rejected_by_reason"] == {"bad-end": 1}


def test_progress_shows_only_on_a_terminal() -> None:
    master, slave = os.openpty()
    try:
        with (
            os.fdopen(slave, "w", encoding="utf-8", closefd=False) as tty,
            Progress("replay", total=200, unit="lines", stream=tty) as progress,
        ):
            assert progress.enabled
            for _ in range(200):
                progress.advance()
            assert progress.text() == "replay: 200/200 lines (100%)"
        shown = ""
        while select.select([master], [], [], 0.2)[0]:
            shown += os.read(master, 4096).decode()
        assert shown.startswith("\rreplay: 1/200 lines (0%)")
        assert shown.endswith("\r")
    finally:
        os.close(master)
        os.close(slave)

    ticks = iter([0.0, 0.05, 0.2])
    with (
        open(os.devnull, "w", encoding="utf-8") as piped,
        Progress("export", stream=piped) as quiet,
    ):
        assert not quiet.enabled
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    stepped = Progress("export", stream=Sink(), enabled=True, monotonic=lambda: next(ticks))  # type: ignore[arg-type]
    for _ in range(3):
        stepped.advance()
    # the second step came within the redraw interval and was not drawn
    assert lines == ["\rexport: 1", "\rexport: 3"]
