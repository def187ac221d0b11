"""Variable substitution in Dockerfile arguments, the way the Dockerfile shell lexer does it.

``$name``, ``${name}``, ``${name:-word}`` / ``${name-word}`` (default), ``${name:+word}`` /
``${name+word}`` (alternative) and ``${name:?message}`` / ``${name?message}`` (required).
Single quotes keep everything literal; inside double quotes the escape character escapes
only ``"``, ``$`` and itself; outside quotes it escapes any character. Quotes and escapes
are removed from the result. :func:`words` also splits on unquoted whitespace (an unquoted
expansion splits too), for instructions that take a list (EXPOSE, COPY sources, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from agent.build.errors import BuildError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = " \t\r\n"


class _Scanner:
    def __init__(self, text: str, env: Mapping[str, str], escape: str, split: bool) -> None:
        self.text = text
        self.env = env
        self.escape = escape
        self.split = split
        self.pos = 0
        self.words: list[str] = []
        self.word: list[str] = []
        self.started = False  # the current word exists (even empty: "" is a word)

    def run(self) -> list[str]:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in _SPACE and self.split:
                self._end_word()
                self.pos += 1
            elif char == self.escape:
                self.started = True
                if self.pos + 1 < len(text):
                    self.word.append(text[self.pos + 1])
                self.pos += 2
            elif char == "'":
                self.started = True
                end = text.find("'", self.pos + 1)
                if end < 0:
                    raise BuildError(
                        "unexpected end of statement while looking for matching single-quote "
                        f"in {text!r}"
                    )
                self.word.append(text[self.pos + 1 : end])
                self.pos = end + 1
            elif char == '"':
                self.started = True
                self._double_quoted()
            elif char == "$":
                self.started = True
                self._append_expansion(self._dollar(), quoted=False)
            else:
                self.started = True
                self.word.append(char)
                self.pos += 1
        self._end_word()
        return self.words

    def _end_word(self) -> None:
        if self.started or self.word:
            self.words.append("".join(self.word))
        self.word = []
        self.started = False

    def _append_expansion(self, value: str, quoted: bool) -> None:
        if quoted or not self.split:
            self.word.append(value)
            return
        pieces = re.split(r"[ \t\r\n]+", value)
        for index, piece in enumerate(pieces):
            if index:
                self._end_word()
            if piece:
                self.started = True
                self.word.append(piece)
        if not value:
            self.started = self.started or bool(self.word)

    def _double_quoted(self) -> None:
        text = self.text
        self.pos += 1
        while True:
            if self.pos >= len(text):
                raise BuildError(
                    "unexpected end of statement while looking for matching double-quote "
                    f"in {text!r}"
                )
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                return
            if char == "$":
                self.word.append(self._dollar())
                continue
            if char == self.escape and self.pos + 1 < len(text):
                following = text[self.pos + 1]
                if following in ('"', "$", self.escape):
                    self.word.append(following)
                    self.pos += 2
                    continue
            self.word.append(char)
            self.pos += 1

    def _dollar(self) -> str:
        """Expand the variable at ``text[pos] == "$"`` and move past it."""
        text = self.text
        if text.startswith("${", self.pos):
            return self._braced()
        match = _NAME.match(text, self.pos + 1)
        if match is None:
            self.pos += 1
            return "$"
        self.pos = match.end()
        return self.env.get(match.group(0), "")

    def _braced(self) -> str:
        text = self.text
        start = self.pos + 2
        match = _NAME.match(text, start)
        if match is None:
            raise BuildError(f"bad substitution in {text!r}: a variable name must follow ${{")
        name = match.group(0)
        position = match.end()
        if text.startswith("}", position):
            self.pos = position + 1
            return self.env.get(name, "")
        operator = text[position : position + 2]
        if operator not in (":-", ":+", ":?"):
            operator = text[position : position + 1]
            if operator not in ("-", "+", "?"):
                raise BuildError(
                    f"unsupported modifier ({text[position : position + 1]}) in substitution of "
                    f"{name} in {text!r}"
                )
        word_start = position + len(operator)
        end = _closing_brace(text, word_start, self.escape)
        if end < 0:
            raise BuildError(f"missing '}}' in substitution of {name} in {text!r}")
        word = substitute(text[word_start:end], self.env, self.escape)
        self.pos = end + 1
        value = self.env.get(name)
        colon = operator.startswith(":")
        is_set = value is not None and (not colon or value != "")
        kind = operator[-1]
        if kind == "-":
            return value if is_set and value is not None else word
        if kind == "+":
            return word if is_set else ""
        if not is_set:
            raise BuildError(f"{name}: {word or 'is not allowed to be unset'}")
        return value or ""


def _closing_brace(text: str, position: int, escape: str) -> int:
    depth = 0
    while position < len(text):
        char = text[position]
        if char == escape:
            position += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return position
            depth -= 1
        position += 1
    return -1


def substitute(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """The text with variables expanded and quotes removed, whitespace kept as written."""
    words = _Scanner(text, env, escape, split=False).run()
    return words[0] if words else ""


def words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """The text split into words on unquoted whitespace, each expanded and unquoted."""
    return _Scanner(text, env, escape, split=True).run()
