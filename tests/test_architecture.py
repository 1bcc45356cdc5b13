"""The package's layers import downwards only: no cycle between layers, no upward import, and no
deferred (in-function) import used to reach upwards either. docs/ARCHITECTURE.md describes them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The layers, lowest first. A module may import its own layer's modules and any layer below.
#: ``diffplan_envs`` (the environments and collectors, under envs/) is named ``envs``.
LAYERS: list[set[str]] = [
    {"__init__", "enums", "extras", "utils"},  # the package root only holds the version (and the lazy API)
    {"config", "config_checks"},
    {"composition", "acceleration"},
    {"data", "controllers"},
    {"envs"},
    {"tasks"},
    {"diffusion"},
    {"models"},
    {"training"},
    {"agents", "baselines"},
    {"policies"},
    {"guidance"},
    {"planning"},
    {"synthetic", "evaluation"},
    {"reporting"},
    {"pipeline"},
    {"sweep", "bench"},
    {"api", "cli"},
]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}
#: The one allowed upward edge: ``diffplan/__init__.py`` re-exports the API lazily (PEP 562).
ALLOWED = {("__init__", "api")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "diffplan").rglob("*.py")):
        found[".".join(path.relative_to(ROOT).with_suffix("").parts)] = path
    for path in sorted((ROOT / "envs" / "diffplan_envs").rglob("*.py")):
        found[".".join(path.relative_to(ROOT / "envs").with_suffix("").parts)] = path
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "diffplan_envs":
        return "envs"
    return "__init__" if len(parts) == 1 or parts[1] == "__init__" else parts[1].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every import of the package in ``path``, at module level or deferred into a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("diffplan", "diffplan_envs"):
                found.append((node.lineno, name))
    return found


def _edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every import between units."""
    modules = _modules()
    edges = []
    for module, path in modules.items():
        for line, name in _imports(path):
            target = name if name in modules else name.rsplit(".", 1)[0]
            if target not in modules and name != "diffplan":
                continue
            source_unit, target_unit = _unit(module), _unit(target)
            if source_unit != target_unit:
                edges.append((source_unit, target_unit, f"{path.relative_to(ROOT)}:{line} imports {name}"))
    return edges


def test_every_module_belongs_to_a_layer() -> None:
    units = {_unit(module) for module in _modules()}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS (and docs/ARCHITECTURE.md)"


def test_imports_point_downwards_only() -> None:
    upward = [where for source, target, where in _edges()
              if RANK[target] > RANK[source] and (source, target) not in ALLOWED]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_layers_are_the_documented_ones() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for layer in LAYERS:
        for unit in layer - {"__init__"}:
            assert f"`{unit}`" in doc, f"docs/ARCHITECTURE.md does not describe the layer of {unit}"


@pytest.mark.parametrize("unit", ["config", "enums", "composition"])
def test_the_config_layer_imports_no_runtime_module(unit: str) -> None:
    below = {u for layer in LAYERS[: RANK[unit] + 1] for u in layer}
    reached = {target for source, target, _ in _edges() if source == unit}
    assert reached <= below, f"{unit} imports {sorted(reached - below)}"
