"""Keep the layers of DESIGN.md: imports only point down, and I/O libraries stay in adapters.

A static check over the source (ast), so it sees imports inside functions too and needs no
import of the checked code. The rules:

- ``fleetd.model`` and ``fleetd.scheduler`` are pure: no I/O or concurrency modules and
  no third-party library; model imports only model, scheduler only model and scheduler.
- Only ``fleetd.registry`` imports the etcd client (aetcd, grpc).
- Only ``fleetd.systemd`` imports the D-Bus library (dbus_fast).
- The adapters (``fleetd.registry``, ``fleetd.systemd``) import only the model.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fleetd", "fleetctl")

IO_MODULES = frozenset(
    {
        "asyncio", "socket", "subprocess", "os", "shutil", "pathlib", "io", "tempfile",
        "urllib", "http", "threading", "multiprocessing", "selectors", "select", "signal",
        "time", "logging", "ssl", "sqlite3",
    }
)
THIRD_PARTY_IO = frozenset({"aetcd", "grpc", "dbus_fast", "aiohttp", "click", "tabulate"})
PURE = {"fleetd.model": {"fleetd.model"}, "fleetd.scheduler": {"fleetd.model", "fleetd.scheduler"}}
# adapters sit just above the model: they never reach up into the loops that use them
ADAPTERS = {"fleetd.registry": {"fleetd.model", "fleetd.registry"}, "fleetd.systemd": {"fleetd.model", "fleetd.systemd"}}
ONLY_IN = {"aetcd": "fleetd.registry", "grpc": "fleetd.registry", "dbus_fast": "fleetd.systemd"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted and absolute
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import in ``source``, resolved to absolute dotted names."""
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(Import(module, target, node.lineno))
    return found


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(imports: list[Import]) -> list[str]:
    """The layer rules, applied to a list of imports; returns one message per breach."""
    problems: list[str] = []
    for imp in imports:
        top = imp.target.split(".")[0]
        where = f"{imp.module}:{imp.line} imports {imp.target}"
        for pure, allowed in PURE.items():
            if not _in(imp.module, pure):
                continue
            if top in IO_MODULES or top in THIRD_PARTY_IO:
                problems.append(f"{where}: {pure} must stay pure (no I/O libraries)")
            if top in PACKAGES and not any(_in(imp.target, ok) for ok in allowed):
                problems.append(f"{where}: {pure} may import only {sorted(allowed)}")
        for adapter, allowed in ADAPTERS.items():
            if _in(imp.module, adapter) and top in PACKAGES and not any(_in(imp.target, ok) for ok in allowed):
                problems.append(f"{where}: {adapter} may import only {sorted(allowed)}")
        owner = ONLY_IN.get(top)
        if owner and not _in(imp.module, owner):
            problems.append(f"{where}: only {owner} may import {top}")
    return problems


def project_imports() -> list[Import]:
    result: list[Import] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            result.extend(
                imports_of(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
            )
    return result


def test_project_keeps_its_layers() -> None:
    imports = project_imports()
    assert imports, "found no imports at all: the checker is not looking at the source"
    assert violations(imports) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("fleetd.model.unitfile", "import asyncio", "must stay pure"),
        ("fleetd.scheduler.place", "from fleetd.registry import keys", "may import only"),
        ("fleetd.model.x", "from ..registry import keys", "may import only"),
        ("fleetd.agent.loop", "import aetcd", "only fleetd.registry may import aetcd"),
        ("fleetd.engine", "from dbus_fast.aio import MessageBus", "only fleetd.systemd"),
        ("fleetctl.main", "def f():\n    import dbus_fast\n", "only fleetd.systemd"),
        ("fleetd.systemd.manager", "from fleetd.agent.manager import LocalUnit", "may import only"),
        ("fleetd.registry.registry", "from fleetd.engine import engine", "may import only"),
    ],
)
def test_checker_catches_breaches(module: str, source: str, expected: str) -> None:
    problems = violations(imports_of(source, module, is_package=False))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("fleetd.registry.etcd", "import aetcd"),
        ("fleetd.systemd.dbus", "from dbus_fast.aio import MessageBus"),
        ("fleetd.scheduler.place", "from fleetd.model.unit import Unit\nimport fnmatch"),
    ],
)
def test_checker_allows_the_adapters(module: str, source: str) -> None:
    assert violations(imports_of(source, module, is_package=False)) == []
