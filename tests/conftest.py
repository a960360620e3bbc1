"""Shared fixtures: the captured-frame corpus from ../shared/frames."""

from __future__ import annotations

import json
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
