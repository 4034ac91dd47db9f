"""Global explanations and fairness of a trained model on held-out rows.

Permutation importance and integrated gradients per *source* feature (a
categorical's one-hot columns count as one), a saliency map for image models,
and metrics per group of a column (e.g. by gender). ``features``,
``importance``, ``attribution`` and ``fairness`` work on arrays and a torch
module; ``job`` applies them to a ``PreparedJob`` and its weights. torch loads
only when an attribution is computed.
"""

from tessera.explain.attribution import (
    AttributionTable,
    feature_attributions,
    integrated_gradients,
    saliency_map,
)
from tessera.explain.fairness import FairnessTable, GroupMetrics, group_metrics
from tessera.explain.features import Feature, each_column, source_features
from tessera.explain.importance import Importance, ImportanceTable, permutation_importance

__all__ = [
    "AttributionTable",
    "FairnessTable",
    "Feature",
    "GroupMetrics",
    "Importance",
    "ImportanceTable",
    "each_column",
    "feature_attributions",
    "group_metrics",
    "integrated_gradients",
    "permutation_importance",
    "saliency_map",
    "source_features",
]
