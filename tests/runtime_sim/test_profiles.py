"""Device profiles: each node's speed, links and availability, drawn from the job's seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.config import parse_config
from tessera.errors import ConfigError
from tessera.runtime.sim import profiles
from tessera.runtime.sim.devices import Availability
from tessera.runtime.sim.profiles import LAPTOP, MBIT, PHONE, draw, mix


def arrays(p: profiles.Profiles) -> list[np.ndarray]:
    return [p.kind, p.samples_per_second, p.up_rate, p.down_rate, p.opens, p.hours, p.dropout]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    preset=st.sampled_from(["phones", "laptops", "mixed"]),
    share=st.floats(0, 1),
)
def test_profiles_are_a_function_of_the_seed(seed, n, preset, share) -> None:
    a = draw(n, mix(preset, share), seed=seed)
    b = draw(n, mix(preset, share), seed=seed)
    for x, y in zip(arrays(a), arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert all(len(x) == n for x in arrays(a))
    assert (a.up_rate > 0).all() and (a.down_rate > 0).all() and (a.samples_per_second > 0).all()
    assert ((a.opens >= 0) & (a.opens < 24)).all()
    if preset == "mixed":  # the share, rounded: phones first in the mix
        assert abs(int((a.kind == 0).sum()) - n * share) <= 1


def test_another_seed_draws_other_profiles() -> None:
    a, b = draw(200, mix("mixed"), seed=1), draw(200, mix("mixed"), seed=2)
    assert not np.array_equal(a.up_rate, b.up_rate)
    assert not np.array_equal(a.kind, b.kind)


@pytest.mark.parametrize("cls", [PHONE, LAPTOP])
def test_a_preset_s_draws_have_its_documented_medians(cls: profiles.DeviceClass) -> None:
    p = draw(40_000, ((cls, 1.0),), seed=7, phase_hours=0.0)
    assert np.median(p.samples_per_second) == pytest.approx(cls.samples_per_second, rel=0.03)
    for drawn, (low, high) in [(p.up_rate, cls.up_mbps), (p.down_rate, cls.down_mbps)]:
        assert np.median(drawn) / MBIT == pytest.approx(math.sqrt(low * high), rel=0.03)
        assert low * MBIT <= drawn.min() and drawn.max() <= high * MBIT
    assert np.std(np.log(p.samples_per_second)) == pytest.approx(cls.speed_sigma, rel=0.05)
    # one time zone (no phase): every node's window opens at the class's hour
    np.testing.assert_array_equal(p.opens, cls.online_from)
    np.testing.assert_array_equal(p.dropout, cls.dropout)


def test_the_documented_numbers() -> None:
    # phones: slow, asymmetric links (5-20 Mbit/s up, 30-100 down), online at night
    assert (PHONE.samples_per_second, PHONE.up_mbps, PHONE.down_mbps) == (20, (5, 20), (30, 100))
    assert (PHONE.online_from, PHONE.online_hours) == (22, 8)
    # laptops: faster, 20-100 Mbit/s both ways, online in working hours
    assert (LAPTOP.samples_per_second, LAPTOP.up_mbps, LAPTOP.down_mbps) == (
        100,
        (20, 100),
        (20, 100),
    )
    assert (LAPTOP.online_from, LAPTOP.online_hours) == (9, 9)
    assert [c.name for c, _ in mix("mixed")] == ["phone", "laptop"]
    assert [share for _, share in mix("mixed")] == pytest.approx([0.7, 0.3])


def test_phones_are_online_at_night_and_laptops_by_day() -> None:
    p = draw(4000, mix("mixed"), seed=3, phase_hours=2.0)
    day = Availability(opens=p.opens, hours=p.hours, day_seconds=100.0, start_hour=0.0)
    phone, laptop = p.kind == 0, p.kind == 1
    at = {hour: day.online(hour / 24 * 100.0) for hour in (2.0, 14.0)}
    assert at[2.0][phone].all() and not at[2.0][laptop].any()  # 02:00: windows +-2 h
    assert at[14.0][laptop].all() and not at[14.0][phone].any()
    # a window repeats every virtual day
    np.testing.assert_array_equal(day.online(3 * 100.0 + 2 / 24 * 100.0), at[2.0])
    assert [day.node_online(i, 2 / 24 * 100.0) for i in range(50)] == list(at[2.0][:50])


def test_spread_round_the_world_a_window_s_share_is_online() -> None:
    p = draw(20_000, mix("phones"), seed=5)  # phase_hours 12: anywhere
    day = Availability(opens=p.opens, hours=p.hours)
    for t in (0.0, 20_000.0, 50_000.0):
        assert day.online(t).mean() == pytest.approx(8 / 24, abs=0.02)


def test_the_config_names_a_profile_and_overrides_its_numbers() -> None:
    sim = simulation(
        profile="mixed",
        phone_share=0.5,
        phones={"up_mbps": [1, 2], "online_hours": 24},
        day_seconds=600,
    )
    devices = profiles.from_config(100, sim, seed=9)
    assert devices.up_rate is not None and devices.availability is not None
    drawn = draw(
        100,
        (
            (profiles.replace(PHONE, up_mbps=(1.0, 2.0), online_hours=24.0), 0.5),
            (LAPTOP, 0.5),
        ),
        seed=9,
    )
    np.testing.assert_array_equal(devices.up_rate, drawn.up_rate)
    np.testing.assert_array_equal(devices.speed, drawn.samples_per_second)
    assert devices.availability.day_seconds == 600
    phones = drawn.kind == 0
    assert phones.sum() == 50 and (devices.up_rate[phones] <= 2 * MBIT).all()
    assert devices.availability.online(123.0)[phones].all()  # always online now


def simulation(**fields: object):
    return parse_config(config(**fields)).simulation


def config(**fields: object) -> dict[str, object]:
    return {
        "job": {"task": "classification"},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "partition": {"scheme": "iid", "nodes": 4},
        "model": {"kind": "linear"},
        "recipe": {"clip_norm": 1.0},
        "federation": {"rounds": 1},
        "simulation": fields,
    }


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"profile": "tablets"}, "profile"),
        ({"profile": "mixed", "speed_sigma": 0.3}, "speed_sigma is drawn per node"),
        ({"profile": "phones", "bandwidth_mbps": 5}, "bandwidth_mbps is drawn per node"),
        ({"profile": "phones", "dropout": 0.1}, "dropout is drawn per node"),
        ({"profile": "phones", "laptops": {"dropout": 0.1}}, "laptops is not used"),
        ({"profile": "laptops", "phone_share": 0.5}, "phone_share is not used"),
        ({"phones": {"dropout": 0.1}}, "phones needs a device profile"),
        ({"day_seconds": 60}, "day_seconds needs a device profile"),
        ({"profile": "mixed", "phones": {"up_mbps": [20, 5]}}, "low <= high"),
        ({"profile": "mixed", "laptops": {"online_hours": 0}}, "greater than 0"),
        ({"profile": "mixed", "laptops": {"speed": 3}}, "unknown field"),
        ({"profile": "mixed", "phone_share": 1.5}, "less than or equal to 1"),
    ],
)
def test_a_profile_mistake_names_its_field(fields: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config(**fields))
    assert "simulation" in str(err.value) and says in str(err.value)


def test_no_profile_is_the_default() -> None:
    sim = simulation()
    assert sim.profile is None
    with pytest.raises(ValueError, match="no device profile"):
        profiles.from_config(4, sim, seed=0)


@pytest.mark.parametrize("profile", [None, "phones", "laptops", "mixed"])
def test_a_simulation_section_reads_back_from_its_own_dump(profile: str | None) -> None:
    """A job document carries the whole config, every field named: it must read back (a
    check on fields given, not fields changed, once refused every `tessera up` job)."""
    from tessera.config import SimulationSection

    section = SimulationSection(profile=profile)
    assert SimulationSection.model_validate(section.model_dump()) == section
