"""Reads the Dockerfile into stages and instructions, so tests check the recipe itself, not a copy of it."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str  # the rest, continuation lines joined

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """Leading `--name=value` options (as in `RUN --mount=...`, `HEALTHCHECK --interval=...`) and the rest."""
        flags: dict[str, str] = {}
        rest = self.args
        while rest.startswith("--"):
            option, _, rest = rest.partition(" ")
            name, _, value = option[2:].partition("=")
            flags[name] = value
            rest = rest.lstrip()
        return flags, rest


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name or self.image}, found {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.args):
                key, equals, value = pair.partition("=")
                assert equals, f"ENV {pair!r}: use the KEY=value form"
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """An instruction's JSON-array command (CMD, ENTRYPOINT, or HEALTHCHECK after its options and CMD)."""
        _, rest = self.one(keyword).flags_and_rest()
        if keyword == "HEALTHCHECK":
            assert rest.startswith("CMD "), rest
            rest = rest.removeprefix("CMD ")
        command = json.loads(rest)
        assert isinstance(command, list) and all(isinstance(part, str) for part in command), rest
        return command


def instructions(text: str) -> list[Instruction]:
    """Docker's line rules: `\\` continues a line, `#` lines are comments (also inside a continuation)."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical = pending + line
        pending = ""
        keyword, _, args = logical.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    found: list[Stage] = []
    for instruction in instructions(path.read_text()):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
        else:
            assert found, f"{instruction.keyword} before the first FROM"
            found[-1].instructions.append(instruction)
    return found
