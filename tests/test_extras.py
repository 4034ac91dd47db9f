"""Each party runs on the base install plus its own extra (pyproject.toml), nothing more.

A child Python refuses to import any third-party package outside the party's
dependencies (a meta-path finder raising ImportError), then imports the
party's entry module: a node agent must not need the coordinator's web
stack, nor the AI provider's client torch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# distribution name -> the module it is imported as
MODULE = {"scikit-learn": "sklearn", "mlflow-skinny": "mlflow", "psycopg": "psycopg"}


def modules(requirements: list[str]) -> set[str]:
    names = set()
    for req in requirements:
        if req.startswith("tessera"):
            continue
        dist = req.split("==")[0].split("[")[0].strip()
        names.add(MODULE.get(dist, dist.replace("-", "_")))
    return names


EXTRAS = PROJECT["optional-dependencies"]
BASE = modules(PROJECT["dependencies"])
EVERYTHING = BASE | {m for name, reqs in EXTRAS.items() if name != "dev" for m in modules(reqs)}


@pytest.mark.parametrize(
    ("extra", "module"),
    [
        ("node", "tessera.node.agent"),
        ("coordinator", "tessera.coordinator.app"),
        ("provider", "tessera.data_provider.app"),
        (None, "tessera.ai_provider.client"),
        (None, "tessera.cli"),
    ],
)
def test_a_party_imports_with_its_own_extra_only(extra: str | None, module: str) -> None:
    allowed = BASE | (modules(EXTRAS[extra]) if extra else set())
    blocked = sorted(EVERYTHING - allowed)
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed with this extra")
                return None

        sys.meta_path.insert(0, Block())
        import {module}
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_extras_cover_every_pinned_dependency_once_per_party() -> None:
    assert "torch" in modules(EXTRAS["node"]) and "torch" not in BASE
    assert {"fastapi", "sqlalchemy"} <= modules(EXTRAS["coordinator"]) - BASE
    assert EXTRAS["all"] == ["tessera[node,coordinator,provider,sim,mlflow]"]
    assert "tessera[all]" in EXTRAS["dev"]
