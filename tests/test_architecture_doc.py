"""docs/architecture.md names only code that exists, so the map cannot drift from the package unnoticed.

What the doc cites, and how each is checked (code spans outside fenced blocks):

- `notifier.connection.hub.Hub.deliver`: a dotted name from `notifier.` on; the longest prefix that is a module
  is imported and the rest is looked up on it, attribute by attribute (an attribute a class only sets on
  `self`, or only annotates, counts).
- `notifier/connection/hub.py`: a path in the repository (also `tests/...`, `docs/...`, `bench/...`,
  `config/...`, `.ci/...` and the files at its root) must exist; `notifier/connection/hub.py::Hub.deliver`
  also names something in that module, looked up as above; `tests/test_x.py::test_y` names a function or
  class defined at the top of that file.
- `Hub.deliver`, `Session._on_message`: a class of notifier by its own name, then attributes as above (when
  two classes share the name, one of them must have them); a lone `TransportSender` must be a class of
  notifier, or a name a notifier module imports (`HttpToolsProtocol`).
- `NOTIFIER_MAX_CONNECTIONS`: a setting of notifier.settings.Settings.
- `closecodes.SLOW_CLIENT`: a close reason of notifier.formats.closecodes; written `closecodes.SLOW_CLIENT` (4002),
  the number must be its code.
- Relative links ([text](scaling.md#anchor)) point at files that exist.

And the doc covers what a newcomer must find: the layers in the order tests/test_layers.py enforces, every
subpackage and top-level module of notifier, and every ASGI scope key (a `*_SCOPE_KEY` constant) with its value.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import notifier
from notifier.formats import closecodes
from notifier.settings import Settings
from tests.test_layers import LAYERS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "notifier"

PATH_PREFIXES = ("notifier/", "tests/", "docs/", "bench/", "config/", ".ci/")
ROOT_FILES = ("pyproject.toml", "constraints.txt", "README.md", "Dockerfile")
DOTTED = re.compile(r"notifier(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
SETTING = re.compile(r"NOTIFIER_[A-Z0-9_]+")
SHORT = re.compile(r"[A-Z][A-Za-z0-9]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
CLASS_NAME = re.compile(r"[A-Z][a-z0-9]+(?:[A-Z][A-Za-z0-9]*)+|[A-Z][a-z0-9]{2,}")
CLOSE_REASON = re.compile(r"`closecodes\.([A-Z_]+)`(?: \((\d{4})\))?")


def prose(text: str) -> str:
    """The doc without its fenced code blocks (examples, not citations)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(text))


def is_path(span: str) -> bool:
    return span.startswith(PATH_PREFIXES) or span.split("::")[0] in ROOT_FILES


def self_assigned(cls: type) -> set[str]:
    """What a class (and its bases) sets on `self` or annotates: attributes that exist on instances only."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if klass is object:
            continue
        names.update(getattr(klass, "__annotations__", {}))
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return names


def lookup(owner: object, chain: list[str], cited: str, start: str) -> str | None:
    """Follow `chain` from `owner` (named `start`); None if every step exists, else what is missing."""
    for index, name in enumerate(chain):
        if hasattr(owner, name):
            owner = getattr(owner, name)
            continue
        if isinstance(owner, type) and index == len(chain) - 1 and name in self_assigned(owner):
            return None
        return f"`{cited}`: {'.'.join([start, *chain[:index]])} has no {name!r}"
    return None


def import_longest(parts: list[str]) -> tuple[ModuleType, list[str]] | None:
    """The module named by the longest prefix of `parts`, and the attribute names after it."""
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        try:
            return importlib.import_module(name), parts[end:]
        except ModuleNotFoundError as error:
            if error.name is None or not name.startswith(error.name):
                raise  # the module exists but imports something missing: a real failure
    return None


def check_dotted(span: str) -> str | None:
    if span.endswith(".__main__"):  # importing it would run the command: the file must exist
        path = ROOT / Path(*span.split(".")).with_suffix(".py")
        return None if path.exists() else f"`{span}`: no such module"
    found = import_longest(span.split("."))
    if found is None:
        return f"`{span}`: no such module"
    module, chain = found
    return lookup(module, chain, span, module.__name__)


def check_path(span: str) -> str | None:
    path, _, qualified = span.partition("::")
    if not (ROOT / path).exists():
        return f"`{span}`: no file or directory {path}"
    if not qualified:
        return None
    if path.startswith("notifier/") and path.endswith(".py"):
        module = ".".join(Path(path).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        return lookup(importlib.import_module(module), qualified.split("."), span, path)
    if path.endswith(".py"):
        tree = ast.parse((ROOT / path).read_text())
        defined = {
            node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        if qualified.split(".")[0] not in defined:
            return f"`{span}`: {path} defines no {qualified.split('.')[0]!r}"
        return None
    return f"`{span}`: `::` names code in a .py file only"


@functools.cache
def classes_by_name() -> dict[str, list[type]]:
    """Every class defined in notifier, by its name."""
    found: dict[str, list[type]] = {}
    for info in pkgutil.walk_packages(notifier.__path__, "notifier."):
        if info.name.endswith(".__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == info.name:
                found.setdefault(value.__name__, []).append(value)
    return found


@functools.cache
def imported_names() -> frozenset[str]:
    """The names notifier's modules import from elsewhere (`from x import Name`)."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names.update(alias.asname or alias.name for alias in node.names)
    return frozenset(names)


def check_short(span: str) -> str | None:
    """`Class.attr...`: some class of notifier named so has the attributes."""
    name, *chain = span.split(".")
    candidates = classes_by_name().get(name, [])
    if not candidates:
        return f"`{span}`: notifier has no class {name!r}"
    problems = [lookup(cls, chain, span, f"{cls.__module__}.{name}") for cls in candidates]
    return None if None in problems else problems[0]


def problems_in(text: str) -> list[str]:
    """Every citation of `text` that does not resolve."""
    problems: list[str] = []
    settings = {f"NOTIFIER_{name.upper()}" for name in Settings.model_fields}
    for span in dict.fromkeys(code_spans(text)):
        problem: str | None = None
        if is_path(span):
            problem = check_path(span)
        elif DOTTED.fullmatch(span):
            problem = check_dotted(span)
        elif SHORT.fullmatch(span) and not span.startswith("NOTIFIER_"):
            problem = check_short(span)
        elif CLASS_NAME.fullmatch(span) and span not in classes_by_name() and span not in imported_names():
            problem = f"`{span}`: neither a class of notifier nor a name it imports"
        elif SETTING.fullmatch(span) and span not in settings:
            problem = f"`{span}`: not a setting of notifier.settings.Settings"
        if problem is not None:
            problems.append(problem)
    for name, code in CLOSE_REASON.findall(prose(text)):
        reason = getattr(closecodes, name, None)
        if not isinstance(reason, closecodes.CloseReason):
            problems.append(f"`closecodes.{name}`: no such close reason")
        elif code and int(code) != reason.code:
            problems.append(f"`closecodes.{name}` ({code}): its code is {reason.code}")
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
        if "://" in target or target.startswith("#"):
            continue
        if not (DOC.parent / target.split("#")[0]).exists():
            problems.append(f"link to {target}: no such file")
    return problems


def test_every_citation_in_the_doc_exists() -> None:
    text = DOC.read_text()
    assert len(code_spans(text)) > 100, "the doc cites almost nothing: is it the map?"
    problems = problems_in(text)
    assert problems == [], "docs/architecture.md cites what is not there:\n" + "\n".join(problems)


def test_a_stale_citation_is_reported() -> None:
    """So an empty report above means the citations resolve, not that nothing was checked."""
    stale = """
`notifier.connection.hub.Hub.fan_out` `notifier.connection.nowhere` `notifier/connection/gone.py`
`notifier/connection/hub.py::Hub.deliver_all` `notifier/connection/hub.py::Hub.deliver`
`tests/test_hub.py::test_that_never_was` `NOTIFIER_MAX_NOTHING` `closecodes.SLOW_CLIENT` (4003)
`notifier.instance.node.Node.hub` `notifier.connection.session.SessionContext.hub` [gone](gone.md)
`Hub.deliver` `Hub.fan_out` `Nowhere.run` `Session.run` `TransportSender` `HttpToolsProtocol` `Vanished`
```
`notifier.inside.a.fence` is an example, not a citation
```
"""
    problems = problems_in(stale)
    assert len(problems) == 11, "\n".join(problems)
    for cited in ("Hub.fan_out", "nowhere", "gone.py", "deliver_all", "test_that_never_was", "MAX_NOTHING"):
        assert any(cited in problem for problem in problems), cited
    assert any("its code is 4002" in problem for problem in problems)
    assert any("gone.md" in problem for problem in problems)
    for cited in ("`Hub.fan_out`", "`Nowhere.run`", "`Vanished`"):
        assert any(problem.startswith(cited) for problem in problems), cited


def layers_in_doc(text: str) -> list[tuple[str, ...]]:
    """The first cell of each row of the table under `## Layers`: the packages of each layer, highest first."""
    section = prose(text).split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "`notifier" in line]
    return [tuple(re.findall(r"`(notifier[\w.]*)`", row.split("|")[1])) for row in rows]


def test_the_doc_draws_the_layers_tests_test_layers_enforces() -> None:
    assert layers_in_doc(DOC.read_text()) == LAYERS


def test_the_map_names_every_subpackage_and_top_level_module() -> None:
    text = DOC.read_text()
    cited = set(code_spans(text))
    expected = [path for path in sorted(PACKAGE.iterdir()) if path.is_dir() and (path / "__init__.py").exists()]
    expected += [path for path in sorted(PACKAGE.glob("*.py")) if path.name != "__init__.py"]
    missing = []
    for path in expected:
        relative = path.relative_to(ROOT).as_posix()
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if not {relative, relative + "/", dotted} & cited:
            missing.append(relative)
    assert missing == [], f"docs/architecture.md's map does not mention: {missing}"


def scope_keys() -> dict[str, str]:
    """Every `*_SCOPE_KEY` string constant at the top of a notifier module, by dotted name."""
    keys: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
                continue
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.endswith("_SCOPE_KEY"):
                    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                    keys[f"{module}.{target.id}"] = str(node.value.value)
    return keys


def test_the_doc_lists_every_asgi_scope_key_with_its_value() -> None:
    keys = scope_keys()
    assert keys, "no *_SCOPE_KEY constant found in notifier/"
    cited = set(code_spans(DOC.read_text()))
    missing = [f"{name} = {value!r}" for name, value in keys.items() if not {name, f'"{value}"'} <= cited]
    assert missing == [], f"docs/architecture.md does not list these scope keys with their values: {missing}"


@pytest.mark.parametrize("span", ["notifier.limits.tokenbucket.FRAME_BUDGET_SCOPE_KEY", "notifier/limits/gate.py"])
def test_citations_of_the_conventions_resolve(span: str) -> None:
    assert problems_in(f"`{span}`") == []
