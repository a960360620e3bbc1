"""Shared fixtures: the captured-frame corpus from ../shared/frames."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS_PATH = ROOT.parent / "shared" / "frames" / "corpus.json"


def load_corpus() -> list[dict[str, Any]]:
    if not CORPUS_PATH.exists():
        pytest.fail(f"frame corpus not found at {CORPUS_PATH} (shared/ must sit beside the repo)")
    entries: list[dict[str, Any]] = json.loads(CORPUS_PATH.read_text(encoding="utf-8"))
    return entries


def corpus_frames(*protocols: str) -> list[dict[str, Any]]:
    return [e for e in load_corpus() if e["protocol"] in protocols]


def frame_id(entry: dict[str, Any]) -> str:
    return f"{entry['kind']}:{entry['hex'][:48]}"


@pytest.fixture(autouse=True)
def _no_thread_left_running() -> Iterator[None]:
    """A test must not leave a non-daemon thread behind (an aiosqlite connection or a server
    never closed): the interpreter would wait for it at exit and the run would hang there,
    after every test passed. Fail the test that leaked it, naming the thread."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if left:
        pytest.fail(f"the test left thread(s) running: {', '.join(t.name for t in left)}")


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Never hang at exit on a leaked thread: the test that leaked it has already failed, so
    report and leave with the run's status instead of waiting for the thread forever."""
    left = [
        t
        for t in threading.enumerate()
        if t.is_alive() and not t.daemon and t is not threading.main_thread()
    ]
    if left:
        names = ", ".join(t.name for t in left)
        sys.stderr.write(f"threads still running at the end of the session: {names}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit((_EXIT_STATUS[-1] if _EXIT_STATUS else 0) or 1)
