"""A secure job's static facts: its parameters and what metrics.json says of its tree."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tessera.data.statistics import TERM_BOUND
from tessera.jobs.prepared import PreparedJob, secure_params_of
from tessera.jobs.privacy import privacy_params_of
from tessera.protocol.limits import TAIL
from tessera.protocol.noise import PrivacyParams
from tessera.protocol.params import StatisticsRound
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import derive_tree


def secure_params(job: PreparedJob) -> SecureParams:
    """The job's secure settings; with ``statistics_vectors`` (a deployment's replay),
    the job opens with the statistics rounds those vectors are counted in."""
    assert job.recipe.clip_norm is not None  # the config refuses secure jobs without it
    params = secure_params_of(
        job.config,
        clip_norm=job.recipe.clip_norm,
        max_weight=float(job.node_samples.max()),
        classes=job.spec.n_outputs if job.recipe.loss == "cross_entropy" else 0,
        max_steps=max_local_steps(job),
    )
    vectors = job.statistics_vectors
    lengths = () if vectors is None else tuple(v.shape[1] for v in vectors)
    # Released: the replayed rounds, or those tessera run's fit already noised.
    released = lengths or job.statistics_lengths
    privacy = privacy_params_of(
        job.config, clip_norm=job.recipe.clip_norm, n_weights=job.layout.size, statistics=released
    )
    statistics = StatisticsRound(lengths=lengths, bound=TERM_BOUND) if lengths else None
    return replace(params, beacon=job.beacon, statistics=statistics, privacy=privacy)


def max_local_steps(job: PreparedJob) -> float:
    """The most local steps any node takes in a round: the bound a FedNova job's steps
    word is scaled by (public: the node sizes' maximum is ``max_weight`` already)."""
    batches = -(-int(job.node_samples.max()) // job.recipe.batch_size)
    return float(max(1, job.recipe.local_epochs * batches))


@dataclass(frozen=True)
class SecureSummary:
    """Static facts of a secure job, for metrics.json."""

    k: int
    group_size: int
    depth: int
    ring_bits: int
    model_bytes_quantized: int
    privacy: PrivacyParams | None = None  # a private job's calibrated noise


def summarize(job: PreparedJob) -> SecureSummary:
    params = secure_params(job)
    rp = job.round_params()
    cohort = rp.cohort_size(job.n_nodes)
    nodes = job.node_ids
    orgs = job.organisations or (None,) * len(nodes)
    tree = derive_tree(
        job_id=rp.job_id,
        round=0,
        nodes=dict(zip(nodes, orgs, strict=True)),
        contributors=nodes[:cohort],
        params=params.tree,
    )
    if params.privacy is not None:  # room for the noise, at the job's fixed scale
        ring = params.privacy.ring(bound=params.term_bound, cohort=cohort)
    else:
        ring = params.training_ring(cohort)
    return SecureSummary(
        k=params.tree.k,
        group_size=params.tree.group_size,
        depth=tree.depth,
        ring_bits=ring.bits,
        model_bytes_quantized=(job.layout.size + TAIL) * ring.bits // 8,
        privacy=params.privacy,
    )
