"""Leaf groups' sums, disclosed to the coordinator: what group-level contribution indicators read.

Theory of operation. A job with ``SecureParams.group_sums`` has each leaf
group's k aggregators, as each sends its committed partial sum up, send the
same words, sealed for the coordinator, as a ``GROUP_SUM``
(``protocol.aggregator``). The k parts of one group add up to that group's
sum, as the root's k parts add up to the total; fewer than k parts are
uniformly random, so the coordinator learns a group's sum and never a
member's update (the sum of at least the floor of them, and only whole).

Nodes check the disclosure against the job they signed up for
(``TreeCheck.disclosure``): a seat discloses only in a job that asked for it,
only a leaf group's sum, only in a training round, only once per seat and
round, and never a committed set smaller than the floor, which it refuses to
sum at all. So in such a job a leaf group below the floor leaves the round
(``SecureParams.leaf_minimum``): otherwise the total less the disclosed
groups' sums would be the sum of the small group's few members.

What the coordinator decodes, when a training round closes (``disclose``):
each leaf group whose committed set reaches the root, whose k parts all
arrived, of at least the floor. The total that the audits vouch for vouches
for them: position by position, the included groups' parts must add up, in
the ring, to the root's sum at that position, exactly. A mismatch (an
aggregator sent the coordinator other words than it sent up) or a missing
part (which would leave a mismatch unseen) discloses no group's sum that
round, and ``Disclosure.withheld`` says why. This module never learns who
sent a part: the coordinator checked each sender's seat before ``take``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tessera.crypto.fixedpoint import Ring, Words, decode
from tessera.crypto.sharing import combine
from tessera.errors import RemoteProtocolError
from tessera.protocol.codec import PartialPayload
from tessera.protocol.effects import GroupSum
from tessera.protocol.topology import Group

__all__ = ["Disclosure", "GroupParts", "disclose", "robust_update"]

#: Fewer groups than this and a median or trimmed mean is no more robust than the mean.
MIN_ROBUST_GROUPS = 3


@dataclass
class GroupParts:
    """The ``GROUP_SUM`` words one round's leaf seats sent: group -> position -> words."""

    parts: dict[str, dict[int, Words]] = field(default_factory=dict)

    def take(
        self,
        group: Group,
        committed: tuple[str, ...] | None,
        part: PartialPayload,
        *,
        ring: Ring,
        length: int,
        floor: int,
    ) -> None:
        """Keep one seat's part of ``group``'s sum; ``RemoteProtocolError`` if it owes none."""
        if group.level != 0:
            raise RemoteProtocolError(f"{group.id} is no leaf group: its sum is never disclosed")
        if not committed:
            raise RemoteProtocolError(f"{group.id} was committed to no sum")
        if part.contributors != len(committed) or len(committed) < floor:
            raise RemoteProtocolError(f"{group.id}'s sum does not cover its committed set")
        if part.words.shape[0] != length or part.words.dtype != ring.dtype:
            raise RemoteProtocolError("group sum does not match the round's ring or model")
        held = self.parts.setdefault(group.id, {})
        if part.position in held:
            raise RemoteProtocolError(f"{group.id} position {part.position}'s sum already arrived")
        held[part.position] = part.words


@dataclass(frozen=True)
class Disclosure:
    """A round's disclosed group sums, or why there are none."""

    sums: tuple[GroupSum, ...] = ()
    withheld: str | None = None


def disclose(
    parts: GroupParts,
    included: Mapping[str, tuple[str, ...]],
    root: Sequence[Words],
    ring: Ring,
    floor: int,
) -> Disclosure:
    """The sums of the ``included`` leaf groups (id -> committed members) that the
    root's ``root`` parts (one per position) vouch for; see the module docstring."""
    if not included:
        return Disclosure()
    for group in sorted(included):
        held = parts.parts.get(group, {})
        missing = [j for j in range(len(root)) if j not in held]
        if missing:
            return Disclosure(
                withheld=f"group sums withheld: {group} position {missing[0]} sent none, "
                "so the total cannot vouch for the others"
            )
    for j, words in enumerate(root):
        added = combine([parts.parts[g][j] for g in sorted(included)], ring)
        if not (added == words).all():
            return Disclosure(
                withheld=f"group sums withheld: at position {j} they do not add up to the "
                "root's sum (an aggregator sent the coordinator other words than it sent up)"
            )
    k = range(len(root))
    return Disclosure(
        tuple(
            GroupSum(
                group=group,
                members=members,
                total=decode(combine([parts.parts[group][j] for j in k], ring), ring),
            )
            for group, members in sorted(included.items())
            if len(members) >= floor
        )
    )


def robust_update(
    sums: Sequence[GroupSum], how: str, trim: float, mean: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """The round's update as a coordinate-wise ``median`` or ``trimmed_mean`` (``trim`` of
    the groups cut at each end) of the disclosed groups' mean updates; ``mean`` (the
    total's) when fewer than ``MIN_ROBUST_GROUPS`` groups were disclosed. No individual
    update is needed: a hostile contributor moves its group's mean, which the
    combination then outvotes."""
    means = [s.update(len(mean)) / s.weight for s in sums if s.weight > 0]
    if len(means) < MIN_ROBUST_GROUPS:
        return mean
    stacked = np.sort(np.stack(means), axis=0)
    if how == "median":
        out: npt.NDArray[np.float64] = np.median(stacked, axis=0)
        return out
    cut = int(trim * len(means))
    kept: npt.NDArray[np.float64] = stacked[cut : len(means) - cut].mean(axis=0)
    return kept
