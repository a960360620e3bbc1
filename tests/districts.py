"""Test helpers: a simulated district and a gateway configuration that matches it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from gateway.demo import config_for
from simulator.scenario import Scenario, parse_scenario


def scenario_from(text: str) -> Scenario:
    return parse_scenario(tomllib.loads(text), "<test scenario>")


def config_text(scenario: Scenario, spool: Path, **kwargs: Any) -> str:
    return config_for(scenario, spool, gateway_id="gw-test", **kwargs)


def gateway_config(scenario: Scenario, spool: Path, **kwargs: Any) -> Config:
    """The configuration of :func:`config_text`, validated."""
    return parse_config(config_text(scenario, spool, **kwargs), "<test config>")
