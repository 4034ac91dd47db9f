"""Server strategies: what the coordinator does with the round's mean update.

One contract for all (Flower's configure/aggregate pair, reduced to what a
secure sum can feed): the protocol hands each strategy the *sample-weighted
mean* of the contributors' deltas, never the individual updates, because under
secure aggregation only that sum is ever readable.

- ``configure(round)``: per-round knobs sent to contributors (e.g. FedProx mu).
- ``apply(weights, mean_delta)``: the server step, returns the new weights.

FedOpt variants follow Reddi et al., "Adaptive Federated Optimization"
(ICLR 2021): the mean delta is a pseudo-gradient fed to a server optimizer.
Adding a strategy is one subclass and one line in ``STRATEGIES``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from tessera.errors import ConfigError
from tessera.weights import Vector

_NO_CONFIG: Mapping[str, float] = MappingProxyType({})


def _positive(field: str, value: float) -> float:
    if not value > 0:
        raise ConfigError(f"strategy.{field}", f"must be positive, got {value}")
    return value


def _unit(field: str, value: float) -> float:
    if not 0 <= value < 1:
        raise ConfigError(f"strategy.{field}", f"must be in [0, 1), got {value}")
    return value


class Strategy(ABC):
    name: ClassVar[str]

    def configure(self, round: int) -> Mapping[str, float]:  # noqa: ARG002 - part of the contract
        return _NO_CONFIG

    @abstractmethod
    def apply(self, weights: Vector, mean_delta: Vector) -> Vector: ...

    def state(self) -> dict[str, Vector]:
        """What ``apply`` carries from round to round (for a coordinator's snapshot)."""
        return {}

    def load_state(self, state: Mapping[str, Vector]) -> None:
        """Take back what ``state`` returned; unknown or missing names are a bug (ValueError)."""
        if set(state) != set(self.state()):
            expected = sorted(self.state())
            raise ValueError(f"{self.name} state holds {expected}, not {sorted(state)}")


class FedAvg(Strategy):
    """McMahan et al. 2017: add the sample-weighted mean delta."""

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = _positive("server_lr", server_lr)

    def apply(self, weights: Vector, mean_delta: Vector) -> Vector:
        return (weights + self.server_lr * mean_delta).astype(np.float32)


class FedProx(FedAvg):
    """Li et al. 2020: FedAvg on the server, a proximal term mu on clients."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if mu < 0:
            raise ConfigError("strategy.mu", f"must be >= 0, got {mu}")
        self.mu = mu

    def configure(self, round: int) -> Mapping[str, float]:  # noqa: ARG002
        return MappingProxyType({"prox_mu": self.mu})


class FedAvgM(Strategy):
    """Hsu et al. 2019: server momentum over the mean delta."""

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        self.server_lr = _positive("server_lr", server_lr)
        self.momentum = _unit("momentum", momentum)
        self._velocity: Vector | None = None

    def apply(self, weights: Vector, mean_delta: Vector) -> Vector:
        if self._velocity is None:
            self._velocity = np.zeros_like(mean_delta)
        self._velocity = (self.momentum * self._velocity + mean_delta).astype(np.float32)
        return (weights + self.server_lr * self._velocity).astype(np.float32)

    def state(self) -> dict[str, Vector]:
        return {} if self._velocity is None else {"velocity": self._velocity.copy()}

    def load_state(self, state: Mapping[str, Vector]) -> None:
        if set(state) - {"velocity"}:
            raise ValueError(f"fedavgm state holds velocity only, not {sorted(state)}")
        velocity = state.get("velocity")
        self._velocity = None if velocity is None else velocity.astype(np.float32, copy=True)


class _FedOpt(Strategy):
    """Adaptive server optimizers; subclasses define the second-moment rule."""

    def __init__(
        self,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        self.server_lr = _positive("server_lr", server_lr)
        self.beta1 = _unit("beta1", beta1)
        self.beta2 = _unit("beta2", beta2)
        self.tau = _positive("tau", tau)
        self._m: Vector | None = None
        self._v: Vector | None = None

    @abstractmethod
    def _second_moment(self, v: Vector, delta_sq: Vector) -> Vector: ...

    def apply(self, weights: Vector, mean_delta: Vector) -> Vector:
        if self._m is None or self._v is None:
            self._m = np.zeros_like(mean_delta)
            self._v = np.full_like(mean_delta, self.tau**2)
        self._m = (self.beta1 * self._m + (1 - self.beta1) * mean_delta).astype(np.float32)
        self._v = self._second_moment(self._v, mean_delta * mean_delta).astype(np.float32)
        step = self.server_lr * self._m / (np.sqrt(self._v) + self.tau)
        return (weights + step).astype(np.float32)

    def state(self) -> dict[str, Vector]:
        if self._m is None or self._v is None:
            return {}
        return {"m": self._m.copy(), "v": self._v.copy()}

    def load_state(self, state: Mapping[str, Vector]) -> None:
        if set(state) not in ({"m", "v"}, set()):
            raise ValueError(f"{self.name} state holds m and v, not {sorted(state)}")
        self._m = state["m"].astype(np.float32, copy=True) if state else None
        self._v = state["v"].astype(np.float32, copy=True) if state else None


class FedAdam(_FedOpt):
    name = "fedadam"

    def _second_moment(self, v: Vector, delta_sq: Vector) -> Vector:
        return self.beta2 * v + (1 - self.beta2) * delta_sq


class FedYogi(_FedOpt):
    name = "fedyogi"

    def _second_moment(self, v: Vector, delta_sq: Vector) -> Vector:
        yogi: Vector = v - (1 - self.beta2) * delta_sq * np.sign(v - delta_sq)
        return yogi


class FedAdagrad(_FedOpt):
    name = "fedadagrad"

    def _second_moment(self, v: Vector, delta_sq: Vector) -> Vector:
        return v + delta_sq


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)
}


def make_strategy(name: str, **params: float) -> Strategy:
    """Build a strategy by name; unknown names and parameters are ConfigErrors."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ConfigError("strategy.name", f"unknown {name!r}; one of {known}") from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError("strategy", f"bad parameters for {name}: {exc}") from None
