"""A dataset as its data provider's public catalogue describes it, and a job's encoding
built from that alone: no statistic is asked of the provider.

``schema_preprocessing`` fixes the encoding's width (features, categories,
classes) from the catalogue and the job file; every number in it is a
placeholder that the job's statistics round fits (``Preprocessor.rescaled``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tessera.config import JobConfig
from tessera.data._common import listing, suggest
from tessera.data.derive import Derivation, DeriveError, parse_derivations
from tessera.data.domains import every_feature
from tessera.data.prepare import Preprocessor
from tessera.errors import DataError, RemoteProtocolError
from tessera.ids import Task

#: The catalogue's type of a numeric field (``data.connectors.FieldType``).
NUMBER = "number"


@dataclass(frozen=True)
class Schema:
    """One dataset of a provider's catalogue: no record, no statistic but listed values.

    ``fields`` in the catalogue's order; ``types`` each field's type (number,
    category, string, datetime); ``values`` the values listed for each field
    of few values (those enough records hold; possibly none), absent for a
    field of many; ``identifying`` the fields that identify people (the user
    field, the provider's declared identifiers): never a job's to use.
    """

    fields: tuple[str, ...]
    types: Mapping[str, str]
    values: Mapping[str, tuple[Any, ...]]
    identifying: frozenset[str]

    @classmethod
    def from_catalogue(cls, entry: Mapping[str, Any]) -> Schema:
        """Read one dataset's catalogue entry (``RemoteProtocolError`` if malformed)."""
        try:
            fields = [
                (f["name"], f["type"], f.get("values"), f.get("identifies", False))
                for f in entry["fields"]
            ]
            user_field = entry["user_field"]
        except (KeyError, TypeError, AttributeError):
            raise RemoteProtocolError("the data provider's catalogue entry is malformed") from None
        for name, kind, values, identifies in fields:
            if not (
                isinstance(name, str)
                and isinstance(kind, str)
                and (values is None or isinstance(values, list))
                and isinstance(identifies, bool)
            ):
                raise RemoteProtocolError(f"the data provider's catalogue: bad field {name!r}")
        return cls(
            fields=tuple(name for name, *_ in fields),
            types={name: kind for name, kind, *_ in fields},
            values={name: tuple(v) for name, _, v, _ in fields if v is not None},
            # The user field too: a provider that marks no field still names it.
            identifying=frozenset({user_field, *(name for name, *_, i in fields if i)}),
        )


def schema_preprocessing(cfg: JobConfig, schema: Schema) -> tuple[dict[str, Any] | None, str]:
    """The job's encoding from the schema alone (``Preprocessor.schema``), its numbers to be
    fitted by the statistics round; or None and why it cannot be (the reason names the
    column and what to do), for the caller to fall back on the provider's aggregates.

    A job naming no features uses every field but the target and those that
    identify people, then every derived column but the target (as
    ``Preprocessor.fit`` takes every column after the derivations).
    """
    d = cfg.data
    try:
        derive = parse_derivations([(e.name, e.expr) for e in d.derive])
        features = list(d.features) or every_feature(
            schema.fields, target=d.target, derive=derive, identifying=schema.identifying
        )
        _check_fields(cfg, schema, features, derive)
        pre = Preprocessor.schema(
            target=d.target,
            features=features,
            categorical=d.categorical,
            task=cfg.job.task,
            standardize=d.standardize,
            derive=[(e.name, e.expr) for e in d.derive],
            missing=d.missing.default,
            missing_columns=dict(d.missing.columns),
            domains=schema.values,
            categories=d.categories,
        )
    except DataError as exc:
        return None, str(exc)
    return pre.to_json(), ""


def _check_fields(
    cfg: JobConfig, schema: Schema, features: Sequence[str], derive: Sequence[Derivation]
) -> None:
    """What the catalogue says against the job: fields it has, none that identify people,
    numbers where the encoding standardises."""
    d = cfg.data
    made = {e.name for e in derive}
    for e in derive:
        if e.name in schema.fields:
            raise DeriveError(e.index, "name", f"{e.name!r} is already a field of the dataset")
    used = [d.target, *features, *d.categorical, *(c for e in derive for c in e.inputs)]
    raw = [c for c in dict.fromkeys(used) if c not in made]
    for column in raw:
        if column not in schema.types:
            raise DataError(
                f"column {column!r} is not a field of the dataset{suggest(column, schema.fields)}; "
                f"fields: {listing(schema.fields)}"
            )
    banned = [c for c in raw if c in schema.identifying]
    if banned:
        raise DataError(
            f"column(s) {listing(map(repr, banned))} identify people (the data provider's "
            "catalogue marks them): a job may not use them"
        )
    target_type = schema.types.get(d.target, NUMBER)  # a derived target is a number
    if cfg.job.task is Task.REGRESSION and target_type != NUMBER:
        raise DataError(
            f"regression target {d.target!r} is a {target_type} field in the data "
            "provider's catalogue, not a number"
        )
    for column in features:
        kind = schema.types.get(column, NUMBER)  # a derived column is a number
        if column not in d.categorical and kind != NUMBER:
            also = "" if d.features else " (or name the features in data.features)"
            raise DataError(
                f"feature {column!r} is a {kind} field in the data provider's catalogue, not a "
                f"number: list it in data.categorical{also}"
            )
