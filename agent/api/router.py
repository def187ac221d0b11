"""Routing: method + path pattern -> handler, after stripping an optional ``/vX.Y`` prefix.

Patterns use named parameters: ``/containers/{id}/json`` matches one path segment per
parameter; ``/images/{name:.+}/json`` gives a parameter its own regular expression (image
names contain slashes). A handler may be given as ``"package.module:function"``: it is
imported on first use, which keeps the agent's start-up (slow under QEMU tcg) cheap however
many endpoints exist. For the same reason no regular expression is compiled (nor ``re``
imported) before a request needs one: literal patterns are compared as strings.
"""

from __future__ import annotations

from agent import lazy_import
from agent.errors import AgentError, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from collections.abc import Callable

    from agent.api.request import Request
    from agent.api.response import ResponseWriter

    Handler = Callable[[Request, ResponseWriter], None]

_VERSION_CHARS = frozenset("0123456789.")
_PARAM = r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]+))?\}"


class MethodNotAllowed(AgentError):
    """405: the path is known but not with this method; ``allowed`` lists the methods."""

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(405, f"method {method} is not allowed for {path}")
        self.allowed = allowed


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``/containers/{id}/json`` -> a regex with a named group per parameter."""
    import re

    parts: list[str] = []
    position = 0
    for param in re.finditer(_PARAM, pattern):
        parts.append(re.escape(pattern[position : param.start()]))
        parts.append(f"(?P<{param.group(1)}>{param.group(2) or '[^/]+'})")
        position = param.end()
    parts.append(re.escape(pattern[position:]))
    return re.compile("".join(parts))


class Route:
    """One method and path pattern, and the handler that serves it."""

    __slots__ = ("method", "pattern", "_regex", "_handler")

    def __init__(self, method: str, pattern: str, handler: Handler | str) -> None:
        self.method = method
        self.pattern = pattern
        self._regex: re.Pattern[str] | None = None  # compiled on first use
        self._handler = handler

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters if ``path`` matches the whole pattern, else None."""
        if "{" not in self.pattern:
            return {} if path == self.pattern else None
        if self._regex is None:
            self._regex = compile_pattern(self.pattern)
        found = self._regex.fullmatch(path)
        return None if found is None else found.groupdict()

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
    slash = path.find("/", 2)
    version = path[2:slash]
    if not path.startswith("/v") or slash < 0 or not version:
        return None, path
    if not _VERSION_CHARS.issuperset(version):
        return None, path
    return version, path[slash:]


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
            params = route.match(bare_path)
            if params is None:
                continue
            if route.method == method:
                return Match(route, params, version)
            if route.method not in allowed:
                allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(method, bare_path, allowed)
        raise NotFound("page not found")
