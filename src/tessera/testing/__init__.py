"""Public test kit: adversarial machines to check that defences hold."""

from tessera.testing.adversaries import TamperingAggregator

__all__ = ["TamperingAggregator"]
