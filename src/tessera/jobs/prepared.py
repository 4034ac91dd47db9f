"""From a validated job config to everything a runtime needs to run it.

Both runtimes start here: load the table, find the rows the missing-value
policy keeps (``data.missing``, derived columns ``data.derive`` computed
first), hold out the AI provider's test set among those usable rows (whole
groups when ``data.holdout.by`` is set), fit the preprocessing on the nodes'
records only (so no holdout value reaches an imputation or a derived
column's median), partition those records into nodes, and build the model
spec, recipe, strategy and protocol parameters. Rows the policy cannot use
stay with the nodes (a node receives its raw records and applies the same
policy), where they are dropped and counted per node (``MissingCounts``).
Data problems are reported against the config field that caused them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.config import JobConfig
from tessera.data import (
    DeriveError,
    Labels,
    Partition,
    Policy,
    PolicyError,
    Prepared,
    Preprocessor,
    dirichlet,
    iid,
    load_table,
    natural,
    per_record,
    quantity_skew,
    require_columns,
    split_holdout,
    usable_rows,
)
from tessera.data.derive import parse_derivations
from tessera.data.domains import every_feature
from tessera.data.federated import (
    FederatedSummaries,
    PrivateTotals,
    TotalsOf,
    column_report,
    node_of_rows,
    plain_totals,
)
from tessera.data.prepare import Summarizer, summarize
from tessera.data.statistics import Totals
from tessera.errors import ConfigError, DataError
from tessera.ids import JobId, NodeId, Task
from tessera.jobs.poison import poisoned
from tessera.jobs.privacy import privacy_params_of
from tessera.protocol import RoundParams, SecureParams, Strategy, TreeParams, make_strategy
from tessera.protocol.quality import QUALITY_HEAD
from tessera.training import ModelSpec, Recipe, init_weights, layout
from tessera.weights import Layout, Vector


@dataclass(frozen=True)
class MissingCounts:
    """What the missing-value policy did to the job's rows, in the nodes' part and the holdout.

    ``dropped``/``imputed``: per column, rows dropped for missing it (a row
    missing two columns counts in both) and values imputed. ``node_dropped``
    and ``node_imputed``: one count per node, in node order; ``node_dropped``
    is None unless the partition is natural (other schemes deal out only the
    rows kept, so a dropped row has no node), and ``dropped_outside`` counts
    dropped rows of the nodes' part that no node holds.
    """

    policy: dict[str, Policy]  # every feature's, and the target's ("drop")
    rows: int  # the nodes' part, as loaded (before the policy)
    test_rows: int  # the holdout, as drawn
    dropped_rows: int
    test_dropped_rows: int
    dropped: dict[str, int] = field(default_factory=dict)
    imputed: dict[str, int] = field(default_factory=dict)
    test_dropped: dict[str, int] = field(default_factory=dict)
    test_imputed: dict[str, int] = field(default_factory=dict)
    node_dropped: npt.NDArray[np.int64] | None = None
    node_imputed: npt.NDArray[np.int64] | None = None
    dropped_outside: int = 0

    @property
    def imputed_values(self) -> int:
        return sum(self.imputed.values())

    @property
    def test_imputed_values(self) -> int:
        return sum(self.test_imputed.values())

    def first(self, n: int) -> MissingCounts:
        """The same counts over the first ``n`` nodes (``PreparedJob.first_nodes``)."""
        if self.node_imputed is None or n >= len(self.node_imputed):
            return self
        node_dropped = None if self.node_dropped is None else self.node_dropped[:n]
        return replace(
            self,
            node_dropped=node_dropped,
            node_imputed=self.node_imputed[:n],
            dropped_outside=self.dropped_outside
            + (0 if self.node_dropped is None else int(self.node_dropped[n:].sum())),
        )


@dataclass(frozen=True)
class PreparedJob:
    config: JobConfig
    spec: ModelSpec
    recipe: Recipe
    layout: Layout
    initial_weights: Vector
    x: npt.NDArray[np.float32]  # the nodes' records, grouped by node
    y: Labels
    offsets: npt.NDArray[np.int64]  # node i holds rows offsets[i]:offsets[i+1]
    node_names: tuple[str, ...]
    test: Prepared  # the AI provider's held-out set
    feature_names: tuple[str, ...]
    classes: tuple[object, ...]
    organisations: tuple[str | None, ...] | None = None  # per node, when declared
    beacon: bytes = b""  # a deployment's tree beacon, to replay it exactly (SecureParams)
    job_id: str | None = None  # a deployment's job id, to replay it exactly; None: the name
    missing: MissingCounts | None = None  # what the missing-value policy dropped and imputed
    # The fitted encoding the nodes apply; its target_from_model puts a regression's RMSE
    # and MAE on the target's own scale (tessera.runtime.sim.job.holdout_scores).
    preprocessor: Preprocessor | None = None
    statistics: FederatedFit | None = None  # how the preprocessing was fitted, if federated
    # A deployment's replay: what each node counted in the job's statistics round.
    statistics_vectors: tuple[npt.NDArray[np.float64], ...] | None = None
    # A private job whose federated fit released noised statistics (``tessera run``):
    # each round's vector length, and the noise variance each held, for its ledger.
    statistics_lengths: tuple[int, ...] = ()
    statistics_spent: tuple[float, ...] = ()
    # Simulated poison (``jobs.poison``): nodes holding corrupted records, nodes whose
    # updates the simulator scales.
    corrupted: tuple[int, ...] = ()
    scaled: tuple[int, ...] = ()

    @property
    def task(self) -> Task:
        return self.config.job.task

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def node_samples(self) -> npt.NDArray[np.int64]:
        return np.diff(self.offsets)

    @property
    def node_ids(self) -> list[NodeId]:
        return [NodeId(f"node-{i:06d}") for i in range(self.n_nodes)]

    def first_nodes(self, n: int) -> PreparedJob:
        """The same job over its first ``n`` nodes and their records (for scale runs)."""
        if not 0 < n <= self.n_nodes:
            raise ConfigError("nodes", f"choose 1..{self.n_nodes} nodes, not {n}")
        stop = int(self.offsets[n])
        return replace(
            self,
            x=self.x[:stop],
            y=self.y[:stop],
            offsets=self.offsets[: n + 1],
            node_names=self.node_names[:n],
            organisations=self.organisations[:n] if self.organisations else None,
            missing=self.missing.first(n) if self.missing else None,
            corrupted=tuple(i for i in self.corrupted if i < n),
            scaled=tuple(i for i in self.scaled if i < n),
        )

    def round_params(self) -> RoundParams:
        return round_params_of(self.config, job_id=self.job_id)

    def strategy(self) -> Strategy:
        return strategy_of(self.config)


def model_spec_of(cfg: JobConfig, pre: Preprocessor) -> ModelSpec:
    """The declarative model: the config's architecture over the encoded features."""
    n_outputs = pre.n_classes if cfg.job.task is Task.CLASSIFICATION else 1
    assert n_outputs is not None
    return ModelSpec(
        kind=cfg.model.kind,
        input_shape=pre.input_shape,
        n_outputs=n_outputs,
        hidden=tuple(cfg.model.hidden),
        channels=tuple(cfg.model.channels),
        activation=cfg.model.activation,
        dropout=cfg.model.dropout,
    )


def recipe_of(cfg: JobConfig) -> Recipe:
    """The recipe every node runs; a schedule's parameters only for that schedule
    (so a constant rate keeps the recipe's JSON as it was before schedules)."""
    r = cfg.recipe
    schedule: dict[str, object] = {}
    if r.lr_schedule == "cosine":
        schedule = {"lr_min_fraction": r.lr_min_fraction, "lr_rounds": cfg.federation.rounds}
    elif r.lr_schedule == "step":
        schedule = {"lr_step_every": r.lr_step_every, "lr_gamma": r.lr_gamma}
    return Recipe(
        loss=cfg.loss,
        optimizer=r.optimizer,
        lr=r.lr,
        momentum=r.momentum,
        weight_decay=r.weight_decay,
        local_epochs=r.local_epochs,
        batch_size=r.batch_size,
        prox_mu=r.prox_mu,
        clip_norm=r.clip_norm,
        lr_schedule=r.lr_schedule,
        **schedule,  # type: ignore[arg-type]
    )


def round_params_of(cfg: JobConfig, *, job_id: str | None = None) -> RoundParams:
    """How the job's rounds run: the same for the simulator and a deployment.

    ``job_id``: a deployed job's id (derived from its document); default the name.
    """
    fed = cfg.federation
    return RoundParams(
        job_id=JobId(cfg.job.name if job_id is None else job_id),
        rounds=fed.rounds,
        fraction=fed.fraction,
        min_participants=fed.min_participants,
        min_updates=fed.min_updates,
        round_timeout=fed.round_timeout,
        seed=cfg.job.seed,
        fednova=cfg.strategy.normalize == "fednova",
        reweight_availability=cfg.federation.availability == "reweight",
        buffer=cfg.strategy.buffer,
        max_staleness=cfg.strategy.max_staleness,
        report_after=None
        if cfg.deadline is None or not cfg.secure.enabled
        else cfg.deadline.seconds + cfg.deadline.margin,
    )


def strategy_of(cfg: JobConfig) -> Strategy:
    return make_strategy(cfg.strategy.name, **cfg.strategy.params)


def secure_params_of(
    cfg: JobConfig, *, clip_norm: float, max_weight: float, classes: int, max_steps: float = 0.0
) -> SecureParams:
    """Secure-aggregation settings; ``max_weight`` where the config leaves it open. A job
    with group sums also has its contributors share their data-quality statistics, with
    a label distribution over ``classes`` (0: a regression). ``max_steps``: a FedNova
    job's bound on local steps (the scale of each contributor's steps word)."""
    s = cfg.secure
    return SecureParams(
        tree=TreeParams(
            k=s.k,
            group_size=s.group_size,
            fan_in=s.fan_in,
            min_group=s.min_group,
            backups=s.backups,
        ),
        clip=clip_norm,
        max_weight=s.max_weight or max_weight,
        loss_cap=s.loss_cap,
        phase_timeout=s.phase_timeout,
        audit=s.audit,
        audit_fraction=s.audit_fraction,
        precision=s.precision,
        group_sums=cfg.group_sums,
        group_floor=None if cfg.contributions is None else cfg.contributions.min_group,
        combine="mean" if cfg.contributions is None else cfg.contributions.combine,
        trim=0.1 if cfg.contributions is None else cfg.contributions.trim,
        quality=QUALITY_HEAD + classes if cfg.group_sums else 0,
        max_steps=max_steps if cfg.strategy.normalize == "fednova" else 0.0,
    )


def _partition(cfg: JobConfig, train: Prepared, seed: int) -> Partition:
    p = cfg.partition
    n = len(train.y)
    if p.scheme == "natural":
        assert train.groups is not None
        return natural(train.groups)
    if p.scheme == "per_record":
        return per_record(n)
    assert p.nodes is not None
    if p.scheme == "iid":
        return iid(n, p.nodes, seed)
    assert p.alpha is not None
    if p.scheme == "dirichlet":
        if cfg.job.task is not Task.CLASSIFICATION:
            raise ConfigError(
                "partition.scheme", "dirichlet label skew needs a classification task"
            )
        return dirichlet(train.y, p.nodes, p.alpha, seed, min_size=p.min_size)
    return quantity_skew(n, p.nodes, p.alpha, seed, min_size=p.min_size)


_ROW = "__tessera_row__"  # a per-record job's row numbers, carried through transform


def _organisations(
    cfg: JobConfig, train_df: pd.DataFrame, part: Partition, records: Prepared
) -> tuple[str | None, ...] | None:
    """Each node's organisation, from the column the job names (one value per node).

    A natural partition: the organisation of the group's records, which must
    agree. Per record: each node is one record, so its organisation is that
    record's value (``records.groups`` holds the row of ``train_df`` each kept
    record came from, ``_carried_column``); a missing value is no organisation,
    as for a group without one. Other partitions mix records of any organisation
    in a node, so they take no organisation column.
    """
    column = cfg.secure.organisation_column
    if column is None:
        return None
    scheme = cfg.partition.scheme
    if scheme == "per_record":
        assert records.groups is not None
        rows = records.groups[part.order].astype(np.int64)
        values = train_df[column].iloc[rows]
        return tuple(None if pd.isna(v) else str(v) for v in values)
    if scheme != "natural" or cfg.partition.column is None:
        raise ConfigError("secure.organisation_column", "needs a natural or a per_record partition")
    per_group = train_df.groupby(cfg.partition.column)[column]
    if (per_group.nunique() > 1).any():
        raise ConfigError(
            "secure.organisation_column", f"some {cfg.partition.column} spans several {column}"
        )
    owner = {str(k): str(v) for k, v in per_group.first().items()}
    return tuple(owner.get(name) for name in part.names)


def _data_error(exc: DataError, field: str) -> ConfigError:
    """A data failure as a ConfigError naming the job file's field."""
    if isinstance(exc, DeriveError):
        return ConfigError(f"data.derive[{exc.index}].{exc.field}", exc.message)
    if isinstance(exc, PolicyError):
        return ConfigError(f"data.{exc.field}", exc.message)
    return ConfigError(field, str(exc))


class _FitArgs(TypedDict):
    derive: list[tuple[str, str]]
    missing: str
    missing_columns: dict[str, str]


def _fit_args(cfg: JobConfig) -> _FitArgs:
    """What the job file says of derived columns and missing values, as ``fit`` takes it."""
    d = cfg.data
    return {
        "derive": [(e.name, e.expr) for e in d.derive],
        "missing": d.missing.default,
        "missing_columns": dict(d.missing.columns),
    }


def _features(cfg: JobConfig, columns: pd.Index) -> list[str]:
    """The job's features; none named: every column and derived column but the target
    and the partition's column (a deployment's user field: never a feature there either,
    ``data.domains.every_feature``)."""
    d = cfg.data
    if d.features:
        return list(d.features)
    try:
        derived = parse_derivations([(e.name, e.expr) for e in d.derive])
    except DeriveError as exc:
        raise _data_error(exc, "data") from None
    user = [cfg.partition.column] if cfg.partition.column else []
    return every_feature(
        [str(c) for c in columns], target=d.target, derive=derived, identifying=user
    )


def _carried_column(cfg: JobConfig, train_df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The column ``transform`` keeps per record: the natural partition's, or, for a
    per-record job with organisations, each record's row number (``_organisations``)."""
    if cfg.partition.scheme == "natural":
        return train_df, cfg.partition.column
    if cfg.partition.scheme == "per_record" and cfg.secure.organisation_column is not None:
        return train_df.assign(**{_ROW: np.arange(len(train_df))}), _ROW
    return train_df, None


def split_table(cfg: JobConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The nodes' records and the AI provider's held-out test set, columns checked.

    Both raw (derived columns are computed by the preprocessor). The holdout
    is drawn among the rows the missing-value policy keeps, so its fraction
    is of usable rows; the others stay in the nodes' part.
    """
    d, seed = cfg.data, cfg.job.seed
    try:
        table = load_table(d.source, d.dataset)
    except DataError as exc:
        raise ConfigError("data.dataset", str(exc)) from None
    derived = {e.name for e in d.derive}
    named = [
        (d.target, "data.target"),
        (d.holdout.by, "data.holdout.by"),
        (cfg.partition.column, "partition.column"),
        (cfg.secure.organisation_column, "secure.organisation_column"),
        *((f, "data.features") for f in d.features),
        *((c, "data.categorical") for c in d.categorical),
    ]
    for name, where in named:
        if name is not None and not (name in derived and where.startswith("data.")):
            try:
                require_columns(table, [name])
            except DataError as exc:
                raise ConfigError(where, str(exc)) from None
    try:
        usable = usable_rows(
            table,
            target=d.target,
            features=_features(cfg, table.columns),
            task=cfg.job.task,
            **_fit_args(cfg),
        )
    except DataError as exc:
        raise _data_error(exc, "data") from None
    try:
        if d.holdout.fraction == 0:
            train_df, test_df = table, table.iloc[:0]
        else:
            train_df, test_df = split_holdout(
                table, by=d.holdout.by, fraction=d.holdout.fraction, seed=seed, usable=usable
            )
    except DataError as exc:
        raise ConfigError("data.holdout", str(exc)) from None
    return train_df, test_df


def _per_node(
    values: npt.NDArray[np.int64], offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Sums of ``values`` (in node order) per node."""
    total = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    per_node: npt.NDArray[np.int64] = (total[offsets[1:]] - total[offsets[:-1]]).astype(np.int64)
    return per_node


def missing_counts(
    pre: Preprocessor,
    train: Prepared,
    test: Prepared,
    part: Partition,
    *,
    natural_partition: bool,
    rows: int,
    test_rows: int,
) -> MissingCounts:
    """Count what the policy did, per node too (see ``MissingCounts``)."""
    imputed_rows = train.imputed_per_row
    assert imputed_rows is not None
    node_imputed = _per_node(imputed_rows[part.order], part.offsets)
    node_dropped = None
    outside = train.n_dropped
    if natural_partition and train.dropped_groups is not None:
        index = {name: i for i, name in enumerate(part.names)}
        node_dropped = np.zeros(len(part.names), dtype=np.int64)
        for value in np.asarray(train.dropped_groups).tolist():
            at = index.get(str(value))
            if at is not None:
                node_dropped[at] += 1
        outside = train.n_dropped - int(node_dropped.sum())
    return MissingCounts(
        policy={pre.target: "drop", **pre.missing_policy},
        rows=rows,
        test_rows=test_rows,
        dropped_rows=train.n_dropped,
        test_dropped_rows=test.n_dropped,
        dropped={c: n for c, n in train.dropped_by.items() if n},
        imputed=dict(train.imputed),
        test_dropped={c: n for c, n in test.dropped_by.items() if n},
        test_imputed=dict(test.imputed),
        node_dropped=node_dropped,
        node_imputed=node_imputed,
        dropped_outside=outside,
    )


def prepare_job(cfg: JobConfig, *, totals_of: TotalsOf | None = None) -> PreparedJob:
    """Load, split, preprocess and partition; every data failure names its field.

    With ``totals_of``, every number the preprocessing learns comes from the
    nodes' own statistics totalled by it (``data.federated``: the secure
    aggregation of ``runtime.sim.statistics.totals_for``, or a clear sum);
    without, from the pooled training rows.
    """
    seed = cfg.job.seed
    train_df, test_df = split_table(cfg)
    fit = _fit(cfg)
    try:
        pre = fit(train_df, summarize)
        carried, group_col = _carried_column(cfg, train_df)
        train = pre.transform(carried, group_column=group_col)
    except DataError as exc:
        raise _data_error(exc, "data") from None
    try:
        part = _partition(cfg, train, seed)
    except DataError as exc:
        raise ConfigError("partition", str(exc)) from None
    statistics = None
    private = _private_statistics(cfg, pre, totals_of)
    try:
        if totals_of is not None:  # the pooled fit only decided who holds which row
            pre, train, statistics = _federated_fit(cfg, train_df, pre, part, totals_of)
        test = pre.transform(test_df)
    except DataError as exc:
        raise _data_error(exc, "data") from None
    if private and statistics is not None and statistics.rounds != len(private):
        raise DataError(  # the calibration counted other rounds than were released
            f"{statistics.rounds} statistics rounds ran, {len(private)} were budgeted"
        )

    spec, recipe = model_spec_of(cfg, pre), recipe_of(cfg)
    lay = layout(spec)
    job = PreparedJob(
        config=cfg,
        spec=spec,
        recipe=recipe,
        layout=lay,
        initial_weights=lay.flatten(init_weights(spec, seed)),
        x=train.x[part.order],
        y=train.y[part.order],
        offsets=part.offsets,
        node_names=part.names,
        organisations=_organisations(cfg, train_df, part, train),
        test=test,
        feature_names=pre.feature_names,
        classes=tuple(pre.classes),
        missing=missing_counts(
            pre,
            train,
            test,
            part,
            natural_partition=cfg.partition.scheme == "natural",
            rows=len(train_df),
            test_rows=len(test_df),
        ),
        preprocessor=pre,
        statistics=statistics,
        statistics_lengths=private,
        statistics_spent=tuple(totals_of.spent) if isinstance(totals_of, PrivateTotals) else (),
    )
    return poisoned(job)  # [simulation.poison], if the job asks for any


def _fit(cfg: JobConfig) -> Callable[[pd.DataFrame, Summarizer], Preprocessor]:
    d = cfg.data

    def fit(train_df: pd.DataFrame, summarizer: Summarizer) -> Preprocessor:
        return Preprocessor.fit(
            train_df,
            target=d.target,
            features=_features(cfg, train_df.columns),
            categorical=d.categorical,
            categories=d.categories,
            task=cfg.job.task,
            standardize=d.standardize,
            image_shape=tuple(d.image_shape) if d.image_shape else None,
            summarize=summarizer,
            **_fit_args(cfg),
        )

    return fit


@dataclass(frozen=True)
class FederatedFit:
    """How the preprocessing was fitted: statistics rounds over the nodes, and how."""

    rounds: int  # one, or two when derived columns use a median or a mean
    nodes: int
    secure: bool
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)  # column_report


def _holders(
    pre: Preprocessor, rows: pd.DataFrame, part: Partition
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """The rows ``pre`` keeps (positions in ``rows``), and the node holding each row."""
    kept = pre.transform(rows.assign(**{_ROW: np.arange(len(rows))}), group_column=_ROW)
    assert kept.groups is not None
    positions = kept.groups.astype(np.intp)
    return positions, node_of_rows(len(rows), positions, part.order, part.offsets)


def _private_statistics(
    cfg: JobConfig, pooled: Preprocessor, totals_of: TotalsOf | None
) -> tuple[int, ...]:
    """The lengths of a private job's statistics rounds, made private in ``totals_of``
    (``data.federated.PrivateTotals``) with the job's calibration over its training and
    statistics rounds alike; () when they are released exact."""
    p = cfg.privacy
    if p is None or not p.statistics or not isinstance(totals_of, PrivateTotals):
        return ()
    clip = recipe_of(cfg).clip_norm
    if clip is None:
        return ()  # a secure job declares it; the config refuses others before this
    lengths = tuple(plan.length for plan in pooled.statistics_plans())
    n_weights = layout(model_spec_of(cfg, pooled)).size  # the refit changes no width
    privacy = privacy_params_of(cfg, clip_norm=clip, n_weights=n_weights, statistics=lengths)
    totals_of.make_private(privacy, clip)
    return lengths


def _federated_fit(
    cfg: JobConfig,
    train_df: pd.DataFrame,
    pooled: Preprocessor,
    part: Partition,
    totals_of: TotalsOf,
) -> tuple[Preprocessor, Prepared, FederatedFit]:
    """Fit again, from the totals of each node's own statistics of the rows it holds.

    The same rows stay usable (the policy decides that, not the statistics), so
    the partition the pooled fit found still holds; it is checked.
    """
    rows = train_df.reset_index(drop=True)  # one label per row, to find its node
    kept, node = _holders(pooled, rows, part)
    summaries = FederatedSummaries(pd.Series(node, index=rows.index), part.n_nodes, totals_of)
    pre = _fit(cfg)(rows, summaries)
    carried, group_col = _carried_column(cfg, rows)
    train = pre.transform(carried, group_column=group_col)
    again, _ = _holders(pre, rows, part)
    if not np.array_equal(again, kept):
        raise DataError(
            "the rows usable under the federated statistics differ from the pooled ones "
            "(a derived column's median or mean decides which rows are missing?)"
        )
    secure = totals_of is not plain_totals
    fitted = FederatedFit(
        rounds=summaries.rounds, nodes=part.n_nodes, secure=secure, columns=summaries.columns
    )
    return pre, train, fitted


def rescale_job(
    job: PreparedJob,
    totals: Sequence[Totals],
    encoding: Preprocessor | None = None,
    *,
    nodes: int | None = None,
) -> PreparedJob:
    """``job`` (``prepare_job``'s, maybe ``first_nodes``) as a deployment with statistics
    rounds runs it: the job document's ``encoding`` (default: the job's own) refitted
    from every round's ``totals`` (``Preprocessor.refitted``), the nodes' records and the
    test set encoded again, what each node counted in each round (``statistics_vectors``,
    for the simulator's replay of the rounds), and what the AI provider learns of the
    nodes' data from the totals alone (``missing``, ``statistics``: ``nodes`` in the
    last round's total, default all)."""
    cfg, pooled = job.config, job.preprocessor
    assert pooled is not None
    document = encoding or pooled
    standardize = cfg.data.standardize
    pre = document.refitted(totals, standardize=standardize)
    train_df, test_df = split_table(cfg)
    rows = train_df.reset_index(drop=True)
    carried, group_col = _carried_column(cfg, rows)
    train = pre.transform(carried, group_column=group_col)
    part = _partition(cfg, train, cfg.job.seed)
    stop = int(job.offsets[-1])
    if not np.array_equal(part.offsets[: job.n_nodes + 1], job.offsets):
        raise DataError("the refitted encoding keeps other rows than the job's")
    _, node = _holders(pooled, rows, part)
    vectors = []
    for r in range(len(totals)):  # each round counts with the earlier rounds' statistics
        plan, counted = document.refitted(totals[:r], standardize=standardize).counted(rows, r)
        holder = node[counted.index.to_numpy()]
        in_job = holder < job.n_nodes  # the first nodes only
        vectors.append(
            plan.vectors(counted.iloc[np.flatnonzero(in_job)], holder[in_job], job.n_nodes)
        )
    test = pre.transform(test_df)
    return replace(
        job,
        x=train.x[part.order][:stop],
        y=train.y[part.order][:stop],
        test=test,
        preprocessor=pre,
        statistics_vectors=tuple(vectors),
        missing=totalled_missing(pre, totals[-1], test, test_rows=len(test_df)),
        statistics=FederatedFit(
            rounds=len(totals),
            nodes=job.n_nodes if nodes is None else nodes,
            secure=True,
            columns=column_report(totals[-1]),
        ),
    )


def totalled_missing(
    pre: Preprocessor, totals: Totals, test: Prepared, *, test_rows: int
) -> MissingCounts:
    """What the missing-value policy did, as the AI provider of a deployment knows it: the
    nodes' part from the statistics total (``StatisticsPlan.dropped``, and each imputed
    column's missing count among the rows kept), the holdout from its own rows. Per node
    counts are no aggregate: none (each node's would be its user's)."""
    if totals.rows is None:
        raise DataError("the statistics total counts no dropped rows")
    imputed = {}
    for column in pre.columns:
        if column.missing == "drop":
            continue
        counted = totals.numeric.get(column.name) or totals.categorical[column.name]
        imputed[column.name] = counted.missing
    return MissingCounts(
        policy={pre.target: "drop", **pre.missing_policy},
        rows=totals.rows.rows,
        test_rows=test_rows,
        dropped_rows=totals.rows.dropped,
        test_dropped_rows=test.n_dropped,
        dropped={c: n for c, n in totals.rows.dropped_by.items() if n},
        imputed=imputed,
        test_dropped={c: n for c, n in test.dropped_by.items() if n},
        test_imputed=dict(test.imputed),
    )
