"""docs/settings.md, config/notifier.env and notifier/settings.py name the same settings with the same defaults,
and each setting the docs mention is a real one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from notifier.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_DOC = ROOT / "docs" / "settings.md"
ENV_FILE = ROOT / "config" / "notifier.env"
# Variables of the test suite, not of the service (README.md and docs/guarantees.md say how to run the tests).
TEST_SUITE_VARIABLES = {"NOTIFIER_TEST_AMQP_URL", "NOTIFIER_SOAK_CYCLES"}
ROW = re.compile(r"^\| `(NOTIFIER_[A-Z0-9_]+)` \| (?:`([^`]*)`|\(empty\)) \| (.*) \|$")


def setting_names() -> list[str]:
    return sorted(f"NOTIFIER_{name.upper()}" for name in Settings.model_fields)


def doc_rows() -> list[tuple[str, str, str]]:
    """(name, default, meaning) of each row of docs/settings.md's tables."""
    rows = []
    for line in SETTINGS_DOC.read_text().splitlines():
        if line.startswith("| `NOTIFIER_"):
            match = ROW.match(line)
            assert match, f"docs/settings.md: a row is `| `NOTIFIER_X` | `default` or (empty) | meaning |`: {line}"
            rows.append((match.group(1), match.group(2) or "", match.group(3).strip()))
    return rows


def env_file_defaults() -> dict[str, str]:
    return dict(re.findall(r"^# (NOTIFIER_[A-Z0-9_]+)=(.*)$", ENV_FILE.read_text(), flags=re.MULTILINE))


@pytest.fixture(autouse=True)
def no_notifier_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in os.environ:
        if key.startswith("NOTIFIER_"):
            monkeypatch.delenv(key)


def test_the_settings_doc_lists_every_setting_once_with_a_meaning() -> None:
    rows = doc_rows()
    names = [name for name, _, _ in rows]
    assert sorted(names) == setting_names(), "docs/settings.md: each Settings field once, none that is not one"
    assert all(meaning for _, _, meaning in rows), [name for name, _, meaning in rows if not meaning]


def test_the_settings_doc_shows_the_defaults_of_the_code_and_of_the_env_file(tmp_path: Path) -> None:
    documented = {name: default for name, default, _ in doc_rows()}
    assert documented == env_file_defaults(), "docs/settings.md and config/notifier.env show different defaults"
    as_env = tmp_path / "defaults.env"
    as_env.write_text("".join(f"{name}={value}\n" for name, value in documented.items()))
    from_doc = Settings(_env_file=as_env)  # type: ignore[call-arg]
    assert from_doc.model_dump() == Settings(_env_file=None).model_dump()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda path: path.name
)
def test_every_setting_the_docs_name_is_a_real_one(path: Path) -> None:
    named = set(re.findall(r"\bNOTIFIER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())) - TEST_SUITE_VARIABLES
    assert not named - set(setting_names()), f"{path.name} names settings that do not exist"


def test_the_test_suite_variables_are_read_by_the_tests() -> None:
    sources = "".join(
        path.read_text() for path in (ROOT / "tests").rglob("*.py") if path.name != "test_settings_doc.py"
    )
    assert all(name in sources for name in TEST_SUITE_VARIABLES)
