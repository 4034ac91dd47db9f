"""A deployed job: the AI provider's signed document, parsed and checked.

Everything a coordinator or a node needs to run a job travels in one signed
JSON document (kind "job"): the job config, the declarative model spec, the
recipe, the feature encoding (aggregate statistics from the data provider's
catalogue), the initial weights by SHA-256, the data it asks for, purpose and
minimum of consents. Its digest names the job in consent receipts, so a
receipt can never be reused for a changed job, and makes its id: the job's
name plus the digest's first digits (``ids.job_id_of``), so no one can take
a job's id first, and the id a user is told names one document.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tessera.config import JobConfig, parse_config
from tessera.crypto.documents import (
    DocumentKind,
    SignedDocument,
    sign_document,
    verify_document,
)
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.data.prepare import Preprocessor
from tessera.data.statistics import TERM_BOUND
from tessera.errors import ConfigError, RemoteProtocolError
from tessera.ids import JOB_DIGEST_DIGITS, JobId, NodeId, job_id_of
from tessera.jobs.prepared import round_params_of, secure_params_of, strategy_of
from tessera.jobs.privacy import privacy_params_of
from tessera.protocol import RoundParams, SecureParams, Strategy
from tessera.protocol.limits import MAX_PARAMETERS
from tessera.protocol.params import StatisticsRound
from tessera.training import ModelSpec, Recipe

JOB_KIND = DocumentKind.JOB
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A name leaves room in the 64-character id for "-" and the digest's first digits.
_NAME_LENGTH = 64 - 1 - JOB_DIGEST_DIGITS
_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{_NAME_LENGTH - 1}}}$")


@dataclass(frozen=True)
class DataRequest:
    """What the job asks of the data provider: one dataset, some fields, keyed by user."""

    # The fingerprint of the data provider's keys: it refuses a job that does not name it,
    # and a node takes part only in jobs naming the provider its own user enrolled with.
    # Never a URL: where records are fetched is the node's (its user's) business.
    provider: str
    dataset: str
    fields: tuple[str, ...]
    user_field: str

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "dataset": self.dataset,
            "fields": list(self.fields),
            "user_field": self.user_field,
        }


@dataclass(frozen=True)
class JobSpec:
    document: SignedDocument
    job_id: JobId
    config: JobConfig
    model: ModelSpec
    recipe: Recipe
    preprocessing: dict[str, Any]
    weights_sha256: str
    n_weights: int
    data: DataRequest
    purpose: str
    min_consents: int
    ai_provider: PublicKeys
    created_at: float
    # A secure job whose first rounds total the nodes' statistics (one per derived
    # column's median or mean, then the plan's): every number of ``preprocessing``
    # (derived columns' statistics, scales, fills, the target's scale) is then refitted
    # from the totals (``Preprocessor.refitted``) by every node and the AI provider alike.
    statistics: bool = False

    @property
    def digest(self) -> str:
        return self.document.digest

    @property
    def secure(self) -> bool:
        return self.config.secure.enabled

    def round_params(self) -> RoundParams:
        return round_params_of(self.config, job_id=self.job_id)

    def strategy(self) -> Strategy:
        return strategy_of(self.config)

    def secure_params(self) -> SecureParams:
        if self.recipe.clip_norm is None or self.config.secure.max_weight is None:
            raise ConfigError("secure", "a deployed secure job declares clip_norm and max_weight")
        params = secure_params_of(
            self.config,
            clip_norm=self.recipe.clip_norm,
            max_weight=self.config.secure.max_weight,
            classes=self.model.n_outputs if self.recipe.loss == "cross_entropy" else 0,
        )
        lengths: tuple[int, ...] = ()
        if self.statistics:
            lengths = tuple(plan.length for plan in self.preprocessor().statistics_plans())
            if max(lengths) > MAX_PARAMETERS:  # every node would count, seal and send it
                raise ConfigError(
                    "statistics", f"a plan of {max(lengths):,} words is over {MAX_PARAMETERS:,}"
                )
        privacy = privacy_params_of(
            self.config, clip_norm=self.recipe.clip_norm, n_weights=self.n_weights,
            statistics=lengths,
        )  # fmt: skip
        params = replace(params, privacy=privacy)
        if not lengths:
            return params
        return replace(params, statistics=StatisticsRound(lengths=lengths, bound=TERM_BOUND))

    def preprocessor(self) -> Preprocessor:
        """The encoding the document carries (before the statistics rounds refit it)."""
        return Preprocessor.from_json(self.preprocessing)

    @classmethod
    def from_document(cls, doc: SignedDocument) -> JobSpec:
        """Verify the AI provider's signature and every field; ``RemoteProtocolError`` if bad."""
        body = verify_document(doc, kind=JOB_KIND)
        try:
            return cls._parse(doc, body)
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"job document: {exc}") from None

    @classmethod
    def _parse(cls, doc: SignedDocument, body: dict[str, Any]) -> JobSpec:
        if body.get("ai_provider") != doc.signer.fingerprint:
            raise RemoteProtocolError("job document is not signed by its AI provider")
        name = body["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"name must be 1-{_NAME_LENGTH} letters, digits, '.', '_' or '-'")
        config = parse_config(body["config"])
        if config.job.name != name:
            raise ValueError("name differs from config.job.name")
        weights = body["weights"]
        if not isinstance(weights.get("sha256"), str) or not _SHA256.match(weights["sha256"]):
            raise ValueError("weights.sha256 must be a hex SHA-256")
        data = body["data"]
        if not isinstance(data.get("provider"), str) or not _SHA256.match(data["provider"]):
            raise ValueError("data.provider must be the data provider's key fingerprint (hex)")
        fields = data["fields"]
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ValueError("data.fields must be a list of field names")
        min_consents = body["min_consents"]
        if not isinstance(min_consents, int) or min_consents < 1:
            raise ValueError("min_consents must be a positive integer")
        spec = cls(
            document=doc,
            job_id=job_id_of(name, doc.digest),
            config=config,
            model=ModelSpec.from_json(json.dumps(body["model"])),
            recipe=Recipe.from_json(json.dumps(body["recipe"])),
            preprocessing=dict(body["preprocessing"]),
            weights_sha256=weights["sha256"],
            n_weights=int(weights["length"]),
            data=DataRequest(
                provider=str(data["provider"]),
                dataset=str(data["dataset"]),
                fields=tuple(fields),
                user_field=str(data["user_field"]),
            ),
            purpose=str(body["purpose"]),
            min_consents=min_consents,
            ai_provider=doc.signer,
            created_at=float(body["created_at"]),
            statistics=_flag(body.get("statistics", False), "statistics"),
        )
        if spec.statistics and not spec.secure:
            raise ValueError("a statistics round is a secure job's")
        if spec.secure:
            spec.secure_params()  # a secure job must be complete
        return spec


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def check_tree_feasible(
    spec: JobSpec,
    n_nodes: int,
    organisations: Mapping[NodeId, str | None] | Sequence[str | None] | None = None,
) -> None:
    """Refuse (``ConfigError``) a secure job whose tree cannot be built from its nodes.

    Dry-runs the derivation of every training round's cohort (the first
    ``_FEASIBLE_ROUNDS`` in a federation of over ``_FEASIBLE_NODES`` nodes, whose
    trees have room to spare), so the AI provider hears at submission, not
    rounds into the job: a cohort that draws too many nodes of one organisation
    into one group can leave a later round unseatable. The beacon is not known
    yet; it only reshuffles seats, which ``derive_tree`` retries.
    ``organisations``: the nodes' own ids and organisations (the coordinator, at
    the start), or one organisation per stand-in node (``tessera up``, from the
    job's ``organisation_column``); the organisation rule can make a tree
    impossible that the bare count allows.
    """
    if not spec.secure:
        return
    from tessera.protocol import derive_tree, select_cohort

    params = spec.round_params()
    if isinstance(organisations, Mapping):
        nodes = dict(organisations)
    else:
        orgs = list(organisations or [None] * n_nodes)
        nodes = {NodeId(f"n{i:06d}"): orgs[i] if i < len(orgs) else None for i in range(n_nodes)}
    secure = spec.secure_params()
    first = secure.statistics.rounds if secure.statistics is not None else 0
    rounds = (
        params.rounds if len(nodes) <= _FEASIBLE_NODES else min(params.rounds, _FEASIBLE_ROUNDS)
    )
    for training in range(rounds):
        round = first + training  # the protocol's round: statistics rounds come first
        try:
            derive_tree(
                job_id=spec.job_id,
                round=round,
                nodes=nodes,
                contributors=select_cohort(params, sorted(nodes), round),
                params=secure.tree,
            )
        except ConfigError as exc:
            if training == 0:
                raise
            raise ConfigError(exc.field, f"round {round}'s cohort: {exc.message}") from None


#: Federations up to this size have every training round's tree dry-run at submission.
_FEASIBLE_NODES = 2000
_FEASIBLE_ROUNDS = 4


def make_job_document(
    keys: NodeKeys,
    *,
    config: JobConfig,
    model: ModelSpec,
    recipe: Recipe,
    preprocessing: dict[str, Any],
    weights_sha256: str,
    n_weights: int,
    data: DataRequest,
    purpose: str,
    min_consents: int,
    created_at: float | None = None,
    statistics: bool = False,
) -> SignedDocument:
    """The AI provider signs a job; ``JobSpec.from_document`` is its reader."""
    if config.deadline is not None or config.strategy.normalize != "none":
        # Deployed nodes neither stop at a deadline nor count their local steps yet.
        what = "deadline" if config.deadline is not None else "strategy.normalize"
        raise ConfigError(what, "deadline rounds and FedNova are the simulator's only, for now")
    if config.strategy.buffer is not None:
        # Deployed nodes neither carry an update over to a later round nor say so yet.
        raise ConfigError("strategy.buffer", "buffered rounds are the simulator's only, for now")
    body = {
        "name": config.job.name,
        "config": config.model_dump(mode="json"),
        "model": json.loads(model.to_json()),
        "recipe": json.loads(recipe.to_json()),
        "preprocessing": preprocessing,
        "weights": {"sha256": weights_sha256, "length": n_weights},
        "data": data.to_json(),
        "purpose": purpose,
        "min_consents": min_consents,
        "ai_provider": keys.public.fingerprint,
        "created_at": time.time() if created_at is None else created_at,
    }
    if statistics:  # absent otherwise: an older reader's documents stay byte for byte
        body["statistics"] = True
    doc = sign_document(keys, JOB_KIND, body)
    JobSpec.from_document(doc)  # refuse to sign what no one could read
    return doc
