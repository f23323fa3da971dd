"""What notifier imports is what pyproject.toml declares.

Every third-party module imported anywhere in notifier/ (also inside functions and under TYPE_CHECKING) comes
from a distribution named in `[project] dependencies`: one that is only installed as a dependency of a
dependency can disappear with that dependency's next release.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from collections.abc import Set as AbstractSet
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "notifier"


def declared_requirements() -> list[Requirement]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def top_level_imports(path: Path) -> dict[str, int]:
    """The top-level names of the absolute imports in `path`, each with the line of its first import."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.partition(".")[0], node.lineno)
    return found


def third_party_imports() -> dict[str, list[str]]:
    """Each third-party top-level module notifier imports, with the places (path:line) that import it."""
    places: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, line in top_level_imports(path).items():
            if name in sys.stdlib_module_names or name == "notifier":
                continue
            places.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
    return places


def undeclared(imports: dict[str, list[str]], declared: AbstractSet[str]) -> list[str]:
    """One line per imported module no declared distribution provides."""
    providers = importlib.metadata.packages_distributions()
    problems: list[str] = []
    for name, places in sorted(imports.items()):
        distributions = {canonicalize_name(distribution) for distribution in providers.get(name, [])}
        if not distributions:
            problems.append(f"`import {name}` ({', '.join(places)}): no installed distribution provides it")
        elif not distributions & declared:
            names = ", ".join(sorted(distributions))
            problems.append(
                f"`import {name}` ({', '.join(places)}) comes from {names}, not declared in pyproject.toml"
                " [project] dependencies"
            )
    return problems


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = {canonicalize_name(requirement.name) for requirement in declared_requirements()}
    imports = third_party_imports()
    assert "fastapi" in imports and "aio_pika" in imports, "the walk over notifier/ found nothing it should"
    problems = undeclared(imports, declared)
    assert problems == [], "\n".join(problems)


def test_an_undeclared_import_is_named() -> None:
    """So an empty list above means every import is declared, not a check that finds nothing."""
    problems = undeclared({"dotenv": ["notifier/cli.py:75"], "yaml": ["x.py:1"]}, {"pyyaml"})
    assert len(problems) == 1
    assert "`import dotenv` (notifier/cli.py:75) comes from python-dotenv, not declared" in problems[0]
    assert "no installed distribution" in undeclared({"no_such_module_anywhere": ["x.py:1"]}, set())[0]
