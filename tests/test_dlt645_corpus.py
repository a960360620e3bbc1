"""Every DL/T 645 frame in the shared corpus decodes to what its source stated."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest

from gateway.cli import main
from protocols.dlt645 import Dlt645Framer, decode_frame
from protocols.dlt645.describe import describe_frame
from protocols.errors import FrameError
from protocols.framing import NEED_DATA

from .conftest import corpus_frames, frame_id

FRAMES_645 = corpus_frames("dlt645-2007", "dlt645-1997")
GOOD = [e for e in FRAMES_645 if e["checksum_ok"]]
BAD = [e for e in FRAMES_645 if not e["checksum_ok"]]
# Frames whose checksum is fine but whose content is invalid, as the corpus notes say.
INVALID_CONTENT = {"invalid BCD", "invalid BCD year A2", "unscrambled data byte; invalid"}


def _value_with_unit(values: dict[str, Any], unit: str) -> Decimal:
    found = [v["value"] for v in values.values() if v["unit"] == unit and v["value"] is not None]
    assert found, f"no value in {unit} among {values}"
    return Decimal(str(found[0]))


def check_stated(entry: dict[str, Any], d: dict[str, Any]) -> None:
    stated = entry["decoded"]
    assert d["address"] == stated["address"]
    assert d["control"] == stated["control"]
    assert d["protocol"] == entry["protocol"]
    if "di" in stated:
        assert d["di"] == stated["di"]
    note = stated.get("note", "")
    if note in INVALID_CONTENT:
        assert isinstance(d["error"], str), f"an invalid frame must be reported: {d}"
        return
    assert not isinstance(d["error"], str), d["error"]
    values = d["values"]
    for key, expected in stated.items():
        match key:
            case "energy_kWh":
                assert _value_with_unit(values, "kWh") == Decimal(str(expected))
            case "voltage_V" | "Ua_V":
                assert _value_with_unit(values, "V") == Decimal(str(expected))
            case "value_stated":
                assert _value_with_unit(values, "V") == Decimal("100")
            case "raw_data_minus_33":
                assert d["data"].endswith(expected)
            case "Ub" | "Uc":
                assert values[f"voltage_{key[1].lower()}"]["value"] is None
            case "balance_yuan":
                assert _value_with_unit(values, "CNY") == Decimal(str(expected))
            case "date":
                assert values["date"]["value"] == expected
            case "weekday":
                assert values["weekday"]["value"] == expected
            case "time" if d["function"] == "broadcast_time":
                assert d["time"] == expected
            case "time":
                assert values["time"]["value"] == expected
            case "error_word" | "error_minus_33":
                assert d["error_word"] == expected
                assert isinstance(d["error"], list)
            case "address_in_data":
                assert d["address_in_data"] == expected
            case "baud":
                assert d["baud"] == expected
            case "baud_feature":
                assert d["data"] == "08"
            case "rate_feature_byte":
                assert d["data"].endswith(expected)
                assert values["baud_1"]["value"] == 1200
            case "password_level":
                assert d["password_level"] == expected
            case "password" | "operator":
                assert d[key] == expected
            case "N1":
                assert d["command_code"] == expected
            case "valid_until":
                assert d["valid_until"] == expected
            case "extra":
                assert d["extra"] == expected


@pytest.mark.parametrize("entry", GOOD, ids=frame_id)
def test_corpus_frame_decodes_as_stated(entry: dict[str, Any]) -> None:
    frame = decode_frame(bytes.fromhex(entry["hex"]))
    check_stated(entry, describe_frame(frame))


@pytest.mark.parametrize("entry", GOOD, ids=frame_id)
def test_cli_json_agrees_with_corpus(
    entry: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["decode", "--json", entry["hex"]])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    check_stated(entry, d)
    invalid = entry["decoded"].get("note", "") in INVALID_CONTENT
    assert status == (65 if invalid else 0)


def _rejected(raw: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(raw)
    framer = Dlt645Framer()
    framer.feed(raw)
    framer.feed_eof()
    assert list(framer.frames()) == []
    assert framer.statistics().rejected_total >= 1


def test_corpus_frames_marked_bad_are_rejected() -> None:
    for entry in BAD:
        _rejected(bytes.fromhex(entry["hex"]))


@pytest.mark.parametrize("entry", GOOD, ids=frame_id)
def test_corrupted_checksum_is_rejected(entry: dict[str, Any]) -> None:
    raw = bytearray(bytes.fromhex(entry["hex"]))
    raw[-2] ^= 0x01
    _rejected(bytes(raw))


@pytest.mark.parametrize("entry", GOOD, ids=frame_id)
def test_every_strict_prefix_needs_more_data(entry: dict[str, Any]) -> None:
    raw = bytes.fromhex(entry["hex"])
    for cut in range(len(raw)):
        framer = Dlt645Framer()
        framer.feed(raw[:cut])
        assert framer.next_event() is NEED_DATA, f"prefix of {cut} bytes"
        assert framer.statistics().rejected_total == 0
    framer = Dlt645Framer()
    framer.feed(raw)
    frame = framer.next_frame()
    assert frame == decode_frame(raw)


def test_cli_decodes_a_stream_with_noise_and_several_frames(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = "12 34 56 " + GOOD[1]["hex"] + " 00 " + GOOD[2]["hex"].replace(" ", "")
    assert main(["decode", "--json", stream]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [d["address"] for d in lines] == [
        GOOD[1]["decoded"]["address"],
        GOOD[2]["decoded"]["address"],
    ]


def test_cli_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD[3]["hex"] + "\n"))
    assert main(["decode", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["di"] == GOOD[3]["decoded"]["di"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8B 16", "bad-checksum"),
        ("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33", "truncated"),
    ],
)
def test_cli_names_the_reason_and_exits_65(
    text: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", "--json", text]) == 65
    d = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert d["error"].startswith(reason)


@pytest.mark.parametrize("text", ["zz", "123", ""])
def test_cli_rejects_what_is_not_hex(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", text]) == 65
    capsys.readouterr()


def test_cli_text_output_names_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    hex_ = "68 12 00 00 00 10 20 68 91 0A 33 32 34 35 89 55 32 32 32 32 21 16"
    assert main(["decode", hex_]) == 0
    out = capsys.readouterr().out
    assert "voltage_a                  225.6 V" in out
    assert "voltage_b                  absent" in out
    assert "address                    201000000012" in out


OTHER = corpus_frames("q1376.2", "dlt698.45")


@pytest.mark.parametrize("entry", OTHER, ids=frame_id)
def test_cli_decodes_1376_and_698_frames(
    entry: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["decode", "--json", entry["hex"]])
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert records[0]["protocol"] == entry["protocol"]
    if entry["checksum_ok"]:
        assert status == 0
        assert len(records) == 1
        assert records[0]["error"] is None
        if "C" in entry["decoded"]:
            assert records[0]["control"] == entry["decoded"]["C"]
        if "afn" in entry["decoded"]:
            assert records[0]["afn"] == entry["decoded"]["afn"]
            assert records[0]["fn"] == entry["decoded"]["fn"]
    else:
        assert status == 65
        assert isinstance(records[0]["error"], str)
