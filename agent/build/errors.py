"""The one error a build reports: its message ends the build's JSON stream."""

from __future__ import annotations

from agent.errors import BadRequest


class BuildError(BadRequest):
    """A Dockerfile, context or step that cannot be built; the message is shown as is."""
