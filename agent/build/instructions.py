"""What the metadata instructions mean: argument forms of ENV, LABEL, ARG, EXPOSE, CMD...

Pure functions over the parsed instruction and the variables in scope; the builder
(:mod:`agent.build.builder`) applies them to the image config and makes the images.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from agent.build import variables
from agent.build.errors import BuildError
from agent.build.parser import Instruction

DEFAULT_SHELL = ["/bin/sh", "-c"]
_PORT = re.compile(r"(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?", re.I)


def key_values(
    instruction: Instruction, env: Mapping[str, str], escape: str
) -> list[tuple[str, str]]:
    """ENV / LABEL: ``k=v k2="v 2"``, or the legacy ``k some value`` (one pair)."""
    keyword, text = instruction.keyword, instruction.args
    raw = variables.words(text, {}, escape)  # only to see the form: expansion comes next
    if not raw:
        raise BuildError(f"{keyword} requires at least one argument")
    first = text.split(None, 1)[0]
    if "=" not in first:
        if len(text.split(None, 1)) < 2:
            raise BuildError(f"{keyword} must have two arguments")
        key, rest = text.split(None, 1)
        return [(variables.substitute(key, env, escape), variables.substitute(rest, env, escape))]
    pairs = []
    for word in variables.words(text, env, escape):
        key, sep, value = word.partition("=")
        if not sep:
            raise BuildError(f"{keyword} syntax error: {word!r} is not of the form key=value")
        if not key:
            raise BuildError(f"{keyword} names can not be blank")
        pairs.append((key, value))
    return pairs


def arg_declaration(
    instruction: Instruction, env: Mapping[str, str], escape: str
) -> list[tuple[str, str | None]]:
    """ARG NAME[=default] ...: the names and their defaults (None without one)."""
    declared: list[tuple[str, str | None]] = []
    words = variables.words(instruction.args, env, escape)
    if not words:
        raise BuildError("ARG requires at least one argument")
    for word in words:
        name, sep, value = word.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise BuildError(f"ARG names can not be blank or contain odd characters: {word!r}")
        declared.append((name, value if sep else None))
    return declared


def exposed_ports(words: list[str]) -> list[str]:
    """EXPOSE 80 8000-8001/udp -> ["80/tcp", "8000/udp", "8001/udp"]."""
    if not words:
        raise BuildError("EXPOSE requires at least one argument")
    ports: list[str] = []
    for word in words:
        match = _PORT.fullmatch(word)
        if match is None:
            raise BuildError(f"invalid containerPort: {word}")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 0 < low <= high <= 65535:
            raise BuildError(f"invalid containerPort: {word}")
        protocol = (match.group(3) or "tcp").lower()
        ports.extend(f"{port}/{protocol}" for port in range(low, high + 1))
    return ports


def command(instruction: Instruction, shell: list[str] | None) -> list[str]:
    """RUN / CMD / ENTRYPOINT: the exec form as written, or the shell form through SHELL."""
    if instruction.exec_form is not None:
        return list(instruction.exec_form)
    if not instruction.args:
        raise BuildError(f"{instruction.keyword} requires at least one argument")
    return [*(shell or DEFAULT_SHELL), instruction.args]


def go_list(values: list[str]) -> str:
    """A string list the way Go's %q prints it: ["sh" "-c" "echo hi"] (history comments)."""
    return "[" + " ".join(json.dumps(value, ensure_ascii=False) for value in values) + "]"


def shell_form(instruction: Instruction) -> list[str]:
    if instruction.exec_form is None:
        raise BuildError("SHELL requires the arguments to be in JSON form")
    if not instruction.exec_form:
        raise BuildError("SHELL requires at least one argument")
    return list(instruction.exec_form)


def path_list(instruction: Instruction, env: Mapping[str, str], escape: str) -> list[str]:
    """VOLUME and COPY/ADD arguments: a JSON array (each element expanded) or words."""
    if instruction.exec_form is not None:
        return [variables.substitute(item, env, escape) for item in instruction.exec_form]
    return variables.words(instruction.args, env, escape)
