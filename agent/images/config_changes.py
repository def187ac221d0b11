"""Dockerfile instructions applied to an image config: `docker import --change` (and commit).

Only the instructions that change the config alone are allowed, as in dockerd: CMD,
ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR.
Words are split and unquoted as the Dockerfile shell lexer does, and ``$VAR`` / ``${VAR}``
(with ``:-`` and ``:+``) expand from the config's environment in ENV, LABEL, EXPOSE, USER,
VOLUME, WORKDIR and STOPSIGNAL, never in the commands.
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import Any

from agent.errors import BadRequest

DEFAULT_SHELL = ["/bin/sh", "-c"]
_SPACE = " \t\r\n"
_NAME_START = re.compile(r"[A-Za-z_]")
_NAME = re.compile(r"[A-Za-z0-9_]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PROTOCOLS = ("tcp", "udp", "sctp")


class ChangeError(BadRequest):
    """A change that is not a Dockerfile instruction the config can take."""


# --- words ---------------------------------------------------------------------------------


def _raw_words(text: str) -> list[str]:
    """Split on unquoted whitespace, keeping quotes and escapes in each word."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            word.append(char)
            if char == "\\" and quote == '"' and i + 1 < len(text):
                word.append(text[i + 1])
                i += 1
            elif char == quote:
                quote = ""
        elif char in _SPACE:
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(char)
            if char in "'\"":
                quote = char
            elif char == "\\" and i + 1 < len(text):
                word.append(text[i + 1])
                i += 1
        i += 1
    if quote:
        kind = "single" if quote == "'" else "double"
        raise ChangeError(f"unexpected end of statement while looking for matching {kind}-quote")
    if word:
        words.append("".join(word))
    return words


def _process(word: str, env: dict[str, str] | None) -> str:
    """Remove quotes and escapes; expand variables (unless ``env`` is None)."""
    out: list[str] = []
    i = 0
    while i < len(word):
        char = word[i]
        if char == "\\" and i + 1 < len(word):
            out.append(word[i + 1])
            i += 2
        elif char == "'":
            end = word.index("'", i + 1)
            out.append(word[i + 1 : end])
            i = end + 1
        elif char == '"':
            i += 1
            while word[i] != '"':
                if word[i] == "\\" and word[i + 1] in '"\\$`':
                    out.append(word[i + 1])
                    i += 2
                elif word[i] == "$" and env is not None:
                    value, i = _dollar(word, i, env)
                    out.append(value)
                else:
                    out.append(word[i])
                    i += 1
            i += 1
        elif char == "$" and env is not None:
            value, i = _dollar(word, i, env)
            out.append(value)
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _dollar(text: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """Expand the variable at ``text[i] == "$"``; (value, index after it)."""
    if text.startswith("${", i):
        end = text.find("}", i + 2)
        if end < 0:
            raise ChangeError(f"missing '}}' in {text!r}")
        body = text[i + 2 : end]
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])(.*))?", body, re.S)
        if match is None:
            raise ChangeError(f"bad substitution: ${{{body}}}")
        name, operator, word = match.groups()
        value = env.get(name)
        if operator in (":-", "-"):
            unset = value is None or (operator == ":-" and value == "")
            value = _process(word, env) if unset else value
        elif operator in (":+", "+"):
            set_ = value is not None and (operator == "+" or value != "")
            value = _process(word, env) if set_ else ""
        return value or "", end + 1
    if i + 1 < len(text) and _NAME_START.match(text[i + 1]):
        match = _NAME.match(text, i + 1)
        assert match is not None
        return env.get(match.group(0), ""), match.end()
    return "$", i + 1


def _words(text: str, env: dict[str, str] | None) -> list[str]:
    return [_process(word, env) for word in _raw_words(text)]


def json_array(text: str) -> list[str] | None:
    """The JSON (exec) form of an argument list, or None for the shell form."""
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _env_map(config: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    return env


# --- instructions ---------------------------------------------------------------------------


class _Applier:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.cmd_set = False

    def command(self, keyword: str, text: str) -> list[str]:
        exec_form = json_array(text)
        if exec_form is not None:
            return exec_form
        if not text.strip():
            raise ChangeError(f"{keyword} requires at least one argument")
        return [*(self.config.get("Shell") or DEFAULT_SHELL), text.strip()]

    def cmd(self, text: str) -> None:
        self.config["Cmd"] = self.command("CMD", text)
        self.cmd_set = True

    def entrypoint(self, text: str) -> None:
        self.config["Entrypoint"] = self.command("ENTRYPOINT", text)
        if not self.cmd_set:
            self.config["Cmd"] = None  # as in a Dockerfile: a new entrypoint drops the old CMD

    def pairs(self, keyword: str, text: str) -> list[tuple[str, str]]:
        """``k=v k2="v 2"``, or the legacy ``k some value``."""
        env = _env_map(self.config)
        raw = _raw_words(text)
        if not raw:
            raise ChangeError(f"{keyword} requires at least one argument")
        if "=" not in _process(raw[0], None):
            if len(raw) < 2:
                raise ChangeError(f"{keyword} must have two arguments")
            rest = text.strip()[len(raw[0]) :].strip()
            return [(_process(raw[0], env), _process(rest, env))]
        result = []
        for word in raw:
            key, sep, value = _process(word, env).partition("=")
            if not sep or not key:
                raise ChangeError(f"{keyword} names can not be blank: {word!r}")
            result.append((key, value))
        return result

    def env(self, text: str) -> None:
        variables = _env_map(self.config)
        for key, value in self.pairs("ENV", text):
            variables[key] = value
        self.config["Env"] = [f"{k}={v}" for k, v in variables.items()]

    def label(self, text: str) -> None:
        labels = dict(self.config.get("Labels") or {})
        labels.update(self.pairs("LABEL", text))
        self.config["Labels"] = labels

    def expose(self, text: str) -> None:
        ports = dict(self.config.get("ExposedPorts") or {})
        words = _words(text, _env_map(self.config))
        if not words:
            raise ChangeError("EXPOSE requires at least one argument")
        for word in words:
            ports.update({port: {} for port in _ports(word)})
        self.config["ExposedPorts"] = ports

    def user(self, text: str) -> None:
        self.config["User"] = self.single("USER", text)

    def single(self, keyword: str, text: str) -> str:
        _raw_words(text)  # refuses unbalanced quotes
        value = _process(text.strip(), _env_map(self.config))
        if not value:
            raise ChangeError(f"{keyword} requires exactly one argument")
        return value

    def workdir(self, text: str) -> None:
        path = self.single("WORKDIR", text)
        if not path.startswith("/"):
            path = posixpath.join(self.config.get("WorkingDir") or "/", path)
        self.config["WorkingDir"] = posixpath.normpath(path)

    def volume(self, text: str) -> None:
        paths = json_array(text)
        if paths is None:
            paths = _words(text, _env_map(self.config))
        if not paths:
            raise ChangeError("VOLUME requires at least one argument")
        volumes = dict(self.config.get("Volumes") or {})
        for path in paths:
            if not path.strip():
                raise ChangeError("VOLUME specified can not be an empty string")
            volumes[path] = {}
        self.config["Volumes"] = volumes

    def stopsignal(self, text: str) -> None:
        signal = self.single("STOPSIGNAL", text)
        if not re.fullmatch(r"(SIG)?[A-Z0-9+-]+|\d+", signal.upper()):
            raise ChangeError(f"invalid signal: {signal}")
        self.config["StopSignal"] = signal

    def onbuild(self, text: str) -> None:
        trigger = text.strip()
        first = trigger.split(None, 1)[0].upper() if trigger else ""
        if not first:
            raise ChangeError("ONBUILD requires at least one argument")
        if first == "ONBUILD":
            raise ChangeError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if first in ("FROM", "MAINTAINER"):
            raise ChangeError(f"{first} isn't allowed as an ONBUILD trigger")
        self.config["OnBuild"] = [*(self.config.get("OnBuild") or []), trigger]

    def healthcheck(self, text: str) -> None:
        rest = text.strip()
        check: dict[str, Any] = {}
        options = {
            "interval": "Interval",
            "timeout": "Timeout",
            "start-period": "StartPeriod",
            "start-interval": "StartInterval",
        }
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            rest = rest.strip()
            name, sep, value = flag[2:].partition("=")
            if not sep:
                raise ChangeError(f"HEALTHCHECK option --{name} needs a value (--{name}=…)")
            if name in options:
                check[options[name]] = parse_duration(value)
            elif name == "retries":
                if not value.isdigit():
                    raise ChangeError(f"HEALTHCHECK --retries must be a number, not {value!r}")
                check["Retries"] = int(value)
            else:
                raise ChangeError(f"unknown flag: --{name}")
        kind, _, args = rest.partition(" ")
        if kind.upper() == "NONE":
            if args.strip() or check:
                raise ChangeError("HEALTHCHECK NONE takes no arguments")
            self.config["Healthcheck"] = {"Test": ["NONE"]}
            return
        if kind.upper() != "CMD":
            raise ChangeError(f"unknown type {kind!r} in HEALTHCHECK (try CMD)")
        exec_form = json_array(args)
        if exec_form is not None:
            test = ["CMD", *exec_form]
        elif args.strip():
            test = ["CMD-SHELL", args.strip()]
        else:
            raise ChangeError("missing command after HEALTHCHECK CMD")
        self.config["Healthcheck"] = {"Test": test, **check}


_HANDLERS: dict[str, Callable[[_Applier, str], None]] = {
    "CMD": _Applier.cmd,
    "ENTRYPOINT": _Applier.entrypoint,
    "ENV": _Applier.env,
    "EXPOSE": _Applier.expose,
    "HEALTHCHECK": _Applier.healthcheck,
    "LABEL": _Applier.label,
    "ONBUILD": _Applier.onbuild,
    "STOPSIGNAL": _Applier.stopsignal,
    "USER": _Applier.user,
    "VOLUME": _Applier.volume,
    "WORKDIR": _Applier.workdir,
}


def _ports(word: str) -> list[str]:
    spec, _, protocol = word.partition("/")
    protocol = (protocol or "tcp").lower()
    low, dash, high = spec.partition("-")
    if protocol not in _PROTOCOLS or not low.isdigit() or (dash and not high.isdigit()):
        raise ChangeError(f"invalid containerPort: {word}")
    first, last = int(low), int(high) if dash else int(low)
    if not 0 < first <= last <= 65535:
        raise ChangeError(f"invalid containerPort: {word}")
    return [f"{port}/{protocol}" for port in range(first, last + 1)]


def parse_duration(text: str) -> int:
    """A Go duration ("30s", "1m30s", "500ms") in nanoseconds."""
    if text == "0":
        return 0
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ChangeError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text:
        raise ChangeError("invalid duration ''")
    return int(total)


def _logical_lines(text: str) -> list[str]:
    """Instruction lines: comments and blank lines dropped, backslash continuations joined."""
    lines: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1]
            continue
        lines.append(current + line)
        current = ""
    if current.strip():
        lines.append(current)
    return lines


def apply_changes(config: dict[str, Any] | None, changes: Iterable[str]) -> dict[str, Any]:
    """A copy of the image's ``config`` section with ``changes`` applied, in order."""
    applier = _Applier(copy.deepcopy(config or {}))
    for line in _logical_lines("\n".join(changes)):
        keyword, *rest = line.strip().split(None, 1)
        handler = _HANDLERS.get(keyword.upper())
        if handler is None:
            raise ChangeError(f"{keyword.upper()} is not a valid change command")
        handler(applier, rest[0] if rest else "")
    return applier.config
