"""Contribution indicators over group sums (pure math, no I/O): what each group of a
round brought to the model, by leave-one-group-out and a Shapley estimate, and what
each contributor brought, from the intersections of its groups over rounds."""

from tessera.contributions.individuals import ContributionLedger
from tessera.contributions.valuation import GroupUpdate, Utility, leave_one_out, shapley

__all__ = ["ContributionLedger", "GroupUpdate", "Utility", "leave_one_out", "shapley"]
