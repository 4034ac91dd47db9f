"""No module imports from a layer above its own (the rule and its table: docs/layers.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tessera"
NO_IO = ("socket", "asyncio", "httpx", "fastapi", "uvicorn", "sqlalchemy", "torch")
CLOCK = re.compile(r"\btime\.(time|sleep|monotonic|perf_counter)\(|\bdatetime\.now\(")


def layers() -> dict[str, int]:
    """``{package: layer}`` from the table in docs/layers.md."""
    table: dict[str, int] = {}
    for line in (ROOT / "docs" / "layers.md").read_text().splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|([^|]+)\|", line)
        if match:
            for name in re.findall(r"`([a-z_]+)`", match.group(2)):
                table[name] = int(match.group(1))
    return table


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``tessera.*`` or third-party import in ``path``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else parts[0]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_table_names_every_package() -> None:
    table = layers()
    present = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0] for p in MODULES}
    present -= {"__init__", "__main__", "py"}
    assert present - set(table) == set(), "packages missing from docs/layers.md"
    assert set(table) - present == set(), "docs/layers.md names packages that do not exist"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_upward_or_sideways(path: Path) -> None:
    table = layers()
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem
    if own in ("__init__",):
        return
    wrong = [
        f"line {line}: {module} (layer {table[package_of(module)]} > {table[own]})"
        if table[package_of(module)] > table[own]
        else f"line {line}: {module} (same layer {table[own]}, another package)"
        for line, module in imports(path)
        if module.startswith("tessera.")
        and package_of(module) != own
        and table[package_of(module)] >= table[own]
    ]
    assert wrong == [], f"{rel} imports from its own layer or above"


@pytest.mark.parametrize("package", ["protocol", "crypto"])
def test_the_core_does_no_io_and_reads_no_clock(package: str) -> None:
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for line, module in imports(path):
            if module.split(".")[0] in NO_IO:
                bad.append(f"{path.name}:{line} imports {module}")
        bad += [f"{path.name}: reads the clock" for _ in CLOCK.finditer(path.read_text())]
    assert bad == []


def test_the_host_is_below_both_runtimes() -> None:
    host = PACKAGE / "runtime" / "host.py"
    assert not [m for _, m in imports(host) if m.startswith(("tessera.runtime.", "tessera.node"))]


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a protocol module importing the simulator is refused."""
    bad = tmp_path / "bad.py"
    bad.write_text("from tessera.runtime.sim import Simulation\n")
    table = layers()
    assert [m for _, m in imports(bad) if table[package_of(m)] > table["protocol"]]
