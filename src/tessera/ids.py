"""Identifiers shared by every layer."""

from __future__ import annotations

from enum import StrEnum
from typing import NewType

NodeId = NewType("NodeId", str)
JobId = NewType("JobId", str)

COORDINATOR = NodeId("coordinator")


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class Role(StrEnum):
    COORDINATOR = "coordinator"
    CONTRIBUTOR = "contributor"
    AGGREGATOR = "aggregator"


def node_id(index: int) -> NodeId:
    """The simulator's canonical name for virtual node ``index``."""
    return NodeId(f"node-{index:06d}")
