"""The envelope and the key file, without I/O beyond the key file itself: the canonical
encoding a head-end signs, hex and base64 signatures, the clock window, and a key file that
is missing, readable by others or invalid stopping the start (exit 78) without showing a secret."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main
from gateway.commands import CommandRejectedError, Reason, canonical, load_keys, sign
from gateway.commands.envelope import check_times, parse, verify
from gateway.commands.keys import KeyFileError

T0 = dt.datetime(2025, 6, 3, 2, 0, tzinfo=dt.UTC)
SECRET = b"0123456789abcdef0123456789abcdef"


def envelope(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "schema": "amigw.cmd/1",
        "id": "c-1",
        "gateway": "gw-0001",
        "type": "read",
        "issued": "2025-06-03T10:00:00+08:00",
        "expires": "2025-06-03T10:05:00+08:00",
        "key": "he-1",
        "params": {"meters": ["000000130495"], "items": ["电能", "00010000"]},
    }
    body.update(changes)
    return body


def test_canonical_encoding_is_sorted_compact_utf8_and_ignores_the_signature() -> None:
    body = envelope(signature="whatever")
    text = canonical(body).decode()
    assert text.startswith('{"expires":"2025-06-03T10:05:00+08:00","gateway":"gw-0001"')
    assert '"items":["电能","00010000"]' in text  # UTF-8, not \\u escapes
    assert " " not in text
    assert "signature" not in text
    # The same bytes whatever order and spacing the head-end used to send it.
    shuffled = json.loads(json.dumps(dict(reversed(list(body.items()))), indent=2))
    assert canonical(shuffled) == canonical(body)


def test_hex_and_base64_signatures_verify_and_a_changed_byte_does_not() -> None:
    body = envelope()
    digest = hmac.new(SECRET, canonical(body), hashlib.sha256).digest()
    assert sign(body, SECRET) == digest.hex()
    for text in (digest.hex(), digest.hex().upper(), base64.b64encode(digest).decode()):
        verify(parse(json.dumps({**body, "signature": text}).encode(), 4096), SECRET)
    tampered = {**body, "signature": digest.hex(), "id": "c-2"}
    with pytest.raises(CommandRejectedError) as info:
        verify(parse(json.dumps(tampered).encode(), 4096), SECRET)
    assert info.value.reason is Reason.BAD_SIGNATURE


@given(st.binary(min_size=0, max_size=64))
def test_any_signature_text_but_the_right_one_is_refused(raw: bytes) -> None:
    body = envelope()
    guess = raw.hex() or "00"
    if guess == sign(body, SECRET):
        return
    with pytest.raises(CommandRejectedError):
        verify(parse(json.dumps({**body, "signature": guess}).encode(), 4096), SECRET)


@pytest.mark.parametrize(
    ("issued_offset_s", "lifetime_s", "reason"),
    [
        (301, 60, Reason.CLOCK_WINDOW),
        (-301, 600, Reason.CLOCK_WINDOW),
        (-120, 60, Reason.EXPIRED),
        (0, 0, Reason.BAD_PARAMETERS),
        (0, 7200, Reason.BAD_PARAMETERS),
    ],
)
def test_clock_window_expiry_and_lifetime(
    issued_offset_s: int, lifetime_s: int, reason: Reason
) -> None:
    issued = T0 + dt.timedelta(seconds=issued_offset_s)
    body = envelope(
        issued=issued.isoformat(),
        expires=(issued + dt.timedelta(seconds=lifetime_s)).isoformat(),
        signature="00",
    )
    with pytest.raises(CommandRejectedError) as info:
        check_times(parse(json.dumps(body).encode(), 4096), T0, 300, 3600)
    assert info.value.reason is reason


def test_within_the_window_passes() -> None:
    body = envelope(issued="2025-06-03T09:56:00+08:00", expires="2025-06-03T10:01:00+08:00")
    check_times(parse(json.dumps({**body, "signature": "00"}).encode(), 4096), T0, 300, 3600)


# -- the key file ----------------------------------------------------------------------------


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_keys_load_with_their_options_and_never_show_the_secret(tmp_path: Path) -> None:
    path = key_file(
        tmp_path,
        '[keys.a]\nsecret = "' + "ab" * 32 + '"\n'
        '[keys.b]\nsecret = "a text secret of more than thirty-two characters"\n'
        'single_phase = true\ntypes = ["ping"]\n',
    )
    ring = load_keys(path)
    a, b = ring.get("a"), ring.get("b")
    assert a is not None
    assert b is not None
    assert a.secret == bytes.fromhex("ab" * 32)
    assert b.single_phase
    assert {t.value for t in b.types} == {"ping"}
    assert "thirty-two" not in repr(ring)
    assert "abab" not in repr(ring)


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ('[keys.a]\nsecret = "' + "ab" * 32 + '"\n', 0o644, "readable by others"),
        ('[keys.a]\nsecret = "short-secret-value"\n', 0o600, "32+ characters"),
        ('[keys.a]\nsecret = "' + "ab" * 32 + '"\ntypes = ["reboot"]\n', 0o600, "types"),
        ("[other]\nx = 1\n", 0o600, "[keys.<id>]"),
        ('[keys.a]\nsecret = "' + "ab" * 32 + '"\nextra = 1\n', 0o600, "unknown setting"),
    ],
)
def test_an_unusable_key_file_is_refused(
    tmp_path: Path, text: str, mode: int, message: str
) -> None:
    with pytest.raises(KeyFileError) as info:
        load_keys(key_file(tmp_path, text, mode))
    assert message in str(info.value)
    assert "short-secret-value" not in str(info.value)


def test_a_missing_or_world_readable_key_file_stops_amigw_run_with_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "amigw.toml"
    keys = tmp_path / "keys.toml"
    config.write_text(
        f'[gateway]\nid = "gw-1"\n[spool]\npath = "{tmp_path / "s.sqlite"}"\n'
        f'[commands]\nenabled = true\nkey_file = "{keys}"\n',
        encoding="utf-8",
    )
    assert main(["check-config", str(config)]) == 78
    assert "does not exist" in capsys.readouterr().err
    key_file(tmp_path, '[keys.a]\nsecret = "' + "cd" * 32 + '"\n', 0o640)
    assert main(["run", "-c", str(config)]) == 78
    err = capsys.readouterr().err
    assert "commands" in err
    assert "readable by others" in err
    assert "cdcd" not in err


# -- docs/commands.md ------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "commands.md"


def test_documented_examples_validate() -> None:
    from .test_uplink_payloads import assert_valid  # noqa: PLC0415

    blocks = re.findall(r"```json\n// schema: ([a-z-]+)\n(.*?)```", DOC.read_text(), re.S)
    assert {name for name, _ in blocks} == {"cmd", "cmd-result"}
    for name, body in blocks:
        assert_valid(name, json.loads(body))


def test_the_documented_python_signs_what_the_gateway_verifies() -> None:
    from .test_uplink_payloads import assert_valid  # noqa: PLC0415

    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)  # the documentation's own snippet
    payload = scope["signed"]("ping", {}, gateway="gw-0001", key_id="he-1", secret=SECRET)
    assert_valid("cmd", payload)
    envelope = parse(payload, 4096)
    verify(envelope, SECRET)
    check_times(envelope, dt.datetime.now(dt.UTC), 300, 3600)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is not installed")
def test_the_documented_shell_signs_what_the_gateway_verifies() -> None:
    from .test_uplink_payloads import assert_valid  # noqa: PLC0415

    code = re.search(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    lines = code.group(1).splitlines()
    publish = next(line for line in lines if line.startswith("mosquitto_pub"))
    message = publish.split(" -m ", 1)[1]
    script = "\n".join(
        [*(line for line in lines if not line.startswith("mosquitto_")), f"printf '%s' {message}"]
    )
    out = subprocess.run(
        ["bash", "-c", script], env={"SECRET_HEX": SECRET.hex(), "PATH": os.environ["PATH"]},
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    payload = out.stdout.encode()
    assert_valid("cmd", payload)
    envelope = parse(payload, 4096)
    verify(envelope, SECRET)
    check_times(envelope, dt.datetime.now(dt.UTC), 300, 3600)
