"""What notifier imports is what pyproject.toml declares, and constraints.txt pins what a fresh install gets.

- Every third-party module imported anywhere in notifier/ (also inside functions and under TYPE_CHECKING)
  comes from a distribution named in `[project] dependencies`: one that is only installed as a dependency of
  a dependency can disappear with that dependency's next release.
- constraints.txt pins, with `==`, every runtime dependency and everything they need in turn (the installed
  metadata says what), at a version the declared range accepts, so `pip install -c constraints.txt .` gets
  the versions the suite runs with.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Set as AbstractSet
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "notifier"
CONSTRAINTS = ROOT / "constraints.txt"


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


def pins() -> dict[str, Version]:
    """constraints.txt: `name==version` lines, comments and blank lines aside."""
    pinned: dict[str, Version] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"constraints.txt:{number}: {raw!r} is not an exact pin (name==version)"
        name = canonicalize_name(match[1])
        assert name not in pinned, f"constraints.txt:{number}: {match[1]} is pinned twice"
        pinned[name] = Version(match[2])
    return pinned


def runtime_closure(roots: list[Requirement]) -> dict[str, list[str]]:
    """The distributions a runtime install brings in on this platform, read from the installed metadata, each
    with the chain of requirements that brings it in (for the failure message)."""

    def applies(requirement: Requirement, extra: str) -> bool:
        """Its marker holds for this interpreter and platform, with `extra` requested (packaging fills in the rest)."""
        return requirement.marker is None or requirement.marker.evaluate({"extra": extra})

    found: dict[str, list[str]] = {}
    visited: set[tuple[str, str]] = set()
    pending = [(requirement, [str(requirement)]) for requirement in roots if applies(requirement, "")]
    while pending:
        requirement, chain = pending.pop()
        name = canonicalize_name(requirement.name)
        found.setdefault(name, chain)
        for extra in {"", *requirement.extras}:
            if (name, extra) in visited:
                continue
            visited.add((name, extra))
            try:
                requires = importlib.metadata.requires(requirement.name) or []
            except importlib.metadata.PackageNotFoundError:
                continue  # the tests below report a distribution that applies but is not installed
            for spec in requires:
                child = Requirement(spec)
                if applies(child, extra):
                    pending.append((child, [*chain, str(child)]))
    return found


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


def test_constraints_pin_every_declared_dependency_within_its_range() -> None:
    pinned = pins()
    problems = []
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            problems.append(f"{requirement.name} is declared but not pinned in constraints.txt")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"constraints.txt pins {name}=={pinned[name]}, outside the declared {requirement}")
    assert problems == [], "\n".join(problems)


def test_constraints_pin_everything_a_runtime_install_brings_in() -> None:
    """The dependencies of the dependencies too: otherwise a fresh install picks their newest versions."""
    pinned = pins()
    closure = runtime_closure(declared_requirements())
    missing = [" -> ".join(chain) for name, chain in sorted(closure.items()) if name not in pinned]
    assert missing == [], "not pinned in constraints.txt:\n" + "\n".join(missing)
    # The closure is read from what is installed here; a requirement that applies but is not installed would
    # leave its own dependencies out of the check.
    absent = []
    for name in closure:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(name)
    assert absent == [], f"required but not installed, so their dependencies went unchecked: {absent}"


def test_the_installed_runtime_dependencies_are_the_pinned_versions() -> None:
    """The suite runs with the pins (install with `-c constraints.txt`); a different version here means either
    this environment was installed without them or constraints.txt needs regenerating."""
    pinned = pins()
    differ = []
    for name in runtime_closure(declared_requirements()):
        installed = Version(importlib.metadata.version(name))
        if installed != pinned.get(name):
            differ.append(f"{name}: installed {installed}, constraints.txt pins {pinned.get(name)}")
    assert differ == [], "\n".join(differ)
