"""Each secure round's record carries its execution tree's shape (for the report);
a plaintext round's carries none."""

from __future__ import annotations

from tessera.jobs.records import tree_fields
from tessera.reports.metrics import round_entry
from tessera.runtime.sim.job import simulate
from tessera.testing import chem97_job


def test_a_secure_round_records_its_tree_and_a_plaintext_one_none() -> None:
    job = chem97_job(nodes=60, rounds=2)
    secure = simulate(job, secure=True)
    for rec in secure.rounds:
        levels, sizes = rec.tree_levels, rec.tree_leaf_sizes
        assert len(levels) >= 2 and levels[-1] == 1  # one root
        assert levels[0] == sum(sizes[1::2])  # every leaf group counted once
        assert sum(s * n for s, n in zip(sizes[::2], sizes[1::2], strict=True)) == rec.selected
        assert rec.tree_aggregators >= 3 * levels[-1] and rec.tree_backups > 0
        entry = round_entry(rec, job.n_nodes)
        assert entry["tree_levels"] == list(levels)
    plain = simulate(job, secure=False)
    assert all(r.tree_levels == () and r.tree_aggregators == 0 for r in plain.rounds)
    assert tree_fields(None) == {}
