"""Device profiles: each node's compute speed, links and daily availability.

A profile gives every node a device class (a phone or a laptop) and draws,
from the job's seed alone, that node's own:

- compute speed, samples per second: log-normal around the class's median;
- uplink and downlink rates: log-uniform over the class's range (median
  the range's geometric mean, sqrt(low * high));
- availability: online in a daily window of ``online_hours`` opening at the
  local hour ``online_from``, the node's local clock offset from the
  simulation's by a phase drawn uniformly in +-``phase_hours``; while online
  it still drops a round with probability ``dropout``.

The presets' numbers (medians in brackets):

========  ==============  ============  ==============  ======================  =======
class     samples/s       up Mbit/s     down Mbit/s     online (local)          dropout
========  ==============  ============  ==============  ======================  =======
phone     20, sigma 0.5   5-20 (10)     30-100 (54.8)   22:00 for 8 h           0.05
laptop    100, sigma 0.4  20-100 (44.7) 20-100 (44.7)   09:00 for 9 h           0.02
========  ==============  ============  ==============  ======================  =======

A phone trains slowly and only at night, on its charger and Wi-Fi, with an
asymmetric link; a laptop is faster, symmetric, and online in working hours.
``phones`` and ``laptops`` are all of one class; ``mixed`` is ``phone_share``
(0.7) phones, the rest laptops (the count rounded, the nodes chosen by the
seed). The config's ``[simulation.phones]`` and ``[simulation.laptops]``
override any number.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from tessera.config import DeviceClassSection, SimulationSection
from tessera.runtime.sim.devices import Availability, DeviceModel

MBIT = 1e6 / 8  # bytes per second in one Mbit/s


@dataclass(frozen=True)
class DeviceClass:
    """One class of device: the distributions its nodes are drawn from."""

    name: str
    samples_per_second: float  # median compute speed (log-normal)
    speed_sigma: float  # its log-spread
    up_mbps: tuple[float, float]  # uplink, log-uniform over [low, high]
    down_mbps: tuple[float, float]
    online_from: float  # local hour its daily window opens
    online_hours: float  # the window's length; 24: always online
    dropout: float  # per round, while online


PHONE = DeviceClass("phone", 20.0, 0.5, (5.0, 20.0), (30.0, 100.0), 22.0, 8.0, 0.05)
LAPTOP = DeviceClass("laptop", 100.0, 0.4, (20.0, 100.0), (20.0, 100.0), 9.0, 9.0, 0.02)


@dataclass(frozen=True)
class Profiles:
    """Every node's drawn profile, in node order."""

    classes: tuple[DeviceClass, ...]
    kind: npt.NDArray[np.int64]  # each node's index into ``classes``
    samples_per_second: npt.NDArray[np.float64]
    up_rate: npt.NDArray[np.float64]  # bytes per second
    down_rate: npt.NDArray[np.float64]
    opens: npt.NDArray[np.float64]  # the hour of the simulation's day its window opens
    hours: npt.NDArray[np.float64]
    dropout: npt.NDArray[np.float64]


def mix(profile: str, phone_share: float = 0.7) -> tuple[tuple[DeviceClass, float], ...]:
    """A preset's device classes and the share of the nodes each is."""
    if profile == "phones":
        return ((PHONE, 1.0),)
    if profile == "laptops":
        return ((LAPTOP, 1.0),)
    if profile == "mixed":
        return ((PHONE, phone_share), (LAPTOP, 1.0 - phone_share))
    raise ValueError(f"unknown device profile {profile!r}: phones, laptops or mixed")


def _counts(n: int, shares: list[float]) -> list[int]:
    """``n`` split by ``shares``, rounded by largest remainder (the total is ``n``)."""
    exact = [n * s / sum(shares) for s in shares]
    counts = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(shares)), key=lambda i: counts[i] - exact[i])
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def draw(
    n_nodes: int,
    classes: tuple[tuple[DeviceClass, float], ...],
    *,
    seed: int,
    phase_hours: float = 12.0,
) -> Profiles:
    """Every node's profile, from ``seed`` alone (the same seed, the same profiles)."""
    rng = np.random.default_rng([seed, 0xDE71CE])
    counts = _counts(n_nodes, [share for _, share in classes])
    kind = rng.permutation(np.repeat(np.arange(len(classes)), counts)).astype(np.int64)
    cls = [c for c, _ in classes]

    def per_node(values: list[float]) -> npt.NDArray[np.float64]:
        return np.asarray(values, dtype=np.float64)[kind]

    def log_uniform(ranges: list[tuple[float, float]]) -> npt.NDArray[np.float64]:
        low, high = (np.log(per_node([r[i] for r in ranges])) for i in (0, 1))
        drawn: npt.NDArray[np.float64] = np.exp(rng.uniform(0.0, 1.0, n_nodes) * (high - low) + low)
        return drawn

    sps = per_node([c.samples_per_second for c in cls]) * np.exp(
        per_node([c.speed_sigma for c in cls]) * rng.standard_normal(n_nodes)
    )
    up = log_uniform([c.up_mbps for c in cls]) * MBIT
    down = log_uniform([c.down_mbps for c in cls]) * MBIT
    phase = rng.uniform(-phase_hours, phase_hours, n_nodes)
    return Profiles(
        classes=tuple(cls),
        kind=kind,
        samples_per_second=sps,
        up_rate=up,
        down_rate=down,
        opens=(per_node([c.online_from for c in cls]) + phase) % 24.0,
        hours=per_node([c.online_hours for c in cls]),
        dropout=per_node([c.dropout for c in cls]),
    )


def device_model(
    profiles: Profiles,
    *,
    seed: int,
    day_seconds: float = 86400.0,
    start_hour: float = 0.0,
    aggregator_failure: float = 0.0,
) -> DeviceModel:
    """The simulator's devices for ``profiles``: speeds in samples per second."""
    return DeviceModel(
        speed=profiles.samples_per_second,
        dropout=profiles.dropout,
        samples_per_second=1.0,
        seed=seed,
        aggregator_failure=aggregator_failure,
        up_rate=profiles.up_rate,
        down_rate=profiles.down_rate,
        availability=Availability(
            opens=profiles.opens,
            hours=profiles.hours,
            day_seconds=day_seconds,
            start_hour=start_hour,
        ),
    )


def _overridden(cls: DeviceClass, section: DeviceClassSection | None) -> DeviceClass:
    if section is None:
        return cls
    return replace(cls, **section.model_dump(exclude_none=True))


def from_config(n_nodes: int, sim: SimulationSection, seed: int) -> DeviceModel:
    """The devices ``[simulation]`` names with ``profile`` (which must be set)."""
    if sim.profile is None:
        raise ValueError("no device profile in [simulation]")
    overrides = {PHONE.name: sim.phones, LAPTOP.name: sim.laptops}
    classes = tuple(
        (_overridden(cls, overrides[cls.name]), share)
        for cls, share in mix(sim.profile, sim.phone_share)
    )
    profiles = draw(n_nodes, classes, seed=seed, phase_hours=sim.phase_hours)
    return device_model(
        profiles,
        seed=seed,
        day_seconds=sim.day_seconds,
        start_hour=sim.day_start_hour,
        aggregator_failure=sim.aggregator_failure,
    )
