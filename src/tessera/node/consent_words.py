"""A signed job document in plain words, for the user deciding on consent.

Pure: no I/O. ``job_words`` reads a verified ``JobSpec`` (never an unverified
document: ``JobSpec.from_document`` checks the AI provider's signature first)
and answers in five parts, each a few sentences: who trains, what, on which
fields, for how long, with which guarantees, plus the document's digest in
full. ``config_words`` does the same from the parts of a document, so a job
file can be read out before it is signed (the example jobs, in the tests).
Nothing here is HTML: the page escapes every string it is given.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tessera.config import JobConfig
from tessera.jobs.document import DataRequest, JobSpec
from tessera.sandbox import SandboxLimits
from tessera.training import ModelSpec

WHO, WHAT, FIELDS, HOW_LONG, GUARANTEES = (
    "Who trains",
    "What",
    "On which fields",
    "For how long",
    "With which guarantees",
)


@dataclass(frozen=True)
class Section:
    title: str
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class JobWords:
    job_id: str
    digest: str  # the signed document's, in full: what a consent receipt names
    purpose: str
    sections: tuple[Section, ...]

    def section(self, title: str) -> Section:
        return next(s for s in self.sections if s.title == title)

    def text(self) -> str:
        """Every sentence, one a line (for logs and tests)."""
        return "\n".join(s for sec in self.sections for s in sec.sentences)


def job_words(
    spec: JobSpec, *, consent_days: float = 30.0, limits: SandboxLimits | None = None
) -> JobWords:
    """The verified job ``spec`` in plain words; ``consent_days`` and ``limits`` are this
    node's (how long its receipt holds, what its sandbox allows a job)."""
    name = spec.document.body.get("ai_provider_name")
    return config_words(
        spec.config,
        job_id=spec.job_id,
        digest=spec.digest,
        ai_provider=spec.ai_provider.fingerprint,
        ai_provider_name=name if isinstance(name, str) else None,
        purpose=spec.purpose,
        data=spec.data,
        model=spec.model,
        n_weights=spec.n_weights,
        min_consents=spec.min_consents,
        created_at=spec.created_at,
        statistics=spec.statistics,
        consent_days=consent_days,
        limits=limits,
    )


def config_words(
    config: JobConfig,
    *,
    job_id: str,
    digest: str,
    ai_provider: str,
    data: DataRequest,
    purpose: str = "",
    ai_provider_name: str | None = None,
    model: ModelSpec | None = None,
    n_weights: int | None = None,
    min_consents: int | None = None,
    created_at: float | None = None,
    statistics: bool = False,
    consent_days: float = 30.0,
    limits: SandboxLimits | None = None,
) -> JobWords:
    """A job's parts in plain words (see ``job_words``)."""
    limits = limits or SandboxLimits()
    return JobWords(
        job_id=job_id,
        digest=digest,
        purpose=purpose,
        sections=(
            Section(WHO, _who(config, ai_provider, ai_provider_name, created_at)),
            Section(WHAT, _what(config, purpose, model, n_weights)),
            Section(FIELDS, _fields(config, data, statistics)),
            Section(HOW_LONG, _how_long(config, consent_days, min_consents)),
            Section(GUARANTEES, _guarantees(config, limits)),
        ),
    )


def _who(
    config: JobConfig, ai_provider: str, name: str | None, created_at: float | None
) -> tuple[str, ...]:
    who = [
        f"The AI provider whose key fingerprint is {ai_provider}"
        + (f", who calls itself “{name}”," if name else "")
        + " signed this job and trains the model.",
        "A coordinator relays the job's messages; it sees no records and, with secure "
        "aggregation, no single node's update."
        if config.secure.enabled
        else "A coordinator relays the job's messages and sees each node's model update.",
    ]
    if created_at is not None:
        when = dt.datetime.fromtimestamp(created_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        who.append(f"The job was signed on {when}.")
    return tuple(who)


def _what(
    config: JobConfig, purpose: str, model: ModelSpec | None, n_weights: int | None
) -> tuple[str, ...]:
    what = [f"Purpose: {purpose}." if purpose else f"Job {config.job.name}."]
    task = config.job.task
    what.append(
        f"Task: {task}, predicting “{config.data.target}” (the label)."
        if task
        else f"It predicts “{config.data.target}” (the label)."
    )
    kind = config.model.kind
    size = ""
    if kind == "mlp" and config.model.hidden:
        size = f" with hidden layers of {', '.join(str(h) for h in config.model.hidden)} units"
    elif kind == "cnn":
        size = f" with {', '.join(str(c) for c in config.model.channels)} channels"
    params = f", {n_weights:,} parameters in all" if n_weights is not None else ""
    what.append(f"Model: a {_MODEL_KINDS.get(kind, kind)}{size}{params}.")
    if model is not None and model.n_outputs > 1 and str(task) == "classification":
        what.append(f"It tells {model.n_outputs} classes apart.")
    what.append(
        f"Your node trains it on your records, {config.recipe.local_epochs} pass(es) "
        f"over them per round ({config.recipe.optimizer}, learning rate {config.recipe.lr:g})."
    )
    return tuple(what)


def _fields(config: JobConfig, data: DataRequest, statistics: bool) -> tuple[str, ...]:
    fields = [
        f"It reads the fields {_list(data.fields)} of the dataset “{data.dataset}”, "
        f"your records there being found by “{data.user_field}”.",
        f"The dataset is held by your data provider, whose key fingerprint is {data.provider}.",
    ]
    features = [f for f in config.data.features if f not in {d.name for d in config.data.derive}]
    if features:
        fields.append(f"Features used as inputs: {_list(features)}.")
    if config.data.categorical:
        fields.append(f"Read as categories: {_list(config.data.categorical)}.")
    for derived in config.data.derive:
        fields.append(f"Derived column “{derived.name}”, computed on your node as {derived.expr}.")
    if statistics:
        fields.append(
            "The encoding's statistics (counts, means, medians) are first totalled over all "
            "nodes in secure statistics rounds; no node's own statistics are revealed."
        )
    return tuple(fields)


def _how_long(config: JobConfig, consent_days: float, min_consents: int | None) -> tuple[str, ...]:
    rounds = config.federation.rounds
    how_long = [
        f"At most {rounds} training round(s); each round waits at most "
        f"{_seconds(config.federation.round_timeout)} for the nodes' updates.",
        f"Your consent holds for {consent_days:g} day(s) from when you grant it, "
        "unless you revoke it earlier: revoking stops your node taking part from the next "
        "round, and your data provider releases no more records for this job.",
    ]
    if config.federation.fraction < 1:
        how_long.append(
            f"Each round asks about {config.federation.fraction:.0%} of the nodes to train."
        )
    if min_consents is not None:
        how_long.append(f"It starts once {min_consents} user(s) have consented.")
    if config.secure.enabled:
        how_long.append(
            f"Each secure-aggregation step waits at most {_seconds(config.secure.phase_timeout)}."
        )
    return tuple(how_long)


def _guarantees(config: JobConfig, limits: SandboxLimits) -> tuple[str, ...]:
    guarantees = [
        "Your records never leave your node's sandbox: it trains with no network, "
        f"at most {limits.memory_bytes / 2**30:g} GiB of memory, {limits.cpu_seconds} CPU "
        f"seconds and {_seconds(limits.call_timeout)} per call.",
    ]
    if config.secure.enabled:
        s = config.secure
        guarantees.append(
            f"Secure aggregation: your update is split into shares held by {s.k} aggregators "
            f"(k = {s.k}); only sums over groups of about {s.group_size} nodes (never fewer "
            f"than {s.min_group}) are ever revealed."
        )
        if s.organisation_column:
            guarantees.append(
                f"No organisation (by “{s.organisation_column}”) fills all {s.k} seats of a group."
            )
        if s.audit:
            guarantees.append("Every partial sum is checked, so a tampering aggregator is named.")
    else:
        guarantees.append(
            "No secure aggregation: the coordinator and the AI provider see your node's update."
        )
    if config.privacy is not None:
        p = config.privacy
        guarantees.append(
            f"Differential privacy: the released totals are ({p.epsilon:g}, {p.delta:g})-DP "
            "in your node's whole contribution (epsilon, delta); "
            + (
                "the job stops before it would spend more."
                if p.on_budget == "stop"
                else "the AI provider is warned if it would spend more."
            )
        )
    else:
        guarantees.append("No differential privacy: the totals carry no added noise.")
    if config.contributions is not None and config.contributions.enabled:
        c = config.contributions
        policy = {
            "report": "reports each group's contribution",
            "exclude": "may exclude groups whose contribution harms the model",
            "reputation": "weighs groups by their past contributions",
        }[c.policy]
        guarantees.append(
            f"Contribution policy ({c.method}): the AI provider {policy}; it sees sums over "
            "groups of nodes, never one node's update."
        )
    return tuple(guarantees)


_MODEL_KINDS = {
    "linear": "linear model",
    "mlp": "neural network (multi-layer perceptron)",
    "cnn": "convolutional neural network",
}


def _list(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"“{i}”" for i in items) if items else "(none)"


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:g} hour(s)"
    if value >= 120:
        return f"{value / 60:g} minute(s)"
    return f"{value:g} seconds"
