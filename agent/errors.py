"""The agent's error types: each carries the HTTP status the Engine API answers with.

Handlers raise these; the HTTP layer turns them into ``{"message": …}`` JSON responses with
the status Docker would use, so clients (the docker CLI keys behaviour off status codes, e.g.
404 on create means "pull first") react the same way they do against dockerd.
"""

from __future__ import annotations


class AgentError(Exception):
    """An error with an HTTP status and a message meant for the API client."""

    status: int = 500

    def __init__(self, status: int | None = None, message: str = "") -> None:
        if status is not None:
            self.status = status
        self.message = message or "internal server error"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class BadRequest(AgentError):
    """400: invalid parameter, malformed body, unsupported API version."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class NotFound(AgentError):
    """404: no such container, image, volume, network, exec instance or route."""

    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class Conflict(AgentError):
    """409: the object is in a state that forbids the operation (name in use, running…)."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class NotImplementedYet(AgentError):
    """501: a known endpoint or option the agent does not implement."""

    def __init__(self, message: str) -> None:
        super().__init__(501, message)
