"""Dockerfile parsing: directives, comments, line continuations, flags, JSON vs shell form.

The result is a flat list of instructions; variables are not expanded here (that needs the
build's state, see :mod:`agent.build.variables`). Parser directives (``# escape=`` and
``# syntax=``) count only at the very top, before any comment, blank line or instruction.
Continuation lines end with the escape character; comment and blank lines inside a
continued instruction are skipped, as the docker parser does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.build.errors import BuildError
from agent.images.config_changes import json_array

INSTRUCTIONS = frozenset(
    {
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }
)
# instructions whose arguments may be a JSON array of strings (the "exec form")
JSON_FORMS = frozenset({"ADD", "CMD", "COPY", "ENTRYPOINT", "RUN", "SHELL", "VOLUME"})
# instructions that take leading --name=value flags, and the flags each accepts
FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "COPY": frozenset({"from", "chown", "chmod", "link"}),
    "ADD": frozenset({"chown", "chmod", "link", "checksum", "keep-git-dir"}),
    "RUN": frozenset(),
}
_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$")


@dataclass
class Instruction:
    keyword: str  # upper case: "RUN"
    args: str  # the text after the keyword and its flags, continuations joined
    line: int  # 1-based line of the keyword
    original: str  # the whole instruction as one line, for messages
    flags: dict[str, str] = field(default_factory=dict)
    exec_form: list[str] | None = None  # the JSON array form, when written so

    def flag(self, name: str, default: str = "") -> str:
        return self.flags.get(name, default)


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    escape: str = "\\"
    directives: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> Dockerfile:
    """Parse a whole Dockerfile; a syntax error raises BuildError naming the line."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    directives, first = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise BuildError(f"invalid escape token '{escape}' does not match ` or \\")
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(lines[first:], first + 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank lines and comments, inside a continuation too
        text = raw.rstrip()
        if not pending:
            start = number
        if text.endswith(escape) and not _escaped_escape(text, escape):
            pending += text[:-1]
            continue
        instructions.append(parse_line(pending + text, start, escape))
        pending = ""
    if pending.strip():
        instructions.append(parse_line(pending, start, escape))
    if not instructions:
        raise BuildError("the Dockerfile (Dockerfile) cannot be empty")
    return Dockerfile(instructions, escape, directives)


def _escaped_escape(text: str, escape: str) -> bool:
    """Whether the final escape character is itself escaped (``\\\\`` at the end)."""
    count = len(text) - len(text.rstrip(escape))
    return count % 2 == 0


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """The leading parser directives and the index of the first line after them."""
    directives: dict[str, str] = {}
    for index, line in enumerate(lines):
        match = _DIRECTIVE.fullmatch(line.strip())
        name = match.group(1).lower() if match is not None else ""
        if match is None or name not in _KNOWN_DIRECTIVES:
            return directives, index
        if name in directives:
            raise BuildError(f"only one {name} parser directive can be used")
        directives[name] = match.group(2)
    return directives, len(lines)


def parse_line(text: str, line: int, escape: str = "\\") -> Instruction:
    """One logical instruction line (also ONBUILD triggers)."""
    parts = text.strip().split(None, 1)
    keyword = parts[0].upper()
    rest = parts[1] if len(parts) > 1 else ""
    if keyword not in INSTRUCTIONS:
        raise BuildError(f"dockerfile parse error on line {line}: unknown instruction: {parts[0]}")
    flags: dict[str, str] = {}
    if keyword in FLAGS:
        flags, rest = _flags(keyword, rest, line)
    exec_form = json_array(rest) if keyword in JSON_FORMS else None
    return Instruction(keyword, rest.strip(), line, text.strip(), flags, exec_form)


def _flags(keyword: str, rest: str, line: int) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = rest.lstrip()
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if word == "--":
            break
        name, sep, value = word[2:].partition("=")
        if keyword == "RUN":
            raise BuildError(
                f"dockerfile parse error on line {line}: RUN --{name} needs BuildKit; "
                "the classic builder does not support it"
            )
        if name not in FLAGS[keyword]:
            raise BuildError(f"dockerfile parse error on line {line}: unknown flag: {name}")
        if name in flags:
            raise BuildError(f"dockerfile parse error on line {line}: duplicate flag: {name}")
        flags[name] = value if sep else "true"
    return flags, rest
