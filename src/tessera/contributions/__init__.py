"""Contribution indicators over group sums (pure math, no I/O): what each group of a
round brought to the model, by leave-one-group-out and a Shapley estimate."""

from tessera.contributions.valuation import GroupUpdate, Utility, leave_one_out, shapley

__all__ = ["GroupUpdate", "Utility", "leave_one_out", "shapley"]
