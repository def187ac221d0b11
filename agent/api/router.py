"""Routing: method + path pattern -> handler, after stripping an optional ``/vX.Y`` prefix.

Patterns use named parameters: ``/containers/{id}/json`` matches one path segment per
parameter; ``/images/{name:.+}/json`` gives a parameter its own regular expression (image
names contain slashes). A handler may be given as ``"package.module:function"``: it is
imported on first use, which keeps the agent's start-up (slow under QEMU tcg) cheap however
many endpoints exist.
"""

from __future__ import annotations

import re

from agent import lazy_import
from agent.errors import AgentError, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.api.request import Request
    from agent.api.response import ResponseWriter

    Handler = Callable[[Request, ResponseWriter], None]

_VERSION_PREFIX = re.compile(r"/v([0-9.]+)(/.*)")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]+))?\}")


class MethodNotAllowed(AgentError):
    """405: the path is known but not with this method; ``allowed`` lists the methods."""

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(405, f"method {method} is not allowed for {path}")
        self.allowed = allowed


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``/containers/{id}/json`` -> a regex with a named group per parameter."""
    parts: list[str] = []
    position = 0
    for param in _PARAM.finditer(pattern):
        parts.append(re.escape(pattern[position : param.start()]))
        parts.append(f"(?P<{param.group(1)}>{param.group(2) or '[^/]+'})")
        position = param.end()
    parts.append(re.escape(pattern[position:]))
    return re.compile("".join(parts))


class Route:
    """One method and path pattern, and the handler that serves it."""

    __slots__ = ("method", "pattern", "regex", "_handler")

    def __init__(self, method: str, pattern: str, handler: Handler | str) -> None:
        self.method = method
        self.pattern = pattern
        self.regex = compile_pattern(pattern)
        self._handler = handler

    @property
    def handler(self) -> Handler:
        """The handler callable, importing it first if it was given by name."""
        handler = self._handler
        if isinstance(handler, str):
            module_name, _, function_name = handler.partition(":")
            handler = self._handler = getattr(lazy_import.import_module(module_name), function_name)
        return handler


class Match:
    """The outcome of routing: the route, its path parameters, and the prefix version."""

    __slots__ = ("route", "params", "version")

    def __init__(self, route: Route, params: dict[str, str], version: str | None) -> None:
        self.route = route
        self.params = params
        self.version = version  # None when the path had no /vX.Y prefix


def split_version(path: str) -> tuple[str | None, str]:
    """``/v1.50/containers/json`` -> ("1.50", "/containers/json"); unversioned -> (None, path)."""
    prefixed = _VERSION_PREFIX.fullmatch(path)
    if prefixed is None:
        return None, path
    return prefixed.group(1), prefixed.group(2)


class Router:
    """An ordered route table; the first route whose pattern matches the whole path wins."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, methods: str | tuple[str, ...], pattern: str, handler: Handler | str) -> None:
        """Register ``handler`` for each method (``"GET"`` or ``("GET", "HEAD")``)."""
        for method in (methods,) if isinstance(methods, str) else methods:
            self.routes.append(Route(method.upper(), pattern, handler))

    def resolve(self, method: str, path: str) -> Match:
        """Find the route for a request; NotFound (404) or MethodNotAllowed (405) otherwise."""
        version, bare_path = split_version(path)
        allowed: list[str] = []
        for route in self.routes:
            found = route.regex.fullmatch(bare_path)
            if found is None:
                continue
            if route.method == method:
                return Match(route, found.groupdict(), version)
            if route.method not in allowed:
                allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(method, bare_path, allowed)
        raise NotFound("page not found")
