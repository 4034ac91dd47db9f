"""``protocol.groups``: which leaf groups' sums the coordinator decodes, and when it withholds
them all; the settings and wire forms that carry the switch."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import msgpack
import numpy as np
import pytest

from tessera.crypto.fixedpoint import Ring, decode, encode
from tessera.crypto.sharing import combine, materialize, split
from tessera.errors import ConfigError, RemoteProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.codec import PartialPayload
from tessera.protocol.control import decode_aggregate_request, encode_aggregate_request
from tessera.protocol.groups import GroupParts, disclose
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import AggregateRequest
from tessera.protocol.noise import PrivacyParams
from tessera.protocol.params import RoundParams
from tessera.protocol.relay import RelayRoles
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import Group, TreeParams
from tessera.protocol.treecheck import TreeCheck
from tessera.testing import fixed_updates, secure_federation

RING = Ring(bits=64, frac_bits=16, terms=8)
K, LENGTH = 3, 4
TREE = TreeParams(k=3, group_size=4, fan_in=3, min_group=2, backups=1)
SECURE = SecureParams(tree=TREE, clip=1.0, max_weight=10.0, phase_timeout=1.0, group_sums=True)


def _leaf(name: str, members: tuple[str, ...]) -> Group:
    return Group(
        id=name,
        level=0,
        members=tuple(NodeId(m) for m in members),
        aggregators=(NodeId("a0"), NodeId("a1"), NodeId("a2")),
        backups=(),
        children=(),
        parent="P",
    )


def _parts(vector: np.ndarray, seed: int) -> list[np.ndarray]:
    """k position parts of ``vector`` (as the k seats' partial sums would be)."""
    words = encode(vector, RING, np.random.default_rng(seed))
    shares = split(words, K, full_position=0, ring=RING)
    return [np.array(materialize(s, LENGTH, RING)) for s in shares]


GROUPS = {"L0": ("n0", "n1", "n2"), "L1": ("n3", "n4")}
VECTORS = {"L0": np.array([0.5, -1.0, 0.25, 3.0]), "L1": np.array([1.5, 0.0, -0.75, 2.0])}


def _round() -> tuple[GroupParts, list[np.ndarray]]:
    """Both groups' parts taken, and the root's k sums (each position: the groups' parts)."""
    parts = GroupParts()
    by_group = {g: _parts(VECTORS[g], i) for i, g in enumerate(GROUPS)}
    for g, members in GROUPS.items():
        for j, words in enumerate(by_group[g]):
            payload = PartialPayload(g, j, len(members), words)
            parts.take(_leaf(g, members), members, payload, ring=RING, length=LENGTH, floor=2)
    root = [combine([by_group[g][j] for g in GROUPS], RING) for j in range(K)]
    return parts, root


def test_each_included_group_is_decoded_whole() -> None:
    parts, root = _round()
    found = disclose(parts, GROUPS, root, RING, floor=2)
    assert found.withheld is None
    assert [(g.group, g.members) for g in found.sums] == list(GROUPS.items())
    for g in found.sums:
        np.testing.assert_allclose(g.total, VECTORS[g.group], atol=RING.step)
    total = decode(combine(root, RING), RING)
    np.testing.assert_allclose(sum(g.total for g in found.sums), total, atol=1e-12)


def test_a_group_outside_the_total_is_not_decoded_and_no_included_group_nothing() -> None:
    parts, root = _round()
    only = {"L0": GROUPS["L0"]}  # L1 was dropped above the leaves: its parts vouch for nothing
    root_without = [combine([p], RING) for p in (parts.parts["L0"][j] for j in range(K))]
    found = disclose(parts, only, root_without, RING, floor=2)
    assert [g.group for g in found.sums] == ["L0"] and found.withheld is None
    assert disclose(parts, {}, root, RING, floor=2).sums == ()


def test_a_group_under_the_floor_is_never_decoded() -> None:
    parts, root = _round()
    found = disclose(parts, GROUPS, root, RING, floor=3)  # L1 has two members
    assert [g.group for g in found.sums] == ["L0"]


def test_a_missing_part_withholds_every_group() -> None:
    parts, root = _round()
    del parts.parts["L1"][2]
    found = disclose(parts, GROUPS, root, RING, floor=2)
    assert found.sums == ()
    assert found.withheld is not None and "L1 position 2 sent none" in found.withheld


def test_parts_that_do_not_add_up_withhold_every_group() -> None:
    parts, root = _round()
    lie = parts.parts["L0"][1].copy()
    lie[0] += np.uint64(1)  # one ring step: the smallest lie
    parts.parts["L0"][1] = lie
    found = disclose(parts, GROUPS, root, RING, floor=2)
    assert found.sums == ()
    assert found.withheld is not None and "position 1" in found.withheld


def test_a_part_the_group_does_not_owe_is_refused() -> None:
    parts = GroupParts()
    members = GROUPS["L0"]
    words = np.zeros(LENGTH, np.uint64)
    ok = PartialPayload("L0", 0, 3, words)
    upper = replace(_leaf("P", ()), level=1, children=("L0",))
    cases = [
        (upper, members, ok, 2, "no leaf group"),
        (_leaf("L0", members), None, ok, 2, "committed to no sum"),
        (_leaf("L0", members), members, replace(ok, contributors=2), 2, "does not cover"),
        (_leaf("L0", members), members, ok, 4, "does not cover"),  # under the floor
        (_leaf("L0", members), members, replace(ok, words=words[:2]), 2, "ring or model"),
        (_leaf("L0", members), members, replace(ok, words=words.astype(np.uint32)), 2, "ring"),
    ]
    for group, committed, part, floor, why in cases:
        with pytest.raises(RemoteProtocolError, match=why):
            parts.take(group, committed, part, ring=RING, length=LENGTH, floor=floor)
    parts.take(_leaf("L0", members), members, ok, ring=RING, length=LENGTH, floor=2)
    with pytest.raises(RemoteProtocolError, match="already arrived"):
        parts.take(_leaf("L0", members), members, ok, ring=RING, length=LENGTH, floor=2)


def test_the_floor_and_its_refusals() -> None:
    assert replace(SECURE, group_sums=False).disclosure == 0
    assert SECURE.disclosure == 2 and SECURE.leaf_minimum == 2
    one = replace(SECURE, tree=replace(TREE, min_group=1))
    assert one.disclosure == 2 and one.leaf_minimum == 2  # never a single update
    assert replace(one, group_sums=False).leaf_minimum == 1
    higher = replace(SECURE, group_floor=4)
    assert higher.disclosure == 4 and higher.leaf_minimum == 4
    with pytest.raises(ConfigError, match="at least 2"):
        replace(SECURE, group_floor=1)
    private = PrivacyParams(epsilon=1.0, delta=1e-5, variance=1e6, frac_bits=16, l1=1.0, l2=1.0)
    with pytest.raises(ConfigError, match="share of the noise"):
        replace(SECURE, privacy=private)
    with pytest.raises(ConfigError, match="backups below"):
        replace(SECURE, tree=replace(TREE, backups=3))


def test_a_leaf_role_carries_the_floor_on_the_wire() -> None:
    req = AggregateRequest(
        job_id=JobId("job"),
        round=1,
        group="L0",
        position=2,
        inputs=("n1", "n2"),
        senders=(NodeId("n1"), NodeId("n2")),
        leaf=True,
        parent=NodeId("p"),
        parent_group="P1.0",
        report_at=9.0,
        ring_bits=64,
        frac_bits=16,
        ring_terms=10,
        length=7,
        tree_digest="e" * 64,
        audit=MappingProxyType({}),
        group_sums=3,
    )
    data = encode_aggregate_request(req)
    assert decode_aggregate_request(data).group_sums == 3
    older = msgpack.unpackb(data, raw=False)
    del older["group_sums"]  # a request written before the field: discloses nothing
    assert decode_aggregate_request(msgpack.packb(older)).group_sums == 0
    older["group_sums"] = -1
    with pytest.raises(RemoteProtocolError, match="group_sums"):
        decode_aggregate_request(msgpack.packb(older))


def test_relay_roles_differ_by_their_disclosure() -> None:
    nodes = [NodeId(f"n{i:02d}") for i in range(12)]
    tree = TreeCheck(RoundParams(job_id=JobId("j"), rounds=1), nodes, TREE).tree(0)
    assert RelayRoles(tree) == RelayRoles(tree)
    assert RelayRoles(tree) != RelayRoles(tree, group_sums=True)
    seat = tree.leaves[0].aggregators[0]
    assert RelayRoles(tree, group_sums=True).problem(seat, COORDINATOR, Kind.GROUP_SUM) is None


def test_a_part_lost_on_the_way_withholds_the_round_and_changes_nothing_else() -> None:
    """One GROUP_SUM never arrives: the round closes as ever, with no group sum."""
    fed = secure_federation(12, secure=SECURE, dim=4)
    lost: list[object] = []

    def drop(wire: object) -> bool:
        if getattr(wire, "kind", None) == Kind.GROUP_SUM and not lost:
            lost.append(wire)
            return True
        return False

    fed.network.drop = drop  # type: ignore[assignment]
    fed.begin()
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.settle(until=lambda: bool(fed.closed))
    closed = fed.closed[0]
    assert lost and not closed.skipped and closed.participants == 12
    assert closed.group_sums == ()
    assert closed.groups_withheld is not None and "sent none" in closed.groups_withheld
