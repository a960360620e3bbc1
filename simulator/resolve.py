"""Turning a validated scenario file into plans: layering per-meter settings, expanding meter
groups, and checking every reference between tables, each error with its key path.

Per-meter settings are layered: built-in defaults < ``[defaults]`` < the ``[[meter_groups]]``
entry < the ``[[meters]]`` entry, and each value remembers which table set it so an error
points at the line to fix. A ``[low, high]`` range for ``scale`` or ``initial_kwh`` gives each
meter its own value, drawn from the scenario seed and the address, so every run is the same.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocols.bcd import Address
from protocols.dlt645.registry import Edition

from .config import MeterConfig, PrepaidConfig
from .district import BusConfig, PlcConfig
from .plan import PLC_BUS, MeterPlan, Scenario, ScenarioError, TimelineEntry
from .profile import COMMERCIAL_SHAPE, RESIDENTIAL_SHAPE, LoadProfile
from .schema import CommonFields, MeterFields, ScenarioSpec, TimelineSpec
from .tariff import FLAT_TOU, STANDARD_TOU, TouTable
from .timebase import Zone

BUILTIN_PROFILES: Final[Mapping[str, tuple[tuple[Decimal, ...], Decimal, Decimal]]] = {
    "residential": (RESIDENTIAL_SHAPE, Decimal("0.05"), Decimal("0.10")),
    "commercial": (COMMERCIAL_SHAPE, Decimal("0.20"), Decimal("0.08")),
    "flat": ((Decimal("0.50"),) * 24, Decimal(0), Decimal(0)),
}
BUILTIN_TOU: Final[Mapping[str, TouTable]] = {"standard": STANDARD_TOU, "flat": FLAT_TOU}

_METER_DEFAULTS: Final[Mapping[str, Any]] = {
    "edition": "2007", "phases": 1, "tou": "standard", "profile": "residential",
    "scale": (Decimal(1), Decimal(1)), "initial_kwh": (Decimal(0), Decimal(0)),
}  # fmt: skip
_MASTER_DEFAULTS: Final[Mapping[str, Any]] = {
    "edition": "2007", "phases": 3, "tou": "standard", "initial_kwh": (Decimal(0), Decimal(0)),
    "power_factor": Decimal("0.92"), "constant": 400,
}  # fmt: skip


def resolve(spec: ScenarioSpec, source: str = "") -> Scenario:
    """Plans from a validated file; raises :class:`ScenarioError` listing every problem."""
    return _Resolver(spec, source).resolve()


class _Resolver:
    def __init__(self, spec: ScenarioSpec, source: str) -> None:
        self.spec = spec
        self.source = source
        self.errors: list[str] = []
        self.zone = Zone(spec.simulation.timezone)
        self.seen: dict[str, str] = {}

    def error(self, message: str) -> None:
        if message not in self.errors:  # a group reports a bad setting once, not per meter
            self.errors.append(message)

    def resolve(self) -> Scenario:
        spec = self.spec
        try:
            ZoneInfo(spec.simulation.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            self.error(f"simulation.timezone: unknown time zone {spec.simulation.timezone!r}")
            raise ScenarioError(self.errors, self.source) from None
        start = spec.simulation.start
        assert isinstance(start, dt.datetime)
        if start.tzinfo is None:
            start = start.replace(tzinfo=self.zone.tz)
        buses = self._buses()
        profiles = self._profiles()
        tous = self._tous()
        meters = self._meters(buses, profiles, tous)
        master = self._master(buses, tous)
        timeline = self._timeline(meters, master, start)
        if not spec.meters and not spec.meter_groups:
            self.error("meters: the scenario has no meters (add [[meters]] or [[meter_groups]])")
        if self.errors:
            raise ScenarioError(self.errors, self.source)
        plc = None
        if spec.plc is not None:
            p = spec.plc
            plc = PlcConfig(
                p.port, p.baud, p.module_address, p.turnaround_ms, p.relay_delay_ms, dict(p.options)
            )
        return Scenario(
            name=spec.name,
            description=spec.description,
            start=start,
            zone=self.zone,
            seed=spec.simulation.seed,
            history_days=spec.simulation.history_days,
            slot_minutes=spec.simulation.slot_minutes,
            buses=tuple(buses.values()),
            plc=plc,
            meters=tuple(meters),
            master=master,
            line_loss=spec.master.line_loss if spec.master else Decimal(0),
            timeline=tuple(timeline),
            source=self.source,
        )

    def _buses(self) -> dict[str, BusConfig]:
        out: dict[str, BusConfig] = {}
        for i, b in enumerate(self.spec.buses):
            if b.name in out or b.name == PLC_BUS:
                why = "is reserved for the PLC module" if b.name == PLC_BUS else "is used twice"
                self.error(f"buses[{i}].name: bus name {b.name!r} {why}")
                continue
            out[b.name] = BusConfig(b.name, b.kind, b.baud, b.turnaround_ms)
        return out

    def _profiles(self) -> dict[str, LoadProfile]:
        slot = self.spec.simulation.slot_minutes
        out = {
            name: LoadProfile(shape, base, noise, slot)
            for name, (shape, base, noise) in BUILTIN_PROFILES.items()
        }
        for name, p in self.spec.profiles.items():
            out[name] = LoadProfile(tuple(p.hourly_kw), p.base_kw, p.noise, slot)
        return out

    def _tous(self) -> dict[str, TouTable]:
        out = dict(BUILTIN_TOU)
        for name, t in self.spec.tou.items():
            try:
                out[name] = TouTable.parse(t.periods)
            except ValueError as exc:
                self.error(f"tou.{name}.periods: {exc}")
        return out

    def _claim(self, address: str, key: str) -> bool:
        other = self.seen.get(address)
        if other is not None:
            self.error(f"{key}: address {address} is already used by {other}")
            return False
        self.seen[address] = key
        return True

    def _meters(
        self,
        buses: Mapping[str, BusConfig],
        profiles: Mapping[str, LoadProfile],
        tous: Mapping[str, TouTable],
    ) -> list[MeterPlan]:
        spec = self.spec
        base = _layer({}, _METER_DEFAULTS, "built-in defaults")
        base = _layer(base, spec.defaults.model_dump(exclude_none=True), "defaults")
        plans: list[MeterPlan] = []
        for i, m in enumerate(spec.meters):
            key = f"meters[{i}]"
            if not self._claim(m.address, key):
                continue
            layered = _layer(base, _fields(m), key)
            plan = self._plan(
                key=key,
                address=m.address,
                layered=layered,
                buses=buses,
                profiles=profiles,
                tous=tous,
            )
            if plan is not None:
                plans.append(plan)
        for i, g in enumerate(spec.meter_groups):
            key = f"meter_groups[{i}]"
            first = int(g.first_address)
            last = first + (g.count - 1) * g.step
            if last >= 10**12:
                self.error(f"{key}.count: addresses would run past 999999999999")
                continue
            layered = _layer(base, _fields(g), key)
            for n in range(g.count):
                address = f"{first + n * g.step:012d}"
                if self._claim(address, f"{key} (meter {n})"):
                    plan = self._plan(
                        key=key,
                        address=address,
                        layered=layered,
                        buses=buses,
                        profiles=profiles,
                        tous=tous,
                    )
                    if plan is not None:
                        plans.append(plan)
        return plans

    def _check_ref(
        self, layered: Mapping[str, tuple[Any, str]], name: str, known: Mapping[str, Any], what: str
    ) -> bool:
        value, origin = layered[name]
        if value not in known:
            names = ", ".join(sorted(known)) or "none"
            self.error(f"{origin}.{name}: unknown {what} {value!r} (known: {names})")
            return False
        return True

    def _bus_ref(
        self, key: str, layered: dict[str, tuple[Any, str]], buses: Mapping[str, BusConfig]
    ) -> bool:
        known: dict[str, Any] = dict(buses)
        if self.spec.plc is not None:
            known[PLC_BUS] = self.spec.plc
        if "bus" not in layered:
            if len(known) == 1:
                layered["bus"] = (next(iter(known)), key)
                return True
            names = ", ".join(sorted(known)) or "none; add [[buses]]"
            self.error(f"{key}.bus: which bus? (known: {names})")
            return False
        return self._check_ref(layered, "bus", known, "bus")

    def _plan(
        self,
        *,
        key: str,
        address: str,
        layered: dict[str, tuple[Any, str]],
        buses: Mapping[str, BusConfig],
        profiles: Mapping[str, LoadProfile],
        tous: Mapping[str, TouTable],
    ) -> MeterPlan | None:
        ok = self._bus_ref(key, layered, buses)
        ok = self._check_ref(layered, "profile", profiles, "load profile") and ok
        ok = self._check_ref(layered, "tou", tous, "time-of-use table") and ok
        values = {k: v for k, (v, _) in layered.items()}
        prepaid = values.get("prepaid")
        if prepaid is not None and values["edition"] == "1997":
            where = layered["prepaid"][1]
            self.error(f"{where}.prepaid: prepaid registers need edition 2007, not 1997")
            ok = False
        if not ok:
            return None
        rng = random.Random(seed_for(self.spec.simulation.seed, address, "draw"))
        config = _config(
            address=address,
            v=values,
            tous=tous,
            zone=self.zone,
            seed=self.spec.simulation.seed,
            buses=buses,
            rng=rng,
        )
        return MeterPlan(
            key, values["bus"], config, profiles[values["profile"]], _draw(values["scale"], rng)
        )

    def _master(
        self, buses: Mapping[str, BusConfig], tous: Mapping[str, TouTable]
    ) -> MeterPlan | None:
        m = self.spec.master
        if m is None:
            return None
        if not self._claim(m.address, "master"):
            return None
        layered = _layer(_layer({}, _MASTER_DEFAULTS, "built-in defaults"), _fields(m), "master")
        ok = self._bus_ref("master", layered, buses)
        ok = self._check_ref(layered, "tou", tous, "time-of-use table") and ok
        if not ok:
            return None
        values = {k: v for k, (v, _) in layered.items()}
        values["ct_ratio"] = m.ct_ratio
        rng = random.Random(seed_for(self.spec.simulation.seed, m.address, "draw"))
        config = _config(
            address=m.address,
            v=values,
            tous=tous,
            zone=self.zone,
            seed=self.spec.simulation.seed,
            buses=buses,
            rng=rng,
        )
        return MeterPlan("master", values["bus"], config, None, Decimal(1))

    def _timeline(
        self, meters: Sequence[MeterPlan], master: MeterPlan | None, start: dt.datetime
    ) -> list[TimelineEntry]:
        by_address = {p.address.digits: p for p in meters}
        if master is not None:
            by_address[master.address.digits] = master
        out: list[TimelineEntry] = []
        for i, e in enumerate(self.spec.timeline):
            key = f"timeline[{i}]"
            entry = self._entry(key, e, by_address, start)
            if entry is not None:
                out.append(entry)
        return out

    def _entry(
        self, key: str, e: TimelineSpec, by_address: Mapping[str, MeterPlan], start: dt.datetime
    ) -> TimelineEntry | None:
        ok = True
        targets: list[MeterPlan] = []
        for j, address in enumerate(e.addresses):
            where = f"{key}.meter" if e.meter is not None else f"{key}.meters[{j}]"
            plan = by_address.get(address)
            if plan is None:
                self.error(f"{where}: no meter {address} in the scenario")
                ok = False
                continue
            targets.append(plan)
            if e.kind == "balance_out" and plan.config.prepaid is None:
                self.error(f"{where}: balance_out needs a prepaid meter; {address} is not prepaid")
                ok = False
            if e.kind == "loss_of_voltage" and e.phase != "a" and plan.config.phases == 1:
                self.error(f"{key}.phase: meter {address} is single-phase; only phase 'a' exists")
                ok = False
        params = e.model_dump(exclude={"kind", "meter", "meters", "start", "end"})
        if e.kind == "wrong_address" and params.get("address") is not None:
            params["address"] = Address(params["address"])
        start_ref, end_ref = (
            self._localise(e.start),
            None if e.end is None else self._localise(e.end),
        )
        entry = TimelineEntry(
            key, e.kind, tuple(p.address for p in targets), start_ref, end_ref, params
        )
        try:
            entry.build(start)
        except (ValueError, TypeError) as exc:
            self.error(f"{key}.end: {exc}")
            ok = False
        return entry if ok else None

    def _localise(self, ref: dt.datetime | dt.timedelta) -> dt.datetime | dt.timedelta:
        if isinstance(ref, dt.datetime) and ref.tzinfo is None:
            return ref.replace(tzinfo=self.zone.tz)
        return ref


def _fields(model: CommonFields) -> dict[str, Any]:
    keys = (
        set(MeterFields.model_fields)
        if isinstance(model, MeterFields)
        else set(CommonFields.model_fields)
    )
    return {k: v for k, v in model.model_dump(exclude_none=True).items() if k in keys}


def _layer(
    base: Mapping[str, tuple[Any, str]], values: Mapping[str, Any], origin: str
) -> dict[str, tuple[Any, str]]:
    """``base`` with ``values`` on top; every value remembers which table set it."""
    out = dict(base)
    for k, v in values.items():
        out[k] = (v, origin)
    return out


def seed_for(scenario_seed: int, address: str, salt: str) -> int:
    digest = hashlib.blake2b(f"{scenario_seed}:{address}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _draw(value: tuple[Decimal, Decimal], rng: random.Random) -> Decimal:
    low, high = sorted(value)
    if low == high:
        return low
    return Decimal(rng.randint(int(low * 100), int(high * 100))).scaleb(-2)


def _config(
    *,
    address: str,
    v: Mapping[str, Any],
    tous: Mapping[str, TouTable],
    zone: Zone,
    seed: int,
    buses: Mapping[str, BusConfig],
    rng: random.Random,
) -> MeterConfig:
    prepaid = v.get("prepaid")
    bus = buses.get(v["bus"])
    return MeterConfig(
        address=Address(address),
        edition=Edition.V2007 if v["edition"] == "2007" else Edition.V1997,
        phases=v["phases"],
        tou=tous[v["tou"]],
        zone=zone,
        nominal_voltage=v.get("voltage", Decimal("220.0")),
        power_factor=v.get("power_factor", Decimal("0.95")),
        initial_kwh=_draw(v["initial_kwh"], rng),
        initial_reverse_kwh=v.get("initial_reverse_kwh", Decimal(0)),
        prepaid=None
        if prepaid is None
        else PrepaidConfig(prepaid["kind"], prepaid["price"], prepaid["balance"]),
        clock_offset_s=v.get("clock_offset_s", Decimal(0)),
        clock_drift_s_per_day=v.get("clock_drift_s_per_day", Decimal(0)),
        password=v.get("password", "000000"),
        settlement_day=v.get("settlement_day", 1),
        battery_low=v.get("battery_low", False),
        active_constant=v.get("constant", 1200),
        baud=bus.baud if bus is not None else (1200 if v["edition"] == "1997" else 2400),
        ct_ratio=v.get("ct_ratio", 1),
        seed=seed_for(seed, address, "jitter"),
        reply_preamble=v.get("reply_preamble", 4),
    )
