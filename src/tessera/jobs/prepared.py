"""From a validated job config to everything a runtime needs to run it.

Both runtimes start here: load the table, hold out the AI provider's test
set (whole groups when ``data.holdout.by`` is set), fit the preprocessing on
the nodes' records only, partition those records into nodes, and build the
model spec, recipe, strategy and protocol parameters. Data problems are
reported against the config field that caused them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.config import JobConfig
from tessera.data import (
    Labels,
    Partition,
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
)
from tessera.errors import ConfigError, DataError
from tessera.ids import JobId, NodeId, Task
from tessera.protocol import RoundParams, SecureParams, Strategy, TreeParams, make_strategy
from tessera.training import ModelSpec, Recipe, init_weights, layout
from tessera.weights import Layout, Vector


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
    # The fitted encoding; its target_from_model puts a regression's RMSE and MAE on the
    # target's own scale (tessera.runtime.sim.job.holdout_scores).
    preprocessor: Preprocessor | None = None

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
    )


def recipe_of(cfg: JobConfig) -> Recipe:
    r = cfg.recipe
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
    )


def strategy_of(cfg: JobConfig) -> Strategy:
    return make_strategy(cfg.strategy.name, **cfg.strategy.params)


def secure_params_of(cfg: JobConfig, *, clip_norm: float, max_weight: float) -> SecureParams:
    """Secure-aggregation settings; ``max_weight`` where the config leaves it open."""
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


def _carried_column(cfg: JobConfig, train_df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The column ``transform`` keeps per record: the natural partition's, or, for a
    per-record job with organisations, each record's row number (``_organisations``)."""
    if cfg.partition.scheme == "natural":
        return train_df, cfg.partition.column
    if cfg.partition.scheme == "per_record" and cfg.secure.organisation_column is not None:
        return train_df.assign(**{_ROW: np.arange(len(train_df))}), _ROW
    return train_df, None


def split_table(cfg: JobConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The nodes' records and the AI provider's held-out test set, columns checked."""
    d, seed = cfg.data, cfg.job.seed
    try:
        table = load_table(d.source, d.dataset)
    except DataError as exc:
        raise ConfigError("data.dataset", str(exc)) from None
    named = [
        (d.target, "data.target"),
        (d.holdout.by, "data.holdout.by"),
        (cfg.partition.column, "partition.column"),
        (cfg.secure.organisation_column, "secure.organisation_column"),
        *((f, "data.features") for f in d.features),
        *((c, "data.categorical") for c in d.categorical),
    ]
    for name, field in named:
        if name is not None:
            try:
                require_columns(table, [name])
            except DataError as exc:
                raise ConfigError(field, str(exc)) from None
    try:
        if d.holdout.fraction == 0:
            train_df, test_df = table, table.iloc[:0]
        else:
            train_df, test_df = split_holdout(
                table, by=d.holdout.by, fraction=d.holdout.fraction, seed=seed
            )
    except DataError as exc:
        raise ConfigError("data.holdout", str(exc)) from None
    return train_df, test_df


def prepare_job(cfg: JobConfig) -> PreparedJob:
    """Load, split, preprocess and partition; every data failure names its field."""
    d, seed = cfg.data, cfg.job.seed
    train_df, test_df = split_table(cfg)
    try:
        pre = Preprocessor.fit(
            train_df,
            target=d.target,
            features=d.features,
            categorical=d.categorical,
            task=cfg.job.task,
            standardize=d.standardize,
            image_shape=tuple(d.image_shape) if d.image_shape else None,
        )
        carried, group_col = _carried_column(cfg, train_df)
        train = pre.transform(carried, group_column=group_col)
        test = pre.transform(test_df)
    except DataError as exc:
        raise ConfigError("data", str(exc)) from None
    try:
        part = _partition(cfg, train, seed)
    except DataError as exc:
        raise ConfigError("partition", str(exc)) from None

    spec, recipe = model_spec_of(cfg, pre), recipe_of(cfg)
    lay = layout(spec)
    return PreparedJob(
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
        preprocessor=pre,
    )
