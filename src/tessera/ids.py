"""Identifiers shared by every layer."""

from __future__ import annotations

from enum import StrEnum
from typing import NewType

NodeId = NewType("NodeId", str)
JobId = NewType("JobId", str)

COORDINATOR = NodeId("coordinator")

#: How many hex digits of a job document's digest its id carries (64 bits).
JOB_DIGEST_DIGITS = 16


def job_id_of(name: str, digest: str) -> JobId:
    """A job's id: its name and the start of its signed document's digest.

    Derived, never chosen: nobody can take a job's id first (another document
    has another id), and an id a user is told names one document's content.
    Finding another document with the same id is a 64-bit second preimage.
    """
    return JobId(f"{name}-{digest[:JOB_DIGEST_DIGITS]}")


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
