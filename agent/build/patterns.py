"""Path patterns of builds: Go ``filepath.Match`` globs (COPY sources) and ``.dockerignore``.

Globs: ``*`` is any run of characters but ``/``, ``?`` one such character, ``[a-z]`` /
``[^a-z]`` a class, the escape character ``\\`` quotes the next one. ``.dockerignore``
patterns add ``**`` (any number of directories, none included) and ``!`` exceptions; each
pattern is cleaned like a path (``./a//b/`` is ``a/b``), a pattern excludes the paths it
matches and everything under them, and the last pattern that matches a path decides.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

GLOB_CHARS = frozenset("*?[\\")


class PatternError(ValueError):
    pass


def has_glob(text: str) -> bool:
    return any(char in GLOB_CHARS for char in text)


def _class(pattern: str, index: int) -> tuple[str, int]:
    """Translate the ``[...]`` starting at ``pattern[index]``: (regex, index after it)."""
    end = index + 1
    negate = end < len(pattern) and pattern[end] in "^!"
    if negate:
        end += 1
    body: list[str] = []
    first = True
    while end < len(pattern) and (pattern[end] != "]" or first):
        char = pattern[end]
        first = False
        if char == "\\" and end + 1 < len(pattern):
            body.append(re.escape(pattern[end + 1]))
            end += 2
            continue
        body.append(char if char == "-" else re.escape(char))
        end += 1
    if end >= len(pattern) or not body:
        raise PatternError(f"syntax error in pattern {pattern!r}")
    return ("[^/" if negate else "[") + "".join(body) + "]", end + 1


def glob_regex(pattern: str, double_star: bool = False) -> re.Pattern[str]:
    """A compiled regex matching exactly the paths ``pattern`` matches."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            if double_star and pattern.startswith("**", index):
                index += 2
                if pattern.startswith("/", index):
                    out.append("(?:.*/)?")  # "**/" spans zero or more whole directories
                    index += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            regex, index = _class(pattern, index)
            out.append(regex)
            continue
        elif char == "\\" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        else:
            out.append(re.escape(char))
        index += 1
    try:
        return re.compile("".join(out) + r"\Z", re.S)
    except re.error as error:
        raise PatternError(f"syntax error in pattern {pattern!r}: {error}") from None


def glob_match(pattern: str, path: str) -> bool:
    return glob_regex(pattern).match(path) is not None


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    exception: bool
    text: str


def read_dockerignore(text: str) -> list[str]:
    """The patterns of a .dockerignore file: comments and blank lines dropped."""
    patterns = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        stripped = line.strip()
        if stripped:
            patterns.append(stripped)
    return patterns


class IgnoreMatcher:
    """Which context paths (relative, ``/``-separated) a .dockerignore excludes."""

    def __init__(self, patterns: list[str]) -> None:
        self.rules: list[_Rule] = []
        for raw in patterns:
            exception = raw.startswith("!")
            text = raw[1:].strip() if exception else raw
            cleaned = posixpath.normpath(text).lstrip("/") if text else ""
            if cleaned in ("", "."):
                continue
            self.rules.append(_Rule(glob_regex(cleaned, double_star=True), exception, cleaned))

    @property
    def has_exceptions(self) -> bool:
        return any(rule.exception for rule in self.rules)

    def excluded(self, path: str) -> bool:
        """Whether ``path`` is left out: the last rule that matches it or a parent decides."""
        path = posixpath.normpath(path).lstrip("/")
        candidates = [path]
        parent = posixpath.dirname(path)
        while parent:
            candidates.append(parent)
            parent = posixpath.dirname(parent)
        result = False
        for rule in self.rules:
            if any(rule.regex.match(candidate) for candidate in candidates):
                result = not rule.exception
        return result

    def may_include_under(self, directory: str) -> bool:
        """Whether an exception could bring back something under an excluded directory."""
        prefix = posixpath.normpath(directory).lstrip("/") + "/"
        for rule in self.rules:
            if not rule.exception:
                continue
            text = rule.text
            if text.startswith(prefix) or has_glob(text.split("/", 1)[0]):
                return True
            if "**" in text:
                return True
        return False
