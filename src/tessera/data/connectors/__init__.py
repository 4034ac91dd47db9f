"""Data-provider connectors: serve one user's records from a table or a learning-record store.

Pure backends (no HTTP, no consent logic): ``TableBackend`` over any table
``load_table`` reads, ``XapiBackend`` over xAPI statements selected by an
``XapiQuery`` and flattened by an ``XapiExtraction``. The provider service
(``tessera.data_provider.app``) puts them behind the consent gate.
"""

from tessera.data.connectors._chem97 import (
    CHEM97_ACTIVITY_A_LEVEL,
    CHEM97_ACTIVITY_GCSE,
    CHEM97_COLUMNS,
    CHEM97_EXTENSIONS,
    CHEM97_EXTRACTION,
    CHEM97_QUERY,
    VERB_COMPLETED,
    VERB_SCORED,
    chem97_statements,
    write_chem97_statements,
)
from tessera.data.connectors._config import DatasetConfig, TableDataset, XapiDataset
from tessera.data.connectors._table import FIELD_TYPES, Backend, FieldType, TableBackend
from tessera.data.connectors._xapi import (
    VERB_VOIDED,
    XapiBackend,
    XapiColumn,
    XapiCondition,
    XapiExtraction,
    XapiQuery,
    parse_duration,
    parse_timestamp,
    read_statements,
)

__all__ = [
    "CHEM97_ACTIVITY_A_LEVEL",
    "CHEM97_ACTIVITY_GCSE",
    "CHEM97_COLUMNS",
    "CHEM97_EXTENSIONS",
    "CHEM97_EXTRACTION",
    "CHEM97_QUERY",
    "FIELD_TYPES",
    "VERB_COMPLETED",
    "VERB_SCORED",
    "VERB_VOIDED",
    "Backend",
    "DatasetConfig",
    "FieldType",
    "TableBackend",
    "TableDataset",
    "XapiBackend",
    "XapiColumn",
    "XapiCondition",
    "XapiDataset",
    "XapiExtraction",
    "XapiQuery",
    "chem97_statements",
    "parse_duration",
    "parse_timestamp",
    "read_statements",
    "write_chem97_statements",
]
