"""The verifiable execution tree of one secure-aggregation round.

Theory of operation
-------------------
The tree is *derived, not chosen*. Its only inputs are public: the job id,
the round number, the consented and available nodes with the organisation
each declares, the round's contributors (its cohort), an optional public
``beacon``, and the job's ``TreeParams``. A SHA-256 over a canonical,
length-prefixed encoding of those inputs (sorted, so their order never
matters) is the round's public ``seed``, and everything else follows from
the seed by pure, deterministic steps:

1. Contributors are ordered by ``SHA-256(seed || "members" || id)`` and dealt
   into ``ceil(n / group_size)`` balanced leaf groups ``L0, L1, ...`` (sizes
   differ by at most one); fewer groups are made when more would leave one
   below ``min_group``, so a small remainder is merged, never created.
2. Every ``fan_in`` leaf groups (balanced again) feed one parent group
   ``P1.0, P1.1, ...`` at level 1, whose groups feed level 2, and so on up
   to a single root group. With ``fan_in >= 3`` every parent combines at
   least two children, so no group merely relays another's sums. When there
   is only one leaf group it *is* the root: its k partial sums are the total.
3. Seats are filled group by group (leaves first, then upward), k aggregator
   seats per group, each from the nodes that are not members of that group
   and that keep the *visibility rule* below. A seat goes to the node with
   the fewest roles so far, ties broken by ``SHA-256(seed || "seats" || id)``,
   so the load is spread and the order is unpredictable before the inputs
   are fixed; a node whose roles so far are all at the seat's position is
   preferred over one that holds other positions (so the upper seats, which
   must fit every role below them, still find nodes). The organisation
   rule: no single organisation may fill all k aggregator seats of a group,
   so the last seat skips the organisation that filled the first k - 1. A
   node without an organisation counts as an organisation of its own. If the
   nodes span fewer than two organisations the rule is waived; if they span
   more but a group's eligible nodes cannot satisfy it, derivation fails
   with ``ConfigError``.
4. Then up to ``backups`` spare seats per group, root first (a silent upper
   seat without a backup costs its whole subtree, a leaf seat one group), by
   the same load order and the visibility rule. Backups are best-effort and
   do not count towards the organisation rule: a group gets fewer (none, in
   small federations) when no node fits, and a runtime replacing a failed
   aggregator takes the first backup that keeps it.
5. The seating is greedy, so one shuffle of a small federation can corner
   it (a last seat that finds only the first seats' organisation, or only
   nodes that see another position) where another shuffle seats every
   group. Steps 1 to 4 are then run again with the shuffle
   ``SHA-256(seed || "retry" || attempt)`` (in place of the seed in the
   members' and the seats' order), up to 16 attempts, and the first that
   seats is the tree; only if none does is it a ``ConfigError`` (the first
   attempt's). Every party re-derives the same attempt.

The visibility rule. A node *sees position j of group x* when the protocol
hands it anything of x's j-th shares or sums. Through each role it holds:

- seat (g, j) sees g at j (its inputs: the members' j-th shares one by one,
  or the children's j-th sums), and each child c of g at j (c's j-th sum
  arrives as its input). With audits on (``secure.audit``, the default) it
  audits seat (c, j): c's seat forwards it every input box with its key
  (``INPUT_COPY``, evidence), i.e. c's members' j-th shares one by one for a
  leaf c, or each grandchild's j-th sum for an upper c. So it sees g, g's
  children and g's grandchildren at j; with audits off, g and its children.
- a backup of g may be handed any position of g (a replacement, chosen at
  run time), and then sees what that seat sees: every position of g, of
  g's children and (audits on) of g's grandchildren.
- membership of a leaf is no view: a member knows its own shares, and what
  it can subtract from a sum it sees is the others' sum at that one position.

The rule: no node sees two different positions of any one group. The
derivation keeps it for audits on (it does not know the job's audit
setting, and the stricter rule costs little), so it holds either way. Two
roles of one node share a view only when their groups lie on one path to
the root at most two levels apart; so a seat at j may join a node's other
roles only if all of those within two levels of it (up or down) are seats
at j, and a backup only if the node holds no role within two levels. When no
node fits a seat, derivation fails with ``ConfigError`` (``secure.k``:
add nodes, or raise ``secure.group_size`` for fewer groups); among the
shapes measured, only federations of under 20 nodes met it.

A preference, not yet a rule: no node audits itself. The auditor of seat
(c, j) is the seat at j of c's parent; a node holding both would pass its own
sum whatever it summed (the first rule allows it: one position). So a
group's seat j goes to a node holding no seat at j of its children whenever
one fits, and to one that does only when none does (federations of a few
dozen nodes; ``audits_itself`` names such seats). Closing it for every size
needs an auditor other than the parent (SECURITY.md, issue 14).
The root's k sums go to the coordinator, which is no node: its view (k-1
root positions' inputs, audited) is ``protocol.audit``'s.

What it guarantees
------------------
Any node can call ``verify_tree`` with the same public inputs and get the
same tree bit for bit, so a coordinator that hand-picks aggregators, moves
a contributor between groups or hands out a tree for another cohort is
caught (``RemoteProtocolError`` naming the first difference). ``digest()``
names a tree in signatures and logs: peers that sign messages naming the
digest also expose a coordinator that shows different trees to different
nodes. Because groups are re-derived every round, a colluding set of
nodes cannot stay together across rounds.

Collusion bound: contributor c's update is hidden unless the coalition
learns c's share at every position j, which it can only by seeing c's leaf
group at every position. By the visibility rule each node sees at most one
position of any group, so that takes k nodes, one per position; the same
holds for the sum of any group below the root. With the organisation rule
no single organisation can hold all k seats of a group on its own (its
nodes may still see all k positions through upper seats and audits: the
rule counts seats, not views). Even all k positions of a leaf group reveal
only the sum of its contributors, never one update, unless the group has a
single contributor (``min_group`` >= 2 prevents that) or a member colludes.

What it cannot guarantee: the seed is only as unpredictable as its inputs.
A party who controls which nodes are listed as available or which of them
contribute could try many inputs ("grinding") to find a tree it likes; the
cohort must therefore be fixed before the seed matters (for instance a
seeded cohort selection checked by the nodes), and ``beacon`` lets a
deployment mix in a value nobody could choose in advance, such as the
hash of the previous round's committed aggregate.

``verify_tree`` checks the rule on the tree it is handed before anything
else (``seen_twice``, written from the rule, not from the derivation), so a
coordinator that hand-places a node at two positions is named as such.

This module is pure: no I/O, clocks or global RNG; only stdlib ``hashlib``
and ``json``. Derivation is O(n log n): 10,000 contributors take under a
tenth of a second (the visibility rule added about 15%: a role's check costs
the node's roles or the group's two-level neighbourhood, whichever is fewer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tessera.errors import ConfigError, LocalProtocolError, RemoteProtocolError, TesseraError
from tessera.ids import NodeId

__all__ = [
    "Group",
    "Tree",
    "TreeParams",
    "audits_itself",
    "derive_tree",
    "seen_twice",
    "tree_seed",
    "verify_tree",
]

#: Domain separation for the seed; bump the version if the derivation changes.
SEED_DOMAIN = b"tessera/topology/v1"
#: ``format`` field of the canonical JSON encoding.
JSON_FORMAT = "tessera.tree/1"

_T = TypeVar("_T")
_MEMBER_TAG = b"members"
_SEAT_TAG = b"seats"
_RETRY_TAG = b"retry"
_ATTEMPTS = 16  # shuffles tried before a population is called unable to seat the tree


# -- parameters ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TreeParams:
    """The shape of every round's tree; frozen and validated on construction.

    ``k`` aggregators per group (a share of every update goes to each),
    leaf groups of about ``group_size`` contributors (never below
    ``min_group`` unless the whole cohort is smaller, which is refused),
    ``fan_in`` child groups per parent, and up to ``backups`` spare
    aggregators listed per group for replacement.
    """

    k: int = 3
    group_size: int = 16
    fan_in: int = 8
    min_group: int = 2
    backups: int = 1

    def __post_init__(self) -> None:
        for name in ("k", "group_size", "fan_in", "min_group", "backups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"secure.{name}", "must be an integer")
        if self.k < 2:
            raise ConfigError(
                "secure.k", "must be at least 2 (one aggregator would see every update)"
            )
        if self.min_group < 1:
            raise ConfigError("secure.min_group", "must be at least 1")
        if self.group_size < self.min_group:
            raise ConfigError("secure.group_size", "must be at least secure.min_group")
        if self.fan_in < 3:
            raise ConfigError(
                "secure.fan_in",
                "must be at least 3 (so every parent combines two or more children)",
            )
        if self.backups < 0:
            raise ConfigError("secure.backups", "must be at least 0")

    def to_dict(self) -> dict[str, int]:
        return {
            "k": self.k,
            "group_size": self.group_size,
            "fan_in": self.fan_in,
            "min_group": self.min_group,
            "backups": self.backups,
        }


# -- the tree -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Group:
    """One group of the tree: a leaf (level 0, with members) or an upper group.

    ``aggregators[j]`` holds position j: it receives the j-th share of every
    member (leaf) or the j-th partial sum of every child group (upper), and
    sends its own j-th partial sum to position j of ``parent``.
    """

    id: str
    level: int
    members: tuple[NodeId, ...]
    aggregators: tuple[NodeId, ...]
    backups: tuple[NodeId, ...]
    children: tuple[str, ...]
    parent: str | None

    @property
    def is_leaf(self) -> bool:
        return self.level == 0

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "level": self.level,
            "members": list(self.members),
            "aggregators": list(self.aggregators),
            "backups": list(self.backups),
            "children": list(self.children),
            "parent": self.parent,
        }


@dataclass(frozen=True, kw_only=True)
class Tree:
    """A round's execution tree: leaves first, then each level up to the root.

    Construction checks that the groups form one tree (unique ids, one root,
    parent and children links agreeing, levels one apart) and raises
    ``LocalProtocolError`` otherwise; ``from_json`` turns that into
    ``RemoteProtocolError``. Whether it is the *right* tree is
    ``verify_tree``'s question.
    """

    seed: bytes
    params: TreeParams
    groups: tuple[Group, ...]
    _by_id: dict[str, Group] = field(init=False, repr=False, compare=False)
    _leaf_of: dict[NodeId, Group] = field(init=False, repr=False, compare=False)
    _roles: dict[NodeId, list[tuple[str, int]]] = field(init=False, repr=False, compare=False)
    _root: Group = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, Group] = {}
        leaf_of: dict[NodeId, Group] = {}
        roles: dict[NodeId, list[tuple[str, int]]] = {}
        for g in self.groups:
            if g.id in by_id:
                raise LocalProtocolError(f"group {g.id} appears twice")
            by_id[g.id] = g
            for m in g.members:
                leaf_of[m] = g
            for j, a in enumerate(g.aggregators):
                roles.setdefault(a, []).append((g.id, j))
        roots = [g for g in self.groups if g.parent is None]
        if len(roots) != 1:
            raise LocalProtocolError(f"a tree has exactly one root group, not {len(roots)}")
        for g in self.groups:
            if g.parent is not None:
                parent = by_id.get(g.parent)
                if parent is None or g.id not in parent.children:
                    raise LocalProtocolError(f"group {g.id}: parent {g.parent} does not list it")
            for c in g.children:
                child = by_id.get(c)
                if child is None or child.parent != g.id or child.level != g.level - 1:
                    raise LocalProtocolError(f"group {g.id}: child {c} is not one level below it")
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_leaf_of", leaf_of)
        object.__setattr__(self, "_roles", roles)
        object.__setattr__(self, "_root", roots[0])

    @property
    def root(self) -> Group:
        """The single top group; its k partial sums together are the total."""
        return self._root

    @property
    def depth(self) -> int:
        """Hops from a leaf group to the root: 0 when the only leaf is the root."""
        return self._root.level

    @property
    def leaves(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.level == 0)

    @property
    def contributors(self) -> int:
        """How many contributors the round's cohort holds."""
        return len(self._leaf_of)

    def group(self, group_id: str) -> Group:
        """The group named ``group_id``; ``LocalProtocolError`` if there is none."""
        try:
            return self._by_id[group_id]
        except KeyError:
            raise LocalProtocolError(f"no group {group_id!r} in this tree") from None

    def has_group(self, group_id: str) -> bool:
        return group_id in self._by_id

    def leaf_of(self, contributor: NodeId) -> Group:
        """The leaf group ``contributor`` sends its shares to."""
        try:
            return self._leaf_of[contributor]
        except KeyError:
            raise LocalProtocolError(f"{contributor} is not a contributor of this round") from None

    def roles_of(self, node: NodeId) -> list[tuple[str, int]]:
        """Every aggregator seat ``node`` holds, as (group id, position)."""
        return list(self._roles.get(node, ()))

    def backup_roles_of(self, node: NodeId) -> list[str]:
        """The groups that list ``node`` as a spare aggregator."""
        return [g.id for g in self.groups if node in g.backups]

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, ASCII; stable across versions."""
        doc = {
            "format": JSON_FORMAT,
            "seed": self.seed.hex(),
            "params": self.params.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def digest(self) -> str:
        """Hex SHA-256 of ``to_json()``: the tree's name in signatures and logs (memoized)."""
        cached = self.__dict__.get("_digest")
        if not isinstance(cached, str):
            cached = hashlib.sha256(self.to_json().encode("ascii")).hexdigest()
            object.__setattr__(self, "_digest", cached)
        return cached

    @classmethod
    def from_json(cls, text: str | bytes) -> Tree:
        """Parse a tree a peer sent; anything malformed is ``RemoteProtocolError``."""
        try:
            doc = json.loads(text)
            _expect(isinstance(doc, dict) and doc.get("format") == JSON_FORMAT, "unknown format")
            _expect(set(doc) == {"format", "seed", "params", "groups"}, "unexpected fields")
            seed = bytes.fromhex(_str(doc["seed"]))
            _expect(len(seed) == 32, "seed must be 32 bytes")
            raw_params = doc["params"]
            _expect(isinstance(raw_params, dict), "params must be an object")
            params = TreeParams(**{k: _int(v) for k, v in raw_params.items()})
            raw_groups = doc["groups"]
            _expect(isinstance(raw_groups, list), "groups must be a list")
            groups = tuple(_group_from_dict(g) for g in raw_groups)
            return cls(seed=seed, params=params, groups=groups)
        except RemoteProtocolError:
            raise
        except (TesseraError, ValueError, TypeError) as exc:
            raise RemoteProtocolError(f"malformed tree: {exc}") from exc


def _expect(ok: bool, reason: str) -> None:
    if not ok:
        raise RemoteProtocolError(f"malformed tree: {reason}")


def _str(v: object) -> str:
    if isinstance(v, str):
        return v
    raise RemoteProtocolError(f"malformed tree: expected a string, got {v!r}")


def _int(v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise RemoteProtocolError(f"malformed tree: expected an integer, got {v!r}")


def _strs(v: object) -> tuple[str, ...]:
    if isinstance(v, list):
        return tuple(_str(x) for x in v)
    raise RemoteProtocolError(f"malformed tree: expected a list, got {v!r}")


def _group_from_dict(d: object) -> Group:
    if not isinstance(d, dict):
        raise RemoteProtocolError("malformed tree: a group must be an object")
    _expect(
        set(d) == {"id", "level", "members", "aggregators", "backups", "children", "parent"},
        "unexpected group fields",
    )
    parent = d["parent"]
    return Group(
        id=_str(d["id"]),
        level=_int(d["level"]),
        members=tuple(NodeId(m) for m in _strs(d["members"])),
        aggregators=tuple(NodeId(a) for a in _strs(d["aggregators"])),
        backups=tuple(NodeId(b) for b in _strs(d["backups"])),
        children=_strs(d["children"]),
        parent=None if parent is None else _str(parent),
    )


# -- derivation ---------------------------------------------------------------


def _put(parts: list[bytes], data: bytes) -> None:
    parts.append(len(data).to_bytes(4, "big"))
    parts.append(data)


def _check_inputs(
    job_id: str, round: int, nodes: Mapping[NodeId, str | None], contributors: Sequence[NodeId]
) -> None:
    if not job_id:
        raise LocalProtocolError("job_id must not be empty")
    if round < 0:
        raise LocalProtocolError("round must be >= 0")
    if not contributors:
        raise LocalProtocolError("a round needs at least one contributor")
    if len(set(contributors)) != len(contributors):
        raise LocalProtocolError("contributors must be unique")
    strangers = [c for c in contributors if c not in nodes]
    if strangers:
        raise LocalProtocolError(f"contributors not among the nodes: {sorted(strangers)[:5]}")


def tree_seed(
    *,
    job_id: str,
    round: int,
    nodes: Mapping[NodeId, str | None],
    contributors: Sequence[NodeId],
    beacon: bytes = b"",
) -> bytes:
    """The round's public 32-byte seed (see the module docstring)."""
    _check_inputs(job_id, round, nodes, contributors)
    parts: list[bytes] = []
    _put(parts, SEED_DOMAIN)
    _put(parts, job_id.encode())
    _put(parts, round.to_bytes(8, "big"))
    _put(parts, bytes(beacon))
    parts.append(len(nodes).to_bytes(8, "big"))
    for node in sorted(nodes):
        org = nodes[node]
        _put(parts, node.encode())
        _put(parts, b"\x00" if org is None else b"\x01" + org.encode())
    parts.append(len(contributors).to_bytes(8, "big"))
    for c in sorted(contributors):
        _put(parts, c.encode())
    return hashlib.sha256(b"".join(parts)).digest()


def _split(items: Sequence[_T], parts: int) -> list[tuple[_T, ...]]:
    """``items`` in ``parts`` contiguous chunks whose sizes differ by at most one."""
    q, r = divmod(len(items), parts)
    out: list[tuple[_T, ...]] = []
    start = 0
    for i in range(parts):
        end = start + q + (1 if i < r else 0)
        out.append(tuple(items[start:end]))
        start = end
    return out


_Entry = tuple[int, bytes, NodeId]  # (seats so far, tie-break, node)


class _SeatPool:
    """Nodes ordered by (seats held, seeded tie-break), bucketed by organisation.

    One heap per organisation bucket (a declared organisation, or a single
    node without one) and a heap of each bucket's best entry, so "the least
    loaded node" and "the least loaded node outside organisation X" both cost
    O(log n). Nodes a take may not choose (the group's members, its seats
    already filled, and those the visibility rule refuses) are set aside
    while it looks, and put back once it has chosen.
    """

    def __init__(self, seed: bytes, nodes: Mapping[NodeId, str | None]) -> None:
        bucket_ids: dict[str, int] = {}
        self.bucket_of: dict[NodeId, int] = {}
        self.org_of = nodes
        self._heaps: list[list[_Entry]] = []
        for node in sorted(nodes):
            org = nodes[node]
            if org is None:
                b = len(self._heaps)
                self._heaps.append([])
            else:
                b = bucket_ids.setdefault(org, len(self._heaps))
                if b == len(self._heaps):
                    self._heaps.append([])
            self.bucket_of[node] = b
            tie = hashlib.sha256(seed + _SEAT_TAG + node.encode()).digest()
            self._heaps[b].append((0, tie, node))
        for heap in self._heaps:
            heapq.heapify(heap)
        self.buckets = len(self._heaps)
        self._head: list[_Entry | None] = [heap[0] for heap in self._heaps]
        self._top: list[tuple[int, bytes, NodeId, int]] = [
            (*heap[0], b) for b, heap in enumerate(self._heaps)
        ]
        heapq.heapify(self._top)
        self._excluded: set[NodeId] = set()
        self._accept: Callable[[NodeId], bool] = bool
        self._aside: list[tuple[int, _Entry]] = []

    def take(
        self,
        excluded: Collection[NodeId],
        accept: Callable[[NodeId], bool],
        forbidden: int | None = None,
    ) -> NodeId | None:
        """Seat the least-loaded node outside ``excluded`` and bucket ``forbidden`` that
        ``accept`` admits; nodes passed over are set aside until the choice is made."""
        self._excluded, self._accept = set(excluded), accept
        try:
            return self._take(forbidden)
        finally:
            self._restore()

    def _restore(self) -> None:
        """Put back every node set aside and re-rank the buckets they came from."""
        touched = set()
        for b, entry in self._aside:
            heapq.heappush(self._heaps[b], entry)
            touched.add(b)
        self._aside.clear()
        for b in sorted(touched):
            # What was set aside was at the top when it was, so it ranks ahead of the head.
            self._head[b] = self._heaps[b][0]
            heapq.heappush(self._top, (*self._heaps[b][0], b))

    def _best(self, b: int) -> _Entry | None:
        heap = self._heaps[b]
        while heap and (heap[0][2] in self._excluded or not self._accept(heap[0][2])):
            self._aside.append((b, heapq.heappop(heap)))
        return heap[0] if heap else None

    def _take(self, forbidden: int | None) -> NodeId | None:
        held: list[tuple[int, bytes, NodeId, int]] = []
        chosen: NodeId | None = None
        while self._top:
            item = heapq.heappop(self._top)
            b = item[3]
            if item[:3] != self._head[b]:
                continue  # superseded by a later entry for this bucket
            if b == forbidden:
                held.append(item)
                continue
            best = self._best(b)
            if best != item[:3]:
                self._head[b] = best
                if best is not None:
                    heapq.heappush(self._top, (*best, b))
                continue
            load, tie, chosen = heapq.heappop(self._heaps[b])
            heapq.heappush(self._heaps[b], (load + 1, tie, chosen))
            best = self._best(b)
            self._head[b] = best
            if best is not None:
                heapq.heappush(self._top, (*best, b))
            break
        for item in held:
            heapq.heappush(self._top, item)
        return chosen


_BACKUP = -1  # a backup's token: it may take any position, so it matches no other role


class _Views:
    """The roles each node holds so far, to keep the rule that no node sees two positions
    of one group (module docstring). A role at group g sees g, g's children and g's
    grandchildren, at its position (a backup: at any), so two roles of one node clash
    when their groups are at most two levels apart on one path to the root and their
    positions differ, or either is a backup. A check costs O(min(the node's roles,
    the group's neighbourhood)): a node seated in every group stays cheap to check."""

    def __init__(self, parent_of: Mapping[str, str], children_of: Mapping[str, Sequence[str]]):
        self._up: dict[str, tuple[str, ...]] = {}  # a group's parent and grandparent
        for gid, parent in parent_of.items():
            grandparent = parent_of.get(parent)
            self._up[gid] = (parent,) if grandparent is None else (parent, grandparent)
        self._children = children_of
        self._near: dict[str, tuple[str, ...]] = {}
        self._roles: dict[NodeId, dict[str, int]] = {}  # node -> group -> its token there
        self._tokens: dict[NodeId, set[int]] = {}

    def _neighbourhood(self, gid: str) -> tuple[str, ...]:
        """The groups whose roles see a group that a role at ``gid`` sees."""
        near = self._near.get(gid)
        if near is None:
            children = self._children.get(gid, ())
            below = (gc for c in children for gc in self._children.get(c, ()))
            near = self._near[gid] = (gid, *self._up.get(gid, ()), *children, *below)
        return near

    def _apart(self, a: str, b: str) -> bool:
        return a != b and a not in self._up.get(b, ()) and b not in self._up.get(a, ())

    def fits(self, node: NodeId, gid: str, token: int) -> bool:
        """Whether ``node`` may take a role at ``gid`` (position ``token``, or a backup)."""
        held = self._roles.get(node)
        if not held:
            return True
        if token != _BACKUP and self._tokens[node] == {token}:
            return True  # every role it holds is at this position: nothing can clash
        near = self._neighbourhood(gid)
        if len(held) <= len(near):
            others: Iterable[tuple[str, int]] = held.items()
            return all(self._apart(g, gid) or (t == token != _BACKUP) for g, t in others)
        return all(g not in held or held[g] == token != _BACKUP for g in near)

    def only(self, node: NodeId, token: int) -> bool:
        """Whether every role ``node`` holds so far is a seat at position ``token``."""
        return self._tokens.get(node, {token}) == {token}

    def add(self, node: NodeId, gid: str, token: int) -> None:
        self._roles.setdefault(node, {})[gid] = token
        self._tokens.setdefault(node, set()).add(token)


@dataclass(slots=True)
class _Seating:
    """Fills a tree's seats and backups from the pool, keeping both rules."""

    pool: _SeatPool
    views: _Views
    params: TreeParams
    n_nodes: int

    def seats(
        self,
        gid: str,
        members: tuple[NodeId, ...],
        below: tuple[tuple[NodeId, ...], ...] = (),
    ) -> tuple[NodeId, ...]:
        """Fill ``gid``'s k positions, each with the least-loaded node that keeps the
        organisation rule, sees no other position of a group this seat sees and holds
        no seat this one audits (``below``: the children's seats); one whose roles so
        far are all at this position first, so later, upper seats still find nodes
        that fit."""
        pool, views = self.pool, self.views
        seats: list[NodeId] = []
        for j in range(self.params.k):
            forbidden = None
            if j == self.params.k - 1 and pool.buckets >= 2:
                first = {pool.bucket_of[s] for s in seats}
                if len(first) == 1:
                    forbidden = first.pop()
            audited = tuple(child[j] for child in below)  # better not audit itself
            excluded = (*members, *seats)

            def fits(n: NodeId, j: int = j) -> bool:
                return views.fits(n, gid, j)

            def only(n: NodeId, j: int = j) -> bool:
                return views.only(n, j) and views.fits(n, gid, j)

            node = (
                pool.take((*excluded, *audited), only, forbidden)
                or pool.take((*excluded, *audited), fits, forbidden)
                or pool.take(excluded, only, forbidden)
                or pool.take(excluded, fits, forbidden)
            )
            if node is None:
                raise self._no_seat(gid, j, members, seats, forbidden)
            views.add(node, gid, j)
            seats.append(node)
        return tuple(seats)

    def _no_seat(
        self,
        gid: str,
        j: int,
        members: tuple[NodeId, ...],
        seats: list[NodeId],
        forbidden: int | None,
    ) -> ConfigError:
        """Why position ``j`` of ``gid`` has no node: too few outside the group, the
        organisation rule, or the rule that no node sees two positions of a group."""
        k, n_nodes = self.params.k, self.n_nodes
        eligible = n_nodes - len(members)
        if eligible < k:
            fits = n_nodes - k  # the largest group that leaves k nodes outside it
            hint = (
                f"set secure.group_size to at most {fits} (in the [secure] section) so "
                "contributors of other groups can serve"
                if fits >= max(self.params.min_group, 1)
                else f"add nodes: {k} aggregators and a group of "
                f"{self.params.min_group} need {k + self.params.min_group}"
            )
            return ConfigError(
                "secure.k",
                f"group {gid} needs {k} aggregators from nodes outside it, but only "
                f"{eligible} of the {n_nodes} nodes are: {hint}",
            )
        if self.pool.take((*members, *seats), lambda _: True, forbidden) is None:
            return ConfigError(
                "secure.organisation_column",
                f"group {gid}: every node eligible for its last aggregator seat belongs to "
                f"organisation {self.pool.org_of[seats[0]]!r}, and no organisation may fill "
                f"all {k} seats",
            )
        return ConfigError(
            "secure.k",
            f"group {gid} position {j}: every node eligible for it already sees another "
            f"position of {gid} or of a group up to two levels below it, and no node may "
            "see two positions of one group: add nodes, or raise secure.group_size "
            "(fewer groups)",
        )

    def spares(self, group: Group) -> tuple[NodeId, ...]:
        """Up to ``backups`` spares, best-effort: a backup may take any position of the
        group, so it may hold no other role within two levels of it on its path."""
        spares: list[NodeId] = []
        for _ in range(self.params.backups):
            excluded = (*group.members, *group.aggregators, *spares)
            node = self.pool.take(excluded, lambda n: self.views.fits(n, group.id, _BACKUP))
            if node is None:
                break
            self.views.add(node, group.id, _BACKUP)
            spares.append(node)
        return tuple(spares)


def derive_tree(
    *,
    job_id: str,
    round: int,
    nodes: Mapping[NodeId, str | None],
    contributors: Sequence[NodeId],
    params: TreeParams,
    beacon: bytes = b"",
) -> Tree:
    """Derive the round's execution tree from public inputs only.

    ``nodes`` maps every consented, available node to its organisation (or
    ``None``); ``contributors`` (a subset) is the round's cohort. Input order
    is irrelevant. Raises ``LocalProtocolError`` for malformed inputs
    (duplicates, a contributor that is not a node, a negative round) and
    ``ConfigError`` when the population cannot satisfy ``params``: fewer
    contributors than ``min_group`` (field ``secure.min_group``), too few nodes
    outside a group for its k seats (``secure.k``), or the organisation rule
    (``secure.organisation_column``).
    """
    seed = tree_seed(
        job_id=job_id, round=round, nodes=nodes, contributors=contributors, beacon=beacon
    )
    # A seating the greedy pass cannot finish (the organisation rule and the view rule
    # can corner it for one shuffle of a small federation) is tried again with the next
    # shuffle, derived from the seed: every party reaches the same attempt.
    failure: ConfigError | None = None
    for attempt in range(_ATTEMPTS):
        shuffle = (
            seed if attempt == 0 else hashlib.sha256(seed + _RETRY_TAG + bytes([attempt])).digest()
        )
        try:
            return _derive(seed, shuffle, nodes, contributors, params)
        except ConfigError as exc:
            failure = failure or exc
    assert failure is not None
    raise failure


def _derive(
    seed: bytes,
    shuffle: bytes,
    nodes: Mapping[NodeId, str | None],
    contributors: Sequence[NodeId],
    params: TreeParams,
) -> Tree:
    """One attempt at the tree: groups and seats drawn with ``shuffle``."""
    n = len(contributors)
    if n < params.min_group:
        raise ConfigError(
            "secure.min_group",
            f"{n} contributors cannot form a group of at least {params.min_group}",
        )
    n_leaves = max(1, min(math.ceil(n / params.group_size), n // params.min_group))
    shuffled = sorted(
        contributors, key=lambda c: hashlib.sha256(shuffle + _MEMBER_TAG + c.encode()).digest()
    )

    # Shape first: ids, members, children and parents of every level.
    levels: list[list[tuple[str, tuple[NodeId, ...], tuple[str, ...]]]] = [
        [(f"L{i}", chunk, ()) for i, chunk in enumerate(_split(shuffled, n_leaves))]
    ]
    while len(levels[-1]) > 1:
        below = levels[-1]
        level = len(levels)
        chunks = _split([gid for gid, _, _ in below], math.ceil(len(below) / params.fan_in))
        levels.append([(f"P{level}.{i}", (), ch) for i, ch in enumerate(chunks)])
    parent_of = {c: gid for row in levels for gid, _, children in row for c in children}

    # Then seats, leaves first, from the least-loaded eligible nodes; then backups, which
    # are best-effort and so must not crowd out a seat, root first: a silent upper seat
    # without a backup costs its whole subtree, a leaf seat only its group.
    children_of = {gid: children for row in levels for gid, _, children in row}
    seating = _Seating(
        _SeatPool(shuffle, nodes), _Views(parent_of, children_of), params, len(nodes)
    )
    groups: list[Group] = []
    seated: dict[str, tuple[NodeId, ...]] = {}
    for level, row in enumerate(levels):
        for gid, members, children in row:
            audited = tuple(seated[c] for c in children)
            seated[gid] = seating.seats(gid, members, audited)
            group = Group(
                id=gid,
                level=level,
                members=members,
                aggregators=seated[gid],
                backups=(),
                children=children,
                parent=parent_of.get(gid),
            )
            groups.append(group)
    spares = {g.id: seating.spares(g) for g in reversed(groups)}
    groups = [dataclasses.replace(g, backups=spares[g.id]) for g in groups]
    return Tree(seed=seed, params=params, groups=tuple(groups))


def seen_twice(tree: Tree) -> str | None:
    """The first node that sees two positions of one group in ``tree``, or None.

    Written from the rule, not from the derivation: a seat (g, j) sees position j of
    g, of g's children and of g's grandchildren; a backup of g sees every position of
    them. Any other role of the same node that sees one of those groups must be a seat
    at the same position j."""
    seen: dict[tuple[NodeId, str], tuple[int, str]] = {}  # (node, group) -> (token, role)
    for g in tree.groups:
        children = [tree.group(c) for c in g.children]
        scope = (g.id, *g.children, *(gc for c in children for gc in c.children))
        roles = [(a, j, f"seat {g.id} position {j}") for j, a in enumerate(g.aggregators)]
        roles += [(b, _BACKUP, f"backup of {g.id}") for b in g.backups]
        for node, token, role in roles:
            for x in scope:
                held, first = seen.setdefault((node, x), (token, role))
                if first != role and (token == _BACKUP or held != token):
                    return f"{node} sees two positions of group {x}: as {first} and as {role}"
    return None


def audits_itself(tree: Tree) -> list[str]:
    """Each seat whose auditor (the seat at its position one level up) is its own node."""
    found = []
    for g in tree.groups:
        for c in (tree.group(c) for c in g.children):
            for j, (up, down) in enumerate(zip(g.aggregators, c.aggregators, strict=True)):
                if up == down:
                    found.append(f"{up} holds seat {c.id} and its auditor {g.id}, position {j}")
    return found


# -- verification -------------------------------------------------------------


def _first_difference(expected: Tree, got: Tree) -> str:
    if got.seed != expected.seed:
        return (
            "seed differs: the tree was not derived from these nodes, contributors, job and round"
        )
    want_ids = [g.id for g in expected.groups]
    got_ids = [g.id for g in got.groups]
    if got_ids != want_ids:
        return f"groups differ: expected {want_ids[:8]}..., got {got_ids[:8]}..."
    for want, have in zip(expected.groups, got.groups, strict=True):
        for name in ("level", "parent", "children", "members"):
            if getattr(have, name) != getattr(want, name):
                return (
                    f"group {want.id} {name}: expected {getattr(want, name)}, "
                    f"got {getattr(have, name)}"
                )
        for name, want_seats, have_seats in (
            ("position", want.aggregators, have.aggregators),
            ("backup", want.backups, have.backups),
        ):
            if len(have_seats) != len(want_seats):
                return (
                    f"group {want.id}: expected {len(want_seats)} {name} seats, "
                    f"got {len(have_seats)}"
                )
            for j, (w, h) in enumerate(zip(want_seats, have_seats, strict=True)):
                if w != h:
                    return f"group {want.id} {name} {j}: expected {w}, got {h}"
    raise AssertionError("trees compare unequal but no field differs")  # pragma: no cover


def verify_tree(
    tree: Tree,
    *,
    job_id: str,
    round: int,
    nodes: Mapping[NodeId, str | None],
    contributors: Sequence[NodeId],
    params: TreeParams | None = None,
    beacon: bytes = b"",
) -> None:
    """Re-derive the tree and raise ``RemoteProtocolError`` at the first difference.

    Pass the job's ``params`` so a coordinator cannot shrink k or the groups;
    without them the tree's own params are trusted and must be checked by the
    caller. Inputs from which no tree can be derived are also the sender's
    fault and raise ``RemoteProtocolError``.
    """
    if params is not None and tree.params != params:
        raise RemoteProtocolError(f"tree params differ: expected {params}, got {tree.params}")
    twice = seen_twice(tree)
    if twice is not None:  # named first: the collusion bound, not just a mismatch
        raise RemoteProtocolError(f"tree rejected: {twice}")
    try:
        expected = derive_tree(
            job_id=job_id,
            round=round,
            nodes=nodes,
            contributors=contributors,
            params=tree.params,
            beacon=beacon,
        )
    except (ConfigError, LocalProtocolError) as exc:
        raise RemoteProtocolError(f"no tree can be derived for this round: {exc}") from exc
    if expected != tree:
        raise RemoteProtocolError(f"tree rejected: {_first_difference(expected, tree)}")
