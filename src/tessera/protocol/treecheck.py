"""Nodes check the execution tree they are handed against the public derivation.

The tree is a pure function of public inputs (job, round, consented nodes,
the round's cohort, tree parameters), so a node re-derives it and refuses a
train request or an aggregator role that does not match: a coordinator
cannot hand-pick the aggregators a contributor's shares go to. Given the
job's audit settings, a node also refuses a role whose audit flags differ
from them, so a coordinator cannot quietly turn audits down; and a role
whose group-sum disclosure is not the job's (``group_sums``: its floor, 0
when the job discloses none), so a coordinator can neither have a group's sum
sent to it in a job that never signed up for that, nor lower the floor, nor
ask it of an upper group or a statistics round. A node also refuses every
role and assignment of a tree that lets one node see two positions of a group
(``topology.seen_twice``): the derivation never makes one, so this guards the
collusion bound against a derivation bug. In the simulator all nodes share
one memoized derivation per round (the same result each node would compute);
a deployed node derives it once per round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tessera.ids import NodeId
from tessera.protocol.coordinator import round_cohort
from tessera.protocol.messages import AggregateRequest, SecureAssignment
from tessera.protocol.params import RoundParams
from tessera.protocol.topology import Tree, TreeParams, derive_tree, seen_twice


class TreeCheck:
    def __init__(
        self,
        params: RoundParams,
        nodes: Sequence[NodeId],
        tree: TreeParams,
        organisations: Mapping[NodeId, str | None] | None = None,
        *,
        audit: tuple[bool, float] | None = None,
        beacon: bytes = b"",
        statistics: int = 0,
        group_sums: int = 0,
    ) -> None:
        """``audit``: the job's (secure.audit, secure.audit_fraction), to check roles by;
        ``beacon``: the job's public beacon (``SecureParams.beacon``); ``statistics``:
        how many statistics rounds open the job (every node contributes to them);
        ``group_sums``: the floor of a job that discloses its leaf groups' sums
        (``SecureParams.disclosure``), 0 for any other: checked whatever ``audit``."""
        self.params = params
        self.group_sums = group_sums
        self.statistics = statistics
        self.beacon = beacon
        self.audit = audit
        self.nodes = tuple(nodes)
        self.tree_params = tree
        self.organisations = dict(organisations or dict.fromkeys(self.nodes))
        self._cached: tuple[int, Tree] | None = None
        self._unsafe: str | None = None  # why the cached tree breaks the rule, if it does

    def tree(self, round: int) -> Tree:
        if self._cached is None or self._cached[0] != round:
            cohort = round_cohort(self.params, self.nodes, round, statistics=self.statistics)
            tree = derive_tree(
                job_id=self.params.job_id,
                round=round,
                nodes=self.organisations,
                contributors=cohort,
                params=self.tree_params,
                beacon=self.beacon,
            )
            self._cached = (round, tree)
            self._unsafe = seen_twice(tree)
        return self._cached[1]

    def assignment_problem(self, node: NodeId, round: int, a: SecureAssignment) -> str | None:
        """Why a contributor's assignment is not the public tree's, or None."""
        tree = self.tree(round)
        if self._unsafe is not None:
            return f"the tree lets a node see two positions of a group: {self._unsafe}"
        if a.tree_digest != tree.digest():
            return "the tree does not match its public derivation"
        if not tree.has_group(a.group) or node not in tree.group(a.group).members:
            return f"{node} is not a member of {a.group} in the derived tree"
        group = tree.group(a.group)
        seated = len(a.aggregators) == len(group.aggregators) and all(
            mine == derived or mine in group.backups  # a backup may stand in from the start
            for mine, derived in zip(a.aggregators, group.aggregators, strict=False)
        )
        if not seated or a.backups != group.backups:
            return f"{a.group}'s aggregators are not the derived tree's"
        return None

    def role_problem(self, node: NodeId, req: AggregateRequest) -> str | None:
        """Why an aggregator role is not the public tree's, or None (replacements are backups)."""
        tree = self.tree(req.round)
        if self._unsafe is not None:
            return f"the tree lets a node see two positions of a group: {self._unsafe}"
        if req.tree_digest != tree.digest() or not tree.has_group(req.group):
            return "the tree does not match its public derivation"
        group = tree.group(req.group)
        seats = group.aggregators
        if not 0 <= req.position < len(seats):
            return f"{req.group} has no position {req.position}"
        if node != seats[req.position] and node not in group.backups:
            return f"{node} holds no seat of {req.group} in the derived tree"
        inputs = group.members if group.level == 0 else group.children
        if tuple(req.inputs) != tuple(inputs):
            return f"the inputs of {req.group} are not the derived tree's"
        if req.absent and (not req.leaf or not set(req.absent) < set(inputs)):
            return f"the absent inputs of {req.group} are not some of its members"
        if self.audit is not None and self._audit_flags(req, group.parent is None, inputs):
            return f"the audit settings of {req.group} are not the job's"
        if req.group_sums != self.disclosure(req):
            return f"the group-sum disclosure of {req.group} is not the job's"
        return None

    def disclosure(self, req: AggregateRequest) -> int:
        """The floor a role's group sum must be disclosed at: the job's for a leaf
        seat of a training round, else 0 (never disclosed)."""
        training = req.round >= self.statistics
        return self.group_sums if req.leaf and training else 0

    def _audit_flags(self, req: AggregateRequest, root: bool, inputs: Sequence[str]) -> bool:
        """True if the role's audit flags are not what the job's settings give it."""
        assert self.audit is not None
        audit, fraction = self.audit
        every = fraction >= 1  # else sums are drawn and their evidence asked for
        audited = set(inputs) if audit and not req.leaf else set()
        return (
            req.audit_fraction != fraction
            or req.send_evidence != (audit and not root and every)
            or req.evidence_on_request != (audit and (root or not every))
            or set(req.audit) != audited
        )
