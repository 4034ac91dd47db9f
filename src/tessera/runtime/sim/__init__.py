"""Deterministic in-process federation of N virtual nodes."""

from tessera.runtime.sim.devices import DeviceModel
from tessera.runtime.sim.simulator import RoundStats, Simulation

__all__ = ["DeviceModel", "RoundStats", "Simulation"]
