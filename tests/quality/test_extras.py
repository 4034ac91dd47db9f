"""Each party runs on the base install plus its own extra, and nothing more.

A fresh interpreter gets a ``sys.meta_path`` finder that refuses every package
of the extras the party does not install, as ``pip install 'tessera[node]'``
would leave them missing, then imports the modules that party's command
imports. The packages come from pyproject.toml itself, so moving a dependency
to the wrong extra, or a new top-level import of a party's stack in shared
code, fails here rather than on a user's machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
# Extras that bundle others (or test tools) rather than name a party's packages.
BUNDLES = {"all", "dev"}
# Import names that differ from the distribution's; fastapi brings starlette,
# which the provider's app also imports directly.
IMPORT_NAMES = {
    "scikit-learn": {"sklearn"},
    "mlflow-skinny": {"mlflow"},
    "fastapi": {"fastapi", "starlette"},
}


def distribution(requirement: str) -> str:
    """``psycopg[binary]==3.3.9`` -> ``psycopg``."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return match.group(0).lower()


def import_names(requirements: list[str]) -> set[str]:
    names: set[str] = set()
    for req in requirements:
        dist = distribution(req)
        names |= IMPORT_NAMES.get(dist, {dist.replace("-", "_")})
    return names


def missing_without(*extras: str) -> set[str]:
    """What a ``tessera[extras]`` install lacks of the other extras' packages."""
    parties = [req for name, reqs in EXTRAS.items() if name not in BUNDLES for req in reqs]
    optional = import_names(parties)
    installed = import_names(PROJECT["dependencies"])
    for extra in extras:
        installed |= import_names(EXTRAS[extra])
    return optional - installed


BLOCKER = """
import importlib, importlib.abc, sys
BLOCKED = frozenset({blocked!r})

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the extras)", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
for module in {modules!r}:
    importlib.import_module(module)
"""


def run_blocked(blocked: set[str], modules: list[str], cwd: Path, then: str = "") -> str:
    """stdout of a fresh interpreter that imports ``modules`` with ``blocked`` missing."""
    code = BLOCKER.format(blocked=sorted(blocked), modules=modules) + textwrap.dedent(then)
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@dataclass(frozen=True, kw_only=True)
class Party:
    extras: tuple[str, ...]
    modules: list[str]  # what the party's command imports, eagerly or lazily
    also_missing: frozenset[str] = frozenset()  # installed, yet never loaded by this process
    then: str = ""  # a little real work with those modules


PARTIES = {
    # The agent process never trains (its sandbox child does): torch may not even load.
    "node agent": Party(
        extras=("node",),
        modules=[
            "tessera.cli",
            "tessera.node.agent",
            "tessera.node.consent_page",
            "tessera.sandbox",
        ],
        also_missing=frozenset({"torch"}),
        then="""
        from pathlib import Path
        from tessera.node.agent import AgentConfig, NodeAgent
        agent = NodeAgent(AgentConfig(node_id="n", coordinator="http://127.0.0.1:9",
                                      insecure_loopback=True,
                                      keys_path=Path("k"), state_dir=Path("s")))
        print(type(agent).__name__)
        """,
    ),
    "node sandbox": Party(extras=("node",), modules=["tessera.sandbox.worker"]),
    "coordinator": Party(
        extras=("coordinator",),
        modules=[
            "tessera.cli",
            "tessera.coordinator.app",
            "tessera.coordinator.service",
            "tessera.coordinator.driver",
            "tessera.runtime.transport.serve",
            "tessera.storage",
            "tessera.storage.keyfile",
        ],
        then="""
        from tessera.storage import Store
        Store("sqlite://").close()
        """,
    ),
    "data provider": Party(
        extras=("provider",),
        modules=[
            "tessera.cli",
            "tessera.data_provider.app",
            "tessera.data_provider.gate_state",
            "tessera.runtime.transport.serve",
            "tessera.data.connectors",
        ],
    ),
    # The client itself is torch-free; only making initial weights needs the extra.
    "AI provider client": Party(
        extras=(),
        modules=[
            "tessera.cli",
            "tessera.ai_provider.client",
            "tessera.config",
            "tessera.deploy.up",
            "tessera.runtime.transport.client",
            "tessera.storage.keyfile",
        ],
    ),
    "AI provider weights": Party(
        extras=("ai-provider",),
        modules=["tessera.ai_provider.client"],
        then="""
        from tessera.training import ModelSpec, init_weights
        print(len(init_weights(ModelSpec("linear", (3,), 2), 0)))
        """,
    ),
    "simulator": Party(
        extras=("sim",),
        modules=[
            "tessera.cli",
            "tessera.runtime.sim.job",
            "tessera.jobs.prepared",
            "tessera.jobs.secure",
            "tessera.reports",
            "tessera.data.sources",
        ],
    ),
}


@pytest.mark.parametrize("party", PARTIES.values(), ids=PARTIES.keys())
def test_each_party_imports_with_only_its_extras(party: Party, tmp_path: Path) -> None:
    blocked = missing_without(*party.extras) | party.also_missing
    run_blocked(blocked, party.modules, tmp_path, party.then)


def test_a_node_installs_no_database_drivers_and_the_web_stack_only_for_its_page() -> None:
    assert {"sqlalchemy", "psycopg"} <= missing_without("node")
    # FastAPI and uvicorn serve the user's consent page (node.consent_page), pinned as the
    # services pin them; the agent loads them only when it serves the page.
    assert {"fastapi", "uvicorn"} <= import_names(EXTRAS["node"])
    assert "torch" in import_names(EXTRAS["node"])


def test_all_and_dev_install_every_extra() -> None:
    parties = {name for name in EXTRAS if name not in BUNDLES}
    (everything,) = EXTRAS["all"]
    assert set(everything.partition("[")[2].rstrip("]").split(",")) == parties
    assert "tessera[all]" in EXTRAS["dev"]


def test_torch_is_pinned_wherever_it_appears() -> None:
    pins = [r for reqs in [PROJECT["dependencies"], *EXTRAS.values()] for r in reqs]
    torch = [r for r in pins if distribution(r) == "torch"]
    assert torch and set(torch) == {"torch==2.13.0"}


def test_the_blocker_refuses_what_a_party_needs(tmp_path: Path) -> None:
    """Negative control: with its web stack missing, the coordinator's app cannot load."""
    with pytest.raises(AssertionError, match="No module named 'fastapi'"):
        run_blocked({"fastapi"}, ["tessera.coordinator.app"], tmp_path)
