"""Group sums (issue 13): what a dishonest coordinator could do with a leaf group's sum.

A job with ``[contributions]`` has each leaf group's k seats send their sum to
the coordinator too. Without the checks below a coordinator could:

1. turn disclosure on for a job that never signed up for it (the seat learns
   whether to disclose from the coordinator's role request), lower the
   job's floor, or ask it of an upper group or a statistics round: every
   node checks its role's disclosure against the job's (``TreeCheck``);
2. commit a leaf group's seats to a set below the floor, so its disclosed
   sum (or the total less the others') is one or two people's: an honest
   seat refuses to sum it;
3. re-seat a backup and have it sum the group again over other members,
   the difference of two disclosed sums being the members left out: a seat
   discloses once a round, and a job needs fewer backups than seats, so at
   least one position is summed once only;
4. have anyone park group sums in the mailbox: the relay takes one only from
   a leaf group's server, to the coordinator, in a round that discloses them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tessera.crypto.envelope import open_envelope, seal
from tessera.errors import ConfigError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.codec import (
    Commit,
    Reassign,
    decode_commit,
    decode_partial,
    encode_commit,
    encode_partial,
    encode_reassign,
)
from tessera.protocol.effects import Send
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import relay_bounds
from tessera.protocol.messages import AggregateRequest, Sealed
from tessera.protocol.params import RoundParams
from tessera.protocol.relay import RelayRoles
from tessera.protocol.secure_coordinator import SecureCoordinator, SecureParams
from tessera.protocol.strategies import make_strategy
from tessera.protocol.topology import TreeParams
from tessera.protocol.treecheck import TreeCheck
from tessera.runtime.sim.secure import build_secure
from tessera.testing import MiniFederation, fixed_updates
from tessera.testing.network import Wire

TREE = TreeParams(k=3, group_size=4, fan_in=3, min_group=2, backups=1)
JOB_SECURE = SecureParams(tree=TREE, clip=1.0, max_weight=10.0, phase_timeout=1.0)
DISCLOSING = replace(JOB_SECURE, group_sums=True)
IDS = [NodeId(f"node-{i:03d}") for i in range(12)]
PARAMS = RoundParams(job_id=JobId("groups"), rounds=1, round_timeout=10.0)


def federation(coordinator: SecureParams, nodes: SecureParams) -> MiniFederation:
    """The coordinator runs ``coordinator``'s settings; the nodes check the job's, ``nodes``."""
    machine, _ = build_secure(
        IDS,
        params=PARAMS,
        secure=coordinator,
        initial_weights=np.zeros(4, np.float32),
        strategy=make_strategy("fedavg"),
        seed=0,
    )
    _, machines = build_secure(
        IDS,
        params=PARAMS,
        secure=nodes,
        initial_weights=np.zeros(4, np.float32),
        strategy=make_strategy("fedavg"),
        seed=0,
    )
    return MiniFederation(machine, dict(zip(IDS, machines, strict=True)))


def group_sums_sent(fed: MiniFederation) -> list[Wire]:
    return [w for w in fed.network.sent if w.kind == Kind.GROUP_SUM]


def play(fed: MiniFederation) -> None:
    fed.begin()
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.settle(until=lambda: bool(fed.closed))


def test_the_honest_job_discloses_every_leaf_group() -> None:
    fed = federation(DISCLOSING, DISCLOSING)
    play(fed)
    closed = fed.closed[0]
    assert not fed.refused and not closed.skipped
    coordinator = fed.coordinator
    assert isinstance(coordinator, SecureCoordinator)
    assert len(group_sums_sent(fed)) == 3 * len({g.group for g in closed.group_sums}) > 0
    assert sorted(m for g in closed.group_sums for m in g.members) == list(closed.included)


@pytest.mark.parametrize(
    ("asked", "why"),
    [
        (DISCLOSING, "a job that never signed up"),
        (replace(DISCLOSING, group_floor=2), "a lower floor"),
    ],
)
def test_a_coordinator_cannot_have_group_sums_sent_it_against_the_job(
    asked: SecureParams, why: str
) -> None:
    job = JOB_SECURE if why == "a job that never signed up" else replace(DISCLOSING, group_floor=3)
    fed = federation(asked, job)
    play(fed)
    coordinator = fed.coordinator
    assert isinstance(coordinator, SecureCoordinator)
    leaves = {w.message.group for w in fed.network.sent if isinstance(w.message, AggregateRequest)}
    refused = {r.reason for _, r in fed.refused if "group-sum disclosure" in r.reason}
    assert refused >= {
        f"the group-sum disclosure of {g} is not the job's" for g in leaves if g[0] == "L"
    }
    assert group_sums_sent(fed) == []  # no seat sent the coordinator a group's sum
    assert fed.closed[0].group_sums == () and fed.closed[0].skipped  # the seats served none


def _leaf_request(check: TreeCheck, round: int) -> tuple[NodeId, AggregateRequest]:
    tree = check.tree(round)
    leaf = tree.leaves[0]
    assert leaf.parent is not None
    request = AggregateRequest(
        job_id=PARAMS.job_id,
        round=round,
        group=leaf.id,
        position=0,
        inputs=leaf.members,
        senders=leaf.members,
        leaf=True,
        parent=tree.group(leaf.parent).aggregators[0],
        parent_group=leaf.parent,
        report_at=5.0,
        ring_bits=32,
        frac_bits=16,
        ring_terms=12,
        length=7,
        tree_digest=tree.digest(),
        group_sums=3,
    )
    return leaf.aggregators[0], request


def test_nor_from_an_upper_group_or_a_statistics_round() -> None:
    check = TreeCheck(PARAMS, IDS, TREE, group_sums=3, statistics=1)
    seat, honest = _leaf_request(check, 1)
    assert check.role_problem(seat, honest) is None
    lowered = replace(honest, group_sums=2)
    assert "group-sum disclosure" in (check.role_problem(seat, lowered) or "")
    tree = check.tree(1)
    upper = tree.group(tree.leaves[0].parent or "")
    asked_up = replace(
        honest,
        group=upper.id,
        inputs=upper.children,
        senders=tuple(tree.group(c).aggregators[0] for c in upper.children),
        leaf=False,
        parent=COORDINATOR,
        parent_group="",
    )
    up_seat = upper.aggregators[0]
    assert "group-sum disclosure" in (check.role_problem(up_seat, asked_up) or "")
    assert check.role_problem(up_seat, replace(asked_up, group_sums=0)) is None
    seat0, counting = _leaf_request(check, 0)  # round 0 counts statistics
    assert "group-sum disclosure" in (check.role_problem(seat0, counting) or "")
    assert check.role_problem(seat0, replace(counting, group_sums=0)) is None
    # A job that never signed up: any disclosure is refused, whatever else checks.
    plain = TreeCheck(PARAMS, IDS, TREE)
    assert "group-sum disclosure" in (plain.role_problem(seat, honest) or "")


def _hold(fed: MiniFederation, *kinds: Kind, to: NodeId | None = None) -> None:
    """Hold back every wire of these kinds (to ``to`` only, if given)."""
    fed.network.delay = lambda w: w.kind in kinds and (to is None or w.recipient == to)


def _commit_of(fed: MiniFederation, held: Wire) -> Commit:
    coordinator = fed.coordinator
    assert isinstance(coordinator, SecureCoordinator)
    env = open_envelope(
        held.data,
        recipient_keys=None,
        directory=coordinator.directory,
        expect_job=PARAMS.job_id,
        expect_round=0,
        expect_recipient=None,
        max_bytes=len(held.data),
        replay=None,
    )
    return decode_commit(env.payload)


def _from_coordinator(fed: MiniFederation, to: NodeId, kind: Kind, payload: bytes) -> list:
    coordinator = fed.coordinator
    assert isinstance(coordinator, SecureCoordinator)
    send = coordinator.wire.send(to, kind, 0, payload, sealed=False)
    return fed.deliver(Wire(COORDINATOR, to, send.message))


def test_a_seat_refuses_to_sum_a_commitment_below_the_floor() -> None:
    fed = federation(replace(DISCLOSING, group_floor=3), replace(DISCLOSING, group_floor=3))
    _hold(fed, Kind.COMMIT)
    fed.begin()
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.run()
    held = fed.network.held[0]
    commit = _commit_of(fed, held)
    assert commit.included is not None and len(commit.included) >= 3
    small = encode_commit(Commit(commit.group, commit.included[:2]))  # two people's sum
    effects = _from_coordinator(fed, held.recipient, Kind.COMMIT, small)
    assert not [e for e in effects if isinstance(e, Send)]  # neither up nor to the coordinator
    assert any("below the job's floor of 3" in r.reason for _, r in fed.refused)
    # The honest commitment still works: the refusal changed nothing.
    fed.network.delay = None
    fed.network.release()
    fed.settle(until=lambda: bool(fed.closed))
    assert commit.group in {g.group for g in fed.closed[0].group_sums}


def test_a_reseated_backup_discloses_once_a_round() -> None:
    """The coordinator seats a leaf group's backup at position 0, has the members resend
    their shares, commits, then does it all again over fewer members: the backup sums
    twice (its sum up is the coordinator's to ask), but tells the coordinator once."""
    fed = federation(DISCLOSING, DISCLOSING)
    coordinator = fed.coordinator
    assert isinstance(coordinator, SecureCoordinator)
    _hold(fed, Kind.PARTIAL, to=COORDINATOR)  # the round stays open: the root never sums
    fed.begin()
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.run()
    assert coordinator._rs is not None
    tree, committed = coordinator._rs.tree, coordinator._rs.committed
    leaf = next(g for g in tree.leaves if g.backups and committed.get(g.id))
    backup, members = leaf.backups[0], committed[leaf.id] or ()
    request = next(
        w.message
        for w in fed.network.sent
        if isinstance(w.message, AggregateRequest)
        and (w.message.group, w.message.position) == (leaf.id, 0)
    )
    before = len(group_sums_sent(fed))
    # The backup may hold a seat elsewhere and send its sum too: count from here.
    up_before = sum(w.sender == backup and w.kind == Kind.PARTIAL for w in fed.network.sent)
    for included in (members, members[:-1]):
        fed.deliver(Wire(COORDINATOR, backup, request))  # seat the backup (again)
        notice = encode_reassign(Reassign(leaf.id, 0, backup))
        for member in members:
            _from_coordinator(fed, member, Kind.RESEND_SHARE, notice)
        fed.run()  # the resealed shares reach the backup; it reports
        _from_coordinator(fed, backup, Kind.COMMIT, encode_commit(Commit(leaf.id, included)))
        fed.run()
    sums_up = [w for w in fed.network.sent if w.sender == backup and w.kind == Kind.PARTIAL]
    assert len(sums_up) - up_before == 2  # it summed both sets
    told = [w for w in group_sums_sent(fed)[before:] if w.sender == backup]
    assert len(told) == 1  # and disclosed only the first


def test_more_backups_than_seats_refuse_group_sums() -> None:
    with pytest.raises(ConfigError, match="backups below"):
        replace(DISCLOSING, tree=replace(TREE, backups=3))
    replace(JOB_SECURE, tree=replace(TREE, backups=3))  # without group sums: fine


def test_only_a_leaf_server_may_relay_a_group_sum_to_the_coordinator() -> None:
    many = [NodeId(f"node-{i:03d}") for i in range(60)]
    tree = TreeCheck(PARAMS, many, replace(TREE, group_size=12)).tree(0)  # few leaf servers
    roles = RelayRoles(tree, group_sums=True)
    leaf, root = tree.leaves[0], tree.root
    leaf_servers = {n for g in tree.leaves for n in (*g.aggregators, *g.backups)}
    upper_only = next(n for n in (*root.aggregators, *root.backups) if n not in leaf_servers)
    contributor = next(m for m in leaf.members if m not in leaf_servers)
    assert roles.problem(leaf.aggregators[0], COORDINATOR, Kind.GROUP_SUM) is None
    assert roles.problem(leaf.backups[0], COORDINATOR, Kind.GROUP_SUM) is None  # standing in
    assert "no leaf group" in str(roles.problem(upper_only, COORDINATOR, Kind.GROUP_SUM))
    assert "no leaf group" in str(roles.problem(contributor, COORDINATOR, Kind.GROUP_SUM))
    parent = root.aggregators[0]
    assert "only to the coordinator" in str(
        roles.problem(leaf.aggregators[0], parent, Kind.GROUP_SUM)
    )
    # A round that discloses none: nobody, and a job without them has no such kind at all.
    plain = RelayRoles(tree)
    assert "discloses no group sums" in str(
        plain.problem(leaf.aggregators[0], COORDINATOR, Kind.GROUP_SUM)
    )
    bounds = relay_bounds(4, secure=True, k=3, group_size=4, fan_in=3, audit=True)
    assert Kind.GROUP_SUM not in bounds.limits
    disclosing = relay_bounds(
        4, secure=True, k=3, group_size=4, fan_in=3, audit=True, group_sums=True
    )
    assert disclosing.limits[Kind.GROUP_SUM] == disclosing.limits[Kind.PARTIAL]
    assert disclosing.count > bounds.count and disclosing.bytes > bounds.bytes


@pytest.mark.parametrize("secure", [DISCLOSING, JOB_SECURE])
def test_the_coordinators_relay_asks_the_open_rounds_roles(secure: SecureParams) -> None:
    fed = federation(secure, secure)
    coordinator = fed.coordinator
    assert isinstance(coordinator, SecureCoordinator)
    assert coordinator.relay_problem(IDS[0], COORDINATOR, Kind.GROUP_SUM) == "no round is open"
    fed.begin()
    assert coordinator._rs is not None
    seat = coordinator._rs.tree.leaves[0].aggregators[0]
    problem = coordinator.relay_problem(seat, COORDINATOR, Kind.GROUP_SUM)
    if secure.group_sums:
        assert problem is None
    else:
        assert problem == "this round discloses no group sums"


def test_the_coordinator_refuses_a_group_sum_it_is_not_owed() -> None:
    """Forged or misdirected group sums reaching the machine change nothing."""
    fed = federation(DISCLOSING, DISCLOSING)
    coordinator = fed.coordinator
    assert isinstance(coordinator, SecureCoordinator)
    _hold(fed, Kind.GROUP_SUM, Kind.PARTIAL, to=COORDINATOR)  # the round stays open
    fed.begin()
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.run()
    real = next(w for w in fed.network.held if w.kind == Kind.GROUP_SUM)
    fed.network.held.remove(real)
    keys = {n: m.aggregator.keys for n, m in fed.nodes.items()}  # type: ignore[attr-defined]

    def forged(sender: NodeId, payload: bytes) -> list:
        data = seal(
            kind=int(Kind.GROUP_SUM),
            job_id=PARAMS.job_id,
            round=0,
            sender=sender,
            recipient=COORDINATOR,
            payload=payload,
            sender_keys=keys[sender],
            recipient_public=coordinator.keys.public,
        )
        return fed.deliver(Wire(sender, COORDINATOR, Sealed(data)))

    env = open_envelope(
        real.data,
        recipient_keys=coordinator.keys,
        directory=coordinator.directory,
        expect_job=PARAMS.job_id,
        expect_round=0,
        expect_recipient=COORDINATOR,
        max_bytes=len(real.data),
        replay=None,
    )
    part = decode_partial(env.payload)
    assert coordinator._rs is not None
    tree = coordinator._rs.tree
    member = next(m for m in tree.group(part.group).members if m != real.sender)
    refused = len(fed.refused)
    forged(member, env.payload)  # a member, not the seat
    wrong_count = encode_partial(part.group, part.position, part.contributors - 1, part.words)
    forged(real.sender, wrong_count)
    fed.deliver(real)
    forged(real.sender, env.payload)  # a second one for the same seat
    reasons = [r.reason for _, r in fed.refused[refused:]]
    assert len(reasons) == 3, reasons
    assert "does not serve" in reasons[0]
    assert "does not cover" in reasons[1]
    assert "already arrived" in reasons[2]
    fed.network.delay = None
    fed.network.release()
    fed.settle(until=lambda: bool(fed.closed))
    assert fed.closed[0].groups_withheld is None and fed.closed[0].group_sums
    assert len(fed.refused) == refused + 3  # the honest parts were all taken


def test_a_job_without_group_sums_takes_none() -> None:
    """Even past the relay, the machine of a job that discloses nothing opens no group sum."""
    fed = federation(JOB_SECURE, JOB_SECURE)
    coordinator = fed.coordinator
    assert isinstance(coordinator, SecureCoordinator)
    fed.begin()
    assert coordinator._rs is not None
    leaf = coordinator._rs.tree.leaves[0]
    seat = leaf.aggregators[0]
    keys = fed.nodes[seat].aggregator.keys  # type: ignore[attr-defined]
    payload = encode_partial(leaf.id, 0, len(leaf.members), np.zeros(7, np.uint32))
    data = seal(
        kind=int(Kind.GROUP_SUM),
        job_id=PARAMS.job_id,
        round=0,
        sender=seat,
        recipient=COORDINATOR,
        payload=payload,
        sender_keys=keys,
        recipient_public=coordinator.keys.public,
    )
    fed.deliver(Wire(seat, COORDINATOR, Sealed(data)))
    assert [r.reason for _, r in fed.refused] == ["this round discloses no group sums"]
