"""Instantaneous quantities a meter shows (voltage, current, power, power factor, frequency...).

Computed when asked, from the load at that instant, so they always agree with the energy the
meter integrates: I = P / (U x PF), Q = P x tan(phi), S = P / PF. Voltage, frequency and
temperature carry a small jitter that is fixed within a load slot (frequency is the same for
the whole district). The anomalies that concern measurement are applied here: a phase with
loss of voltage shows a low voltage and correspondingly low power while its current flows,
reverse energy flips the signs, an open relay or a dead supply shows no current.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from protocols.dlt645.formats import ABSENT

from .profile import POWER_UNITS_PER_KW

PHASES: Final = ("a", "b", "c")
_MAX_POWER: Final = Decimal("79.9999")  # XX.XXXX kW with a sign bit
_MAX_CURRENT: Final = Decimal("799.999")
_Q1: Final = Decimal("0.1")
_Q3: Final = Decimal("0.001")
_Q4: Final = Decimal("0.0001")


def split_phases(units: int, phases: int) -> list[int]:
    """Share a load over the phases; phase A takes the remainder so the parts add up exactly."""
    if phases == 1:
        return [units]
    third = units // 3
    return [units - 2 * third, third, third]


@dataclass(frozen=True, slots=True)
class Instantaneous:
    """Per-phase tuples are (A, B, C) with ``None`` for phases a single-phase meter lacks."""

    voltage: tuple[Decimal | None, ...]
    current: tuple[Decimal | None, ...]
    active_power: Decimal
    active_power_phase: tuple[Decimal | None, ...]
    reactive_power: Decimal
    reactive_power_phase: tuple[Decimal | None, ...]
    apparent_power: Decimal
    apparent_power_phase: tuple[Decimal | None, ...]
    power_factor: Decimal
    power_factor_phase: tuple[Decimal | None, ...]
    phase_angle: tuple[Decimal | None, ...]
    neutral_current: Decimal
    frequency: Decimal
    temperature: Decimal

    def values(self) -> Mapping[str, Any]:
        """Registry value names (``voltage_a``, ``active_power_total``...) -> value or ABSENT."""
        out: dict[str, Any] = {
            "active_power_total": self.active_power,
            "reactive_power_total": self.reactive_power,
            "apparent_power_total": self.apparent_power,
            "power_factor_total": self.power_factor,
            "neutral_current": self.neutral_current,
            "frequency": self.frequency,
            "temperature": self.temperature,
        }
        for name, per_phase in (
            ("voltage", self.voltage),
            ("current", self.current),
            ("active_power", self.active_power_phase),
            ("reactive_power", self.reactive_power_phase),
            ("apparent_power", self.apparent_power_phase),
            ("power_factor", self.power_factor_phase),
            ("phase_angle", self.phase_angle),
        ):
            for p, v in zip(PHASES, per_phase, strict=True):
                out[f"{name}_{p}"] = ABSENT if v is None else v
        return out


def _clamp(value: Decimal, limit: Decimal) -> Decimal:
    return max(-limit, min(limit, value))


def measure(
    *,
    load_units: int,
    phases: int,
    nominal_voltage: Decimal,
    power_factor: Decimal,
    voltage_jitter: tuple[int, int, int],
    frequency_jitter: int,
    temperature_jitter: int,
    low_voltage: Mapping[int, Decimal],
    reverse: bool,
) -> Instantaneous:
    """``voltage_jitter`` is per phase in permille, ``frequency_jitter`` in 0.01 Hz,
    ``temperature_jitter`` in 0.1 degC; ``low_voltage`` maps a phase index to its voltage ratio."""
    sign = -1 if reverse else 1
    parts = split_phases(load_units, phases)
    tan_phi = Decimal(math.sqrt(max(0.0, 1 / float(power_factor) ** 2 - 1)))
    angle = Decimal(math.degrees(math.acos(float(power_factor)))) + (180 if reverse else 0)
    volts: list[Decimal | None] = [None, None, None]
    amps: list[Decimal | None] = [None, None, None]
    p_ph: list[Decimal | None] = [None, None, None]
    q_ph: list[Decimal | None] = [None, None, None]
    s_ph: list[Decimal | None] = [None, None, None]
    pf_ph: list[Decimal | None] = [None, None, None]
    ang_ph: list[Decimal | None] = [None, None, None]
    for i, units in enumerate(parts):
        true_v = nominal_voltage * (1000 + voltage_jitter[i]) / 1000
        shown_v = true_v * low_voltage.get(i, Decimal(1))
        volts[i] = shown_v.quantize(_Q1)
        kw = Decimal(units) / POWER_UNITS_PER_KW
        current = (kw * 1000 / (true_v * power_factor)).quantize(_Q3) if units else Decimal("0.000")
        amps[i] = _clamp(sign * current, _MAX_CURRENT)
        shown_kw = shown_v * current * power_factor / 1000
        p_ph[i] = _clamp(sign * shown_kw.quantize(_Q4), _MAX_POWER)
        q_ph[i] = _clamp(sign * (shown_kw * tan_phi).quantize(_Q4), _MAX_POWER)
        s_ph[i] = _clamp(sign * (shown_kw / power_factor).quantize(_Q4), _MAX_POWER)
        pf_ph[i] = (sign * power_factor).quantize(_Q3) if units else Decimal("1.000")
        ang_ph[i] = angle.quantize(_Q1) if units else Decimal("0.0")
    present = [v for v in p_ph if v is not None]
    total_p = _clamp(sum(present, Decimal(0)), _MAX_POWER)
    total_q = _clamp(sum((v for v in q_ph if v is not None), Decimal(0)), _MAX_POWER)
    total_s = _clamp(sum((v for v in s_ph if v is not None), Decimal(0)), _MAX_POWER)
    magnitudes = [abs(a) for a in amps if a is not None]
    neutral = magnitudes[0] if phases == 1 else max(magnitudes) - min(magnitudes)
    return Instantaneous(
        voltage=tuple(volts),
        current=tuple(amps),
        active_power=total_p,
        active_power_phase=tuple(p_ph),
        reactive_power=total_q,
        reactive_power_phase=tuple(q_ph),
        apparent_power=total_s,
        apparent_power_phase=tuple(s_ph),
        power_factor=(sign * power_factor).quantize(_Q3) if load_units else Decimal("1.000"),
        power_factor_phase=tuple(pf_ph),
        phase_angle=tuple(ang_ph),
        neutral_current=neutral,
        frequency=(Decimal(5000 + frequency_jitter) / 100).quantize(Decimal("0.01")),
        temperature=(Decimal(250 + temperature_jitter) / 10).quantize(_Q1),
    )
