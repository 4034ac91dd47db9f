"""Deadline rounds and FedNova are the simulator's: a deployed job refuses them."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.config import parse_config
from tessera.crypto.keys import NodeKeys
from tessera.errors import ConfigError
from tessera.jobs.document import make_job_document

BASE: dict[str, Any] = {
    "job": {"name": "d", "task": "classification"},
    "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
    "partition": {"scheme": "iid", "nodes": 4},
    "model": {"kind": "linear"},
    "federation": {"rounds": 1},
    "secure": {"enabled": False},
}


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"deadline": {"seconds": 30}}, "deadline"),
        ({"strategy": {"normalize": "fednova"}}, "strategy.normalize"),
    ],
)
def test_a_deployed_job_refuses_deadlines_and_fednova(section: dict[str, Any], field: str) -> None:
    cfg = parse_config({**BASE, **section})
    with pytest.raises(ConfigError) as caught:
        make_job_document(
            NodeKeys.generate(),
            config=cfg,
            model=None,  # type: ignore[arg-type]  (refused before the model is read)
            recipe=None,  # type: ignore[arg-type]
            preprocessing={},
            weights_sha256="0" * 64,
            n_weights=1,
            data=None,  # type: ignore[arg-type]
            purpose="test",
            min_consents=1,
        )
    assert caught.value.field == field
