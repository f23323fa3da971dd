"""The package's layers stay true: a module imports only from its own layer or the layers below it.

The layers, highest first, are the ones docs/architecture.md draws; each subpackage's docstring says the same.
Imports under `if TYPE_CHECKING:` count too: a type is a dependency like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "notifier"

# Highest first. Modules of one layer may import each other; the leaves import nothing of notifier.
LAYERS: list[tuple[str, ...]] = [
    ("notifier.__main__", "notifier.cli", "notifier.app"),
    ("notifier.runtime",),
    ("notifier.http",),
    ("notifier.observability",),
    ("notifier.instance",),
    ("notifier.cluster",),
    ("notifier.connection",),
    ("notifier.broker",),
    ("notifier.limits",),
    ("notifier.formats",),
    ("notifier.settings", "notifier.logs", "notifier.stats"),
]
# Leaves: may import nothing of notifier (the package's own __init__ holds only the version).
LEAVES = ("notifier", "notifier.settings", "notifier.logs", "notifier.stats", "notifier.client")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every notifier module `path` imports, at any depth of its code."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import; notifier imports by absolute name"
            found.add(node.module)
            # `from notifier.x import y` may name a module y; count it as notifier.x.y when it is one.
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if module_path(candidate) is not None:
                    found.add(candidate)
    return {name for name in found if name == "notifier" or name.startswith("notifier.")}


def module_path(name: str) -> Path | None:
    relative = Path(*name.split(".")[1:])
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def layer_of(name: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(name == owner or name.startswith(owner + ".") for owner in layer):
            return index
    return None


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    homeless = [module_name(path) for path in MODULES if module_name(path) not in LEAVES]
    homeless = [name for name in homeless if layer_of(name) is None]
    assert homeless == [], f"modules in no layer of tests/test_layers.py: {homeless}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_module_imports_only_its_layer_or_below(path: Path) -> None:
    name = module_name(path)
    imports = imported_modules(path) - {name, "notifier"}
    if name in LEAVES:
        assert imports == set(), f"{name} is a leaf but imports {sorted(imports)}"
        return
    own = layer_of(name)
    assert own is not None
    upward = sorted(imported for imported in imports if (layer := layer_of(imported)) is not None and layer < own)
    assert upward == [], f"{name} (layer {LAYERS[own]}) imports from a higher layer: {upward}"


def test_a_violation_is_seen(tmp_path: Path) -> None:
    """The check itself: an upward import in a module is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("from notifier.instance.node import Node\n")
    assert "notifier.instance.node" in imported_modules(probe)
    assert layer_of("notifier.instance.node") < layer_of("notifier.formats.topics")  # type: ignore[operator]
