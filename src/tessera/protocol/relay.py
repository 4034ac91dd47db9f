"""Which node-to-node envelopes a round's tree asks for: what the relay may store.

Built once when a round opens and never changed (replacements are backups,
already counted), so the coordinator's HTTP threads read it without taking
the job driver's lock: the relay's check costs a few dictionary lookups on
the hottest path, and never waits for a step of the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.errors import LocalProtocolError
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.kinds import Kind
from tessera.protocol.topology import Tree

__all__ = ["RelayRoles"]


@dataclass(frozen=True, eq=True)
class RelayRoles:
    """The open round's tree as the relay sees it: who may send what to whom.

    Equal when the trees (and the disclosure) are (the index is derived from the tree).
    ``group_sums``: the round's leaf seats send their sums to the coordinator too.
    """

    _tree: Tree
    group_sums: bool = False
    _servers: dict[NodeId, set[str]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        servers: dict[NodeId, set[str]] = {}  # node -> groups it may serve (seat or backup)
        for group in self._tree.groups:
            for node in (*group.aggregators, *group.backups):
                servers.setdefault(node, set()).add(group.id)
        object.__setattr__(self, "_servers", servers)

    @property
    def tree(self) -> Tree:
        """The open round's tree (public to the job's parties: each node re-derives it)."""
        return self._tree

    def problem(self, sender: NodeId, recipient: NodeId, kind: Kind) -> str | None:
        """Why the tree expects no ``kind`` envelope from ``sender`` to ``recipient``.

        A share goes from a leaf group's member to one of that group's seats
        (or backups); a partial sum, evidence or an input's copy from a group's
        server to a server of its parent or grandparent (the coordinator at the root); an
        audit request the other way; a group sum, in a round that discloses
        them, from a leaf group's server to the coordinator; a buffered job's notice
        that shares are out (``SHARED``), from a contributor of the round to the
        coordinator; the order to report now (``REPORT_NOW``), from the coordinator
        to a leaf group's server. None: the envelope may be relayed. The recipient's
        own machine still checks the rest (the exact seat, the position, the inputs).
        """
        if kind == Kind.GROUP_SUM:
            return self._group_sum_problem(sender, recipient)
        if kind == Kind.SHARED:
            if recipient != COORDINATOR:
                return "a notice that shares are out goes only to the coordinator"
            return (
                None
                if self._contributes(sender)
                else f"{sender} contributes this round to no group"
            )
        if kind == Kind.REPORT_NOW:
            if sender != COORDINATOR:
                return "only the coordinator closes a round's training"
            if not any(self._tree.group(g).level == 0 for g in self._servers.get(recipient, ())):
                return f"{recipient} serves no leaf group this round"
            return None
        if kind == Kind.SHARE:
            try:
                leaf = self._tree.leaf_of(sender)
            except LocalProtocolError:
                return f"{sender} contributes to no group this round"
            if leaf.id not in self._servers.get(recipient, ()):
                return f"{recipient} serves no seat of {sender}'s group {leaf.id}"
            return None
        if kind not in (Kind.PARTIAL, Kind.EVIDENCE, Kind.INPUT_COPY, Kind.AUDIT_REQUEST):
            return None  # to the coordinator: its own machine decides
        upward = kind != Kind.AUDIT_REQUEST
        lower, upper = (sender, recipient) if upward else (recipient, sender)
        above = self._servers.get(upper, set())
        if any(self._feeds(group, above, upper) for group in self._servers.get(lower, ())):
            return None
        return f"no group that {lower} serves feeds one that {upper} serves this round"

    def _contributes(self, node: NodeId) -> bool:
        try:
            self._tree.leaf_of(node)
        except LocalProtocolError:
            return False
        return True

    def _group_sum_problem(self, sender: NodeId, recipient: NodeId) -> str | None:
        if not self.group_sums:
            return "this round discloses no group sums"
        if recipient != COORDINATOR:
            return "a group sum goes only to the coordinator"
        if not any(self._tree.group(g).level == 0 for g in self._servers.get(sender, ())):
            return f"{sender} serves no leaf group this round"
        return None

    def _feeds(self, group_id: str, upper_groups: set[str], upper: NodeId) -> bool:
        """Whether ``group_id``'s sums reach a group ``upper`` serves: its parent sums them,
        its grandparent audits them; above the root is the coordinator."""
        above = self._tree.group(group_id).parent
        for _ in range(2):
            if above is None:
                return upper == COORDINATOR
            if above in upper_groups:
                return True
            above = self._tree.group(above).parent
        return False
